"""The plugin inside a real napari viewer (needs a display: `make test` runs under Xvfb)."""

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path
from npe2 import PluginManifest
from pydicom.data import get_testdata_file

from napari_medit._reader import get_reader
from napari_medit.io import read_image

PLUGIN = "napari-medit"
SAMPLE_T1 = Path(__file__).parents[1] / "napari_medit" / "sample_data" / "brain_t1.nii.gz"


def test_every_manifest_python_name_imports():
    manifest = PluginManifest.from_distribution(PLUGIN)
    assert manifest.contributions.commands
    for command in manifest.contributions.commands:
        module, _, attribute = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), command.python_name


def test_the_manifest_reads_and_writes_what_the_format_table_says():
    """napari.yaml's reader patterns and writers' extensions are napari_medit/io/formats.py's."""
    from napari_medit.io import formats

    contributions = PluginManifest.from_distribution(PLUGIN).contributions
    (reader,) = contributions.readers
    assert reader.filename_patterns == formats.napari_reader_patterns() and reader.accepts_directories
    for writer in contributions.writers:
        assert writer.filename_extensions == formats.napari_writer_extensions(), writer.command


def test_every_format_reads_and_writes_by_its_table_entry(tmp_path):
    """Each writable format round-trips through write_image and read_image by the name alone, and a
    name no entry writes is refused with the endings that are."""
    from napari_medit.io import MedicalImage, formats, write_image

    planar = MedicalImage(np.arange(12, dtype=np.uint8).reshape(3, 4), np.eye(4))
    volume = MedicalImage(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([1.0, 2.0, 3.0, 1.0]))
    for entry in formats.FORMATS:
        assert formats.format_of(tmp_path / f"x{entry.suffixes[-1].upper()}") is entry  # any case
        if entry.write is None:
            continue
        image = planar if entry.holds(2) and not entry.holds(3) else volume
        for suffix in entry.written_suffixes:
            back = read_image(write_image(tmp_path / f"image{suffix}", image))
            np.testing.assert_array_equal(back.array, image.array)
            assert formats.strip_suffix(f"image{suffix}") == "image"
    with pytest.raises(ValueError, match=r"cannot write this file type; use \.nii\.gz .*\.mgz .*\.png"):
        write_image(tmp_path / "x.tif", planar)


def test_import_is_light():
    heavy = "{'torch', 'diffusers', 'monai', 'napari', 'qtpy'}"
    code = f"import sys, napari_medit; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "missing.nii.gz")) is None
    assert get_reader(12) is None
    assert get_reader(str(SAMPLE_T1)) is not None


def test_brain_sample_opens_axial_and_aligned(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "brain")
    by_name = {layer.name: layer for layer in layers}
    assert set(by_name) == {"t1", "brain_mask", "lesion_mask"}
    t1 = by_name["t1"]
    assert type(t1).__name__ == "Image"
    assert type(by_name["lesion_mask"]).__name__ == "Labels"
    source = read_image(SAMPLE_T1)
    assert t1.data.shape == source.array.shape[::-1]  # RAS file shown as (S, P, L): axial slices
    for layer in layers:
        np.testing.assert_array_equal(layer.scale, [1.5, 1.5, 1.5])
        np.testing.assert_array_equal(layer.translate, t1.translate)
    assert np.all(by_name["lesion_mask"].data <= by_name["brain_mask"].data)


def test_cxr_sample_opens_with_masks(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "cxr")
    names = [layer.name for layer in layers]
    assert names == ["cxr", "edit_mask", "keep_mask", "lung_mask"]
    shapes = {layer.data.shape for layer in layers}
    assert shapes == {(512, 512)}
    edit, keep = layers[1].data.astype(bool), layers[2].data.astype(bool)
    assert edit.any() and keep.any() and not (edit & keep).any()


@pytest.mark.parametrize(
    "path, shape",
    [
        (SAMPLE_T1, (126, 155, 131)),
        (get_testdata_file("MR_small.dcm"), (64, 64)),
        (Path(data_path) / "example4d.nii.gz", (2, 24, 96, 128)),
    ],
)
def test_open_files_through_napari(make_napari_viewer, path, shape):
    viewer = make_napari_viewer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # oblique example4d must not trigger napari slicing warnings
        layers = viewer.open(str(path), plugin=PLUGIN)
        viewer.dims.current_step = tuple(s // 2 for s in layers[0].data.shape)
    assert layers[0].data.shape == shape
    assert layers[0].metadata["affine"].shape == (4, 4)


def test_open_dicom_series_folder(make_napari_viewer, oblique_series):
    viewer = make_napari_viewer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (layer,) = viewer.open(str(oblique_series["folder"]), plugin=PLUGIN)
    assert layer.data.ndim == 3
    assert sorted(layer.scale) == pytest.approx(sorted([2.5, 0.9, 0.8]))


def test_open_png(make_napari_viewer, tmp_path):
    from PIL import Image

    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "cxr.png")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "cxr.png"), plugin=PLUGIN)
    np.testing.assert_array_equal(layer.data, np.arange(64).reshape(8, 8))


def test_corrupt_file_reports_and_adds_nothing(make_napari_viewer, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match=r"broken.nii.gz"):
        viewer.open(str(bad), plugin=PLUGIN)
    assert len(viewer.layers) == 0


@pytest.mark.parametrize("name", ["example4d.nii.gz", "anatomical.nii"])
def test_layer_saved_through_writer_reproduces_file(make_napari_viewer, tmp_path, name):
    import napari

    source = Path(data_path) / name
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    assert layer.data.dtype.isnative  # anatomical.nii is big-endian; napari gets native bytes
    (written,) = napari.save_layers(str(tmp_path / "saved.nii.gz"), [layer], plugin=PLUGIN)
    left, right = nib.load(source), nib.load(written)
    np.testing.assert_array_equal(left.affine, right.affine)
    np.testing.assert_array_equal(np.asanyarray(left.dataobj), np.asanyarray(right.dataobj))
    assert int(left.header["qform_code"]) == int(right.header["qform_code"])


def test_painted_mask_saved_in_file_voxel_order(make_napari_viewer, tmp_path):
    """A voxel painted in the display orientation lands on the same world point in the file."""
    import napari

    viewer = make_napari_viewer()
    (image_layer,) = viewer.open(str(SAMPLE_T1), plugin=PLUGIN)
    labels = viewer.add_labels(
        np.zeros(image_layer.data.shape, np.uint8),
        scale=image_layer.scale,
        translate=image_layer.translate,
        metadata=dict(image_layer.metadata),
        name="lesion",
    )
    labels.data[60, 70, 20] = 1  # (slice, row, col) as shown
    (written,) = napari.save_layers(str(tmp_path / "lesion.nii.gz"), [labels], plugin=PLUGIN)
    saved = nib.load(written)
    voxel = np.argwhere(np.asanyarray(saved.dataobj))[0]
    world_saved = saved.affine @ [*voxel, 1]
    world_shown = image_layer.metadata["affine"] @ [60, 70, 20, 1]
    np.testing.assert_allclose(world_saved, world_shown)
    np.testing.assert_array_equal(saved.affine, nib.load(SAMPLE_T1).affine)


def test_image_info_widget_describes_selected_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "brain")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Image info")
    viewer.layers.selection.active = viewer.layers["t1"]
    text = widget.details.toPlainText()
    assert "orientation: SPL" in text and "file_affine:" in text
    assert "spacing: [1.5, 1.5, 1.5]" in text
    assert "t1" in widget.title.text()


def _unusable_geometry(tmp_path):
    import struct

    from test_io_hostile import small_nifti

    path = small_nifti(tmp_path, sform=np.zeros((3, 4)))
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 80, float("nan"))  # pixdim[1]: no sform, qform or voxel size left
    path.write_bytes(bytes(data))
    return path


def _bomb(tmp_path):
    from test_io_hostile import png_declaring

    return png_declaring(tmp_path, 30000, 30000)


def _past_the_memory_limit(tmp_path):
    path = tmp_path / "large.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.int16), np.eye(4)), path)
    return path


@pytest.mark.parametrize(
    "make, fix",
    [
        (_unusable_geometry, "set a valid sform or qform"),
        (_bomb, "re-save it at its real size"),
        (_past_the_memory_limit, "set NAPARI_MEDIT_MAX_IMAGE_BYTES to a larger size"),
    ],
    ids=["singular-affine", "decompression-bomb", "memory-limit"],
)
def test_each_refusal_names_its_fix_and_adds_nothing_to_the_viewer(
    make_napari_viewer, tmp_path, monkeypatch, make, fix
):
    monkeypatch.setenv("NAPARI_MEDIT_MAX_IMAGE_BYTES", "256K")
    path = make(tmp_path)
    before = path.read_bytes()
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match=fix):
        viewer.open(str(path), plugin=PLUGIN)
    assert len(viewer.layers) == 0
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]

"""The Data and Compare dock widgets in a real viewer: opening files, display, comparing and saving edits."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_edit_widget import PLUGIN, open_edit_widget, run_and_wait

from napari_medit.widgets._viewer_parts import grid

SAMPLES = Path(__file__).parents[1] / "napari_medit" / "sample_data"


@pytest.fixture
def data_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Data")
    return viewer, widget


def test_open_a_volume_with_its_geometry_and_presets(data_widget):
    from napari_medit.io.layers import display_range, from_layer

    viewer, widget = data_widget
    layers = widget.open(SAMPLES / "brain_t1.nii.gz")
    assert [layer.name for layer in layers] == ["brain_t1"] and widget.image.value.name == "brain_t1"
    layer = viewer.layers["brain_t1"]
    np.testing.assert_allclose(layer.metadata["_source_affine"], nib.load(SAMPLES / "brain_t1.nii.gz").affine)
    image = from_layer(layer.data, layer.metadata, file_order=False)
    for preset in ("MRI tissue", "full range", "as read"):
        widget.contrast.value = preset
        np.testing.assert_allclose(layer.contrast_limits, display_range(image, preset))
    assert layer.contrast_limits[0] == 0  # a skull-stripped T1 is mostly zero background...
    widget.contrast.value = "MRI tissue"
    assert layer.contrast_limits[0] > 100  # ...which the tissue preset leaves out
    widget.contrast.value = "full range"
    np.testing.assert_allclose(layer.contrast_limits, (image.array.min(), image.array.max()))
    layer.name = "renamed"  # the picker holds the layer: still picked, presets still apply
    widget.reset_choices()
    assert widget.image.value is layer
    widget.contrast.value = "MRI tissue"
    np.testing.assert_allclose(layer.contrast_limits, display_range(image, "MRI tissue"))


def test_mri_tissue_preset_ignores_the_background():
    from napari_medit.io import MedicalImage
    from napari_medit.io.layers import display_range

    volume = np.zeros((10, 10, 10), np.float32)
    volume[2:8, 2:8, 2:8] = np.linspace(100, 200, 216).reshape(6, 6, 6)
    low, high = display_range(MedicalImage(volume, np.eye(4)), "MRI tissue")
    assert 100 <= low < 102 and 198 < high <= 200  # 1-99 % of the tissue only
    assert display_range(MedicalImage(volume, np.eye(4)), "as read")[0] == 0  # most voxels are background
    with pytest.raises(ValueError, match="unknown contrast preset"):
        display_range(MedicalImage(volume, np.eye(4)), "CT lung")


def test_bad_files_notify_and_add_nothing(data_widget, tmp_path, monkeypatch):
    viewer, widget = data_widget
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    corrupt = tmp_path / "scan.nii.gz"
    corrupt.write_bytes(b"not a nifti file")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert widget.open(tmp_path / "missing.nii.gz") == []
    assert widget.open(corrupt) == []
    assert widget.open(text) == []
    assert len(viewer.layers) == 0 and len(shown) == 3
    assert "does not exist" in shown[0]
    assert "scan.nii.gz" in shown[1]
    assert "not an image napari-medit reads" in shown[2]
    assert corrupt.read_bytes() == b"not a nifti file"


def test_radiological_toggle_mirrors_the_view_not_the_data(data_widget):
    viewer, widget = data_widget
    widget.open(SAMPLES / "brain_t1.nii.gz")
    before = viewer.layers["brain_t1"].data.copy()
    assert widget.radiological.value  # napari-medit shows the patient's right on the left
    widget.radiological.value = False
    assert widget.camera.orientation[2] == "left" and "neurological" in widget.text_overlay.text
    widget.radiological.value = True
    assert widget.camera.orientation[2] == "right" and "radiological" in widget.text_overlay.text
    np.testing.assert_array_equal(viewer.layers["brain_t1"].data, before)


@pytest.fixture
def edited_brain(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "brain")
    edit = open_edit_widget(viewer, qtbot)
    _, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare")
    edit.method.value, edit.model.value, edit.image.value = "mededit", "demo-brain", edit.viewer.layers["t1"]
    edit.parameter("steps").value = 3
    run_and_wait(edit, qtbot, "t1 mededit")
    qtbot.waitUntil(lambda: "t1 mededit difference" in viewer.layers, timeout=10_000)
    return viewer, compare


def test_compare_before_after_opacity_difference_side_by_side(edited_brain):
    viewer, compare = edited_brain
    assert compare.result.value.name == "t1 mededit"  # the newest result is picked up
    result, source, difference = (viewer.layers[n] for n in ("t1 mededit", "t1", "t1 mededit difference"))
    compare.toggle_before_after()
    assert not result.visible and source.visible
    compare.toggle_before_after()
    assert result.visible
    compare.opacity.value = 0.4
    assert result.opacity == pytest.approx(0.4)
    compare.difference.value = True
    assert difference.visible
    compare.difference.value = False
    visible_before = {layer.name for layer in viewer.layers if layer.visible}
    compare.side_by_side.value = True
    assert grid(viewer).enabled
    assert {layer.name for layer in viewer.layers if layer.visible} == {"t1", "t1 mededit"}
    compare.side_by_side.value = False
    assert not grid(viewer).enabled
    assert {layer.name for layer in viewer.layers if layer.visible} == visible_before
    # The picker holds the layer: renamed, it stays picked and compared.
    result.name = "my counterfactual"
    compare.reset_choices()
    assert compare.result.value is result
    compare.opacity.value = 0.7
    assert result.opacity == pytest.approx(0.7)


def test_the_view_looks_across_the_edited_slices(edited_brain):
    """After an axial edit, the coronal and sagittal views put the slice axis on the screen (head up,
    radiological left-right kept); only napari's dims and camera change, never the data."""
    viewer, compare = edited_brain
    result = viewer.layers["t1 mededit"]
    before = result.data.copy()
    horizontal = (
        viewer.camera.orientation[2] if not hasattr(viewer, "scene") else viewer.scene.camera.orientation[2]
    )
    compare.view.value = "coronal"
    assert tuple(viewer.dims.order) == (1, 0, 2) and tuple(viewer.dims.displayed) == (0, 2)
    assert "coronal view" in compare.status.value
    view = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    assert tuple(view.orientation[1:]) == ("up", horizontal)  # superior (+axis 0) up
    compare.view.value = "sagittal"
    assert tuple(viewer.dims.displayed) == (0, 1) and tuple(viewer.dims.not_displayed) == (2,)
    compare.view.value = "axial"
    assert tuple(viewer.dims.order) == (0, 1, 2) and tuple(view.orientation[1:]) == ("down", horizontal)
    np.testing.assert_array_equal(result.data, before)


def test_save_writes_the_file_affine_and_provenance(edited_brain, tmp_path):
    from napari_medit.io import read_image

    viewer, compare = edited_brain
    written = compare.save(tmp_path / "counterfactual.nii.gz")
    assert [p.name for p in written] == ["counterfactual.nii.gz", "counterfactual.json"]
    saved = nib.load(written[0])
    np.testing.assert_allclose(saved.affine, nib.load(SAMPLES / "brain_t1.nii.gz").affine)
    layer = viewer.layers["t1 mededit"]
    source = read_image(SAMPLES / "brain_t1.nii.gz")
    reread = read_image(written[0])
    assert reread.array.shape == source.array.shape
    # The saved file, read back, shows exactly the result layer's voxels (display orientation both times).
    from napari_medit.io.layers import to_layer_data

    np.testing.assert_array_equal(to_layer_data(reread, "x")[0], layer.data)
    provenance = json.loads(written[1].read_text())
    assert provenance["method"] == "mededit" and provenance["seed"] == 0


def test_save_failures_notify(edited_brain, tmp_path, monkeypatch):
    _, compare = edited_brain
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    assert compare.save(tmp_path / "volume.png") == []  # a volume cannot be one PNG
    assert shown and "volume.png" in shown[0]
    assert not any(tmp_path.iterdir())


def test_dicom_series_masks_as_seg_and_result_as_dicom_in_the_widgets(data_widget, oblique_series, tmp_path):
    from napari_medit.io import read_image
    from napari_medit.io.dicom_seg import is_seg

    viewer, data = data_widget
    [image] = data.open(oblique_series["folder"])
    _, masks = viewer.window.add_plugin_dock_widget(PLUGIN, "Masks")
    masks.image.value, masks.method.value = image, "radedit"
    masks.create_masks()
    edit_layer, keep_layer = (viewer.layers[f"{image.name} {role}"] for role in ("edit_mask", "keep_mask"))
    edit_layer.data[2:5, 3:8, 2:6] = 1
    keep_layer.data[0] = 1
    seg = masks.save_seg(tmp_path / "masks.dcm")
    assert is_seg(seg)
    painted = {layer.name: layer.data.copy() for layer in (edit_layer, keep_layer)}
    viewer.layers.remove(edit_layer)
    viewer.layers.remove(keep_layer)
    loaded = masks.load_seg(seg)
    assert {layer.name: layer.data.shape for layer in loaded} == {n: d.shape for n, d in painted.items()}
    for layer in loaded:
        np.testing.assert_array_equal(layer.data > 0, painted[layer.name] > 0)
        np.testing.assert_array_equal(layer.scale, image.scale)
    # Dropped on the viewer, the SEG opens as Labels layers on its own geometry, aligned with the image.
    dropped = viewer.open(str(seg), plugin=PLUGIN)
    assert [layer.name for layer in dropped] == ["edit_mask", "keep_mask"]
    np.testing.assert_array_equal(dropped[0].data > 0, painted[f"{image.name} edit_mask"] > 0)
    np.testing.assert_allclose(dropped[0].translate, image.translate, atol=1e-4)

    # An edit result of a DICOM source saves as a derived series, the folder named like the file.
    _, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare")
    edited = image.data + (painted[f"{image.name} edit_mask"] > 0) * 7
    viewer.add_image(
        edited,
        name="cf",
        scale=image.scale,
        translate=image.translate,
        metadata={**image.metadata, "edit": {"method": "radedit", "seed": 0}, "source_layer": image.name},
    )
    compare.result.value = viewer.layers["cf"]
    written = compare.save(tmp_path / "cf.dcm")
    assert written[-1].name == "cf.json" and (tmp_path / "cf").is_dir()
    back = read_image(tmp_path / "cf").reoriented()
    np.testing.assert_array_equal(back.array, edited)
    np.testing.assert_array_equal(back.affine, image.metadata["affine"])

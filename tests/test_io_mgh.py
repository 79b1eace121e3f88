"""FreeSurfer MGH/MGZ volumes: read with their affine, written back with their header."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import rotation

from napari_medit._reader import get_reader, layer_name
from napari_medit._writer import write_image_layer
from napari_medit.io import ImageReadError, MedicalImage, can_read, read_image, write_image
from napari_medit.io.layers import to_layer_data

SHAPE = (20, 22, 24)
# recon-all's conformed orientation, LIA (columns: towards Left, Inferior, Anterior), 1 mm voxels,
# with a scanner centre off the origin; all values exact in float32, as MGH stores them.
CONFORMED = np.array(
    [
        [-1.0, 0.0, 0.0, 12.5],
        [0.0, 0.0, 1.0, -21.25],
        [0.0, -1.0, 0.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def voxels(dtype) -> np.ndarray:
    rng = np.random.default_rng(11)
    if np.dtype(dtype).kind == "f":
        return (rng.normal(60, 25, SHAPE)).astype(dtype)
    return rng.integers(0, 256, SHAPE).astype(dtype)


def freesurfer_volume(path: Path, data: np.ndarray, affine: np.ndarray = CONFORMED) -> Path:
    """An MGZ as recon-all writes one, scan parameters (TR, TE, TI in ms, flip angle in radians) included."""
    image = nib.MGHImage(data, affine)
    for key, value in {"tr": 2300.0, "te": 2.98, "ti": 900.0, "flip_angle": np.deg2rad(9.0)}.items():
        image.header[key] = value
    nib.save(image, path)
    return path


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("name", ["brain.mgz", "T1.mgh"])
def test_reads_array_affine_and_scan_parameters(tmp_path, dtype, name):
    data = voxels(dtype)
    path = freesurfer_volume(tmp_path / name, data)
    image = read_image(path)
    assert image.array.dtype == dtype
    np.testing.assert_array_equal(image.array, data)
    np.testing.assert_array_equal(image.affine, CONFORMED)
    assert image.orientation == "LIA"
    assert image.metadata["format"] == "mgh" and image.metadata["path"] == str(path)
    assert image.metadata["mgh"]["tr"] == 2300.0
    assert image.metadata["mgh"]["compressed"] == name.endswith(".mgz")
    summary = image.summary()  # what `napari-medit info` prints: JSON-friendly, header objects left out
    assert summary["orientation"] == "LIA" and "_mgh_header" not in summary


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_round_trip_to_mgz_keeps_the_header_exactly(tmp_path, dtype):
    source = freesurfer_volume(tmp_path / "brain.mgz", voxels(dtype))
    out = write_image(tmp_path / "out.mgz", read_image(source))
    left, right = nib.load(source), nib.load(out)
    assert left.header.binaryblock == right.header.binaryblock  # geometry, type and scan parameters
    np.testing.assert_array_equal(np.asanyarray(right.dataobj), np.asanyarray(left.dataobj))
    # Through napari's display orientation and back, as a layer does.
    again = write_image(tmp_path / "again.mgh", read_image(source).reoriented())
    assert nib.load(again).header.binaryblock == left.header.binaryblock
    np.testing.assert_array_equal(np.asanyarray(nib.load(again).dataobj), np.asanyarray(left.dataobj))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_mgz_to_nifti_keeps_affine_and_values(tmp_path, dtype):
    data = voxels(dtype)
    source = freesurfer_volume(tmp_path / "T1.mgz", data)
    out = write_image(tmp_path / "T1.nii.gz", read_image(source))
    nifti = nib.load(out)
    assert isinstance(nifti, nib.Nifti1Image)
    np.testing.assert_array_equal(nifti.affine, CONFORMED)
    assert int(nifti.header["sform_code"]) > 0
    np.testing.assert_array_equal(np.asanyarray(nifti.dataobj), data)
    assert nifti.get_data_dtype() == dtype
    back = read_image(out)
    np.testing.assert_array_equal(back.array, data)
    np.testing.assert_array_equal(back.affine, CONFORMED)


def test_edited_result_written_as_mgz(tmp_path):
    """An edit result: the source's geometry with new (float) voxels."""
    source = freesurfer_volume(tmp_path / "brain.mgz", voxels(np.uint8))
    image = read_image(source)
    edited = image.with_array(image.array.astype(np.float32) * 0.5 + 0.25)
    out = write_image(tmp_path / "edited.mgz", edited)
    back = read_image(out)
    assert back.array.dtype == np.float32  # not squeezed back into the source's uint8
    np.testing.assert_array_equal(back.array, edited.array)
    np.testing.assert_array_equal(back.affine, CONFORMED)
    assert back.metadata["mgh"]["tr"] == 2300.0
    # float64 results (MGH has no 64-bit float) and int64 labels from napari are stored losslessly.
    mask = image.with_array((image.array > 128).astype(np.int64))
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "mask.mgz", mask)).array, mask.array)


@pytest.mark.parametrize(
    "values, stored",
    [
        (np.array([0, 1000, 4095], np.uint16), np.int16),  # a 12-bit scanner image
        (np.array([0, 65535], np.uint16), np.int32),
        (np.array([-1.5, 0.25, 3e5]), np.float32),  # MGH has no 64-bit float
        (np.array([True, False]), np.uint8),
        (np.array([0, 7, 2**20], np.int64), np.int32),  # napari Labels
    ],
)
def test_voxel_types_mgh_lacks_are_stored_in_one_it_has(tmp_path, values, stored):
    data = np.resize(values, SHAPE)
    back = read_image(write_image(tmp_path / "out.mgz", MedicalImage(data, CONFORMED)))
    assert back.array.dtype == stored
    np.testing.assert_array_equal(back.array, data.astype(stored))
    np.testing.assert_array_equal(back.array, data)  # and no value changed
    with pytest.raises(ValueError, match=r"do not fit MGH's 32-bit integers.*\.nii\.gz"):
        write_image(tmp_path / "big.mgz", MedicalImage(np.full(SHAPE, 2**40, np.int64), CONFORMED))


def test_oblique_nifti_written_as_mgz(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = rotation(0.3, 0.2, -0.4) @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [-90.3, 12.7, 40.1]
    nib.save(nib.Nifti1Image(voxels(np.int16), affine), tmp_path / "oblique.nii.gz")
    image = read_image(tmp_path / "oblique.nii.gz")
    back = read_image(write_image(tmp_path / "oblique.mgz", image))
    np.testing.assert_array_equal(back.array, image.array)
    # MGH stores voxel size, direction cosines and centre as float32: equal to float32 precision.
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-4)


def test_what_mgh_cannot_hold_is_refused_with_the_fix(tmp_path):
    image = read_image(freesurfer_volume(tmp_path / "brain.mgz", voxels(np.uint8)))
    with pytest.raises(ValueError, match=r"flat\.mgz: MGH/MGZ holds 3D or 4D volumes.*\.nii\.gz"):
        write_image(tmp_path / "flat.mgz", MedicalImage(image.array[:, :, 0], image.affine))
    sheared = image.affine.copy()
    sheared[:3, 1] += 0.3 * sheared[:3, 0]
    with pytest.raises(ValueError, match=r"shear.*\.nii\.gz"):
        write_image(tmp_path / "sheared.mgz", MedicalImage(image.array, sheared))
    assert not (tmp_path / "flat.mgz").exists() and not (tmp_path / "sheared.mgz").exists()


@pytest.mark.parametrize(
    "content", [b"not an mgz file at all" * 20, "truncate"], ids=["garbage", "truncated"]
)
def test_corrupt_mgz_names_the_file(tmp_path, content):
    if content == "truncate":
        content = freesurfer_volume(tmp_path / "good.mgz", voxels(np.float32)).read_bytes()[:3000]
    path = tmp_path / "brain.mgz"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="not a readable FreeSurfer MGH/MGZ file") as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_napari_reader_and_writer(tmp_path):
    path = freesurfer_volume(tmp_path / "brain.mgz", voxels(np.uint8))
    assert can_read(path) and can_read(tmp_path / "brain.mgz")
    reader = get_reader(str(path))
    assert reader is not None
    ((data, kwargs, layer_type),) = reader(str(path))
    assert layer_type == "image" and kwargs["name"] == layer_name(path) == "brain"
    assert kwargs["scale"] == pytest.approx((1.0, 1.0, 1.0))
    # Saving the layer from napari as .mgz gives back the file's voxels, affine and header.
    written = write_image_layer(str(tmp_path / "saved.mgz"), data, kwargs)
    assert nib.load(written[0]).header.binaryblock == nib.load(path).header.binaryblock
    np.testing.assert_array_equal(nib.load(written[0]).get_fdata(), nib.load(path).get_fdata())
    # A layer painted on it (napari Labels: int64) saves as an MGZ mask on the same grid.
    labels = (data > 100).astype(np.int64)
    _, label_kwargs, _ = to_layer_data(read_image(path), "lesion_mask", "labels")
    mask = read_image(write_image_layer(str(tmp_path / "lesion_mask.mgz"), labels, label_kwargs)[0])
    np.testing.assert_array_equal(mask.affine, CONFORMED)
    assert mask.array.sum() == labels.sum()


def test_manifest_declares_mgz():
    import yaml

    manifest = yaml.safe_load((Path(__file__).parents[1] / "napari_medit" / "napari.yaml").read_text())
    contributions = manifest["contributions"]
    patterns = contributions["readers"][0]["filename_patterns"]
    assert "*.mgz" in patterns and "*.mgh" in patterns
    for writer in contributions["writers"]:
        assert {".mgz", ".mgh"} <= set(writer["filename_extensions"])

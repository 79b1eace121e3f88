from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import rotation
from nibabel.testing import data_path

from napari_medit.io import ImageReadError, read_image, write_image

NIBABEL_FILES = [
    "anatomical.nii",
    "example4d.nii.gz",
    "example_nifti2.nii.gz",
    "functional.nii",
    "reoriented_anat_moved.nii",
    "resampled_anat_moved.nii",
    "standard.nii.gz",
]


def assert_same_nifti(a: Path, b: Path):
    left, right = nib.load(a), nib.load(b)
    np.testing.assert_array_equal(left.affine, right.affine)
    for field in ("sform_code", "qform_code"):
        assert int(left.header[field]) == int(right.header[field])
    np.testing.assert_array_equal(left.header.get_sform(), right.header.get_sform())
    np.testing.assert_array_equal(left.header.get_qform(), right.header.get_qform())
    assert left.shape == right.shape
    values_left, values_right = np.asanyarray(left.dataobj), np.asanyarray(right.dataobj)
    assert values_left.dtype == values_right.dtype
    np.testing.assert_array_equal(values_left, values_right)


@pytest.mark.parametrize("name", NIBABEL_FILES)
def test_nibabel_files_round_trip_exactly(name, tmp_path):
    source = Path(data_path) / name
    image = read_image(source)
    assert image.array.shape == nib.load(source).shape
    np.testing.assert_array_equal(image.affine, nib.load(source).affine)
    out = write_image(tmp_path / "out.nii.gz", image)
    assert_same_nifti(source, out)


@pytest.mark.parametrize("name", NIBABEL_FILES)
def test_display_reorientation_is_exactly_reversible(name):
    image = read_image(Path(data_path) / name)
    shown = image.reoriented()
    if image.spatial_ndim == 3:
        assert shown.orientation == "SPL"
        assert sorted(shown.spacing) == pytest.approx(sorted(image.spacing))
    back = shown.in_source_orientation()
    np.testing.assert_array_equal(back.array, image.array)
    np.testing.assert_array_equal(back.affine, image.affine)


def oblique_affine(shear: bool = False) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation(0.3, 0.2, -0.4) @ np.diag([0.9, 1.1, 2.5])
    if shear:
        affine[:3, :3] = affine[:3, :3] @ np.array([[1, 0.1, 0], [0, 1, 0], [0, 0, 1]])
    affine[:3, 3] = [-90.3, 12.7, 40.1]
    return affine


@pytest.mark.parametrize("shear", [False, True])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_oblique_round_trip_keeps_sform_and_qform(tmp_path, shear, dtype):
    rng = np.random.default_rng(0)
    data = (rng.random((9, 8, 7)) * 100).astype(dtype)
    source = nib.Nifti1Image(data, oblique_affine(shear))
    source.set_sform(oblique_affine(shear), code=1)
    source.set_qform(oblique_affine(False), code=2)  # qform cannot hold shear: a different matrix
    nib.save(source, tmp_path / "in.nii.gz")
    image = read_image(tmp_path / "in.nii.gz")
    assert image.is_oblique
    np.testing.assert_array_equal(image.affine, nib.load(tmp_path / "in.nii.gz").affine)
    assert_same_nifti(tmp_path / "in.nii.gz", write_image(tmp_path / "out.nii", image))
    # Through display orientation and back, as napari layers do.
    assert_same_nifti(tmp_path / "in.nii.gz", write_image(tmp_path / "out2.nii.gz", image.reoriented()))


def test_scaled_integers_read_scaled_and_write_back_the_same_values(tmp_path):
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    source = nib.Nifti1Image(raw, np.eye(4))
    source.header.set_slope_inter(0.5, -3.0)
    nib.save(source, tmp_path / "scaled.nii")
    image = read_image(tmp_path / "scaled.nii")
    np.testing.assert_allclose(image.array, raw * 0.5 - 3.0)
    again = read_image(write_image(tmp_path / "again.nii.gz", image))
    np.testing.assert_array_equal(again.array, image.array)
    assert again.array.dtype == image.array.dtype


def test_edited_values_keep_the_source_geometry(tmp_path):
    source = Path(data_path) / "example4d.nii.gz"
    image = read_image(source)
    edited = image.with_array(image.array.astype(np.float32) * 2)
    out = nib.load(write_image(tmp_path / "edited.nii.gz", edited))
    np.testing.assert_array_equal(out.affine, nib.load(source).affine)
    assert out.get_data_dtype() == np.float32


def test_2d_nifti(tmp_path):
    affine = np.diag([0.5, 0.7, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.arange(12, dtype=np.float32).reshape(3, 4), affine), tmp_path / "flat.nii")
    image = read_image(tmp_path / "flat.nii")
    assert image.array.shape == (3, 4) and image.spacing == pytest.approx((0.5, 0.7))
    assert_same_nifti(tmp_path / "flat.nii", write_image(tmp_path / "flat_out.nii", image))


def test_labels_from_napari_are_written_as_int32(tmp_path):
    image = read_image(Path(data_path) / "anatomical.nii")
    mask = image.with_array(np.ones(image.array.shape, dtype=np.int64))
    out = nib.load(write_image(tmp_path / "mask.nii.gz", mask))
    assert (out.get_data_dtype().kind, out.get_data_dtype().itemsize) == ("i", 4)  # source is big-endian
    np.testing.assert_array_equal(out.affine, image.affine)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "empty"),
        (b"not a nifti file at all" * 20, "not a readable NIfTI"),
        ("truncate", "not a readable NIfTI"),
    ],
)
def test_corrupt_files(tmp_path, content, problem):
    path = tmp_path / "bad.nii.gz"
    if content == "truncate":
        content = (Path(data_path) / "example4d.nii.gz").read_bytes()[:5000]
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=problem) as info:
        read_image(path)
    assert "bad.nii.gz" in str(info.value)


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nothing.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")


def test_write_refuses_unknown_suffix(tmp_path):
    image = read_image(Path(data_path) / "anatomical.nii")
    with pytest.raises(ValueError, match=r"\.nii\.gz"):
        write_image(tmp_path / "out.tiff", image)
    assert not (tmp_path / "out.tiff").exists()

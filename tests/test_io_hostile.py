"""Refusals the fuzz test found or the hardening issue names: each names the file, the problem and the fix."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from napari_medit.io import ImageReadError, read_image
from napari_medit.io.limits import affine_problem

SAMPLES = Path(__file__).parents[1] / "napari_medit" / "sample_data"


def small_nifti(tmp_path: Path, sform=None, qform=None, pixdim=(1.5, 1.5, 2.0)) -> Path:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = nib.Nifti1Image(data, None)
    header = image.header
    header["pixdim"][1:4] = pixdim
    if qform is not None:
        header.set_qform(qform, code=1)
    if sform is not None:
        header.set_sform(np.eye(4), code=1)
        header["srow_x"], header["srow_y"], header["srow_z"] = sform[0], sform[1], sform[2]
    path = tmp_path / "small.nii"
    nib.save(image, path)
    return path


QFORM = np.array([[0, 0, 2.0, -10], [-1.5, 0, 0, 20], [0, -1.5, 0, 5], [0, 0, 0, 1]])


@pytest.mark.parametrize("sform", [np.full((3, 4), np.nan), np.zeros((3, 4))], ids=["nan", "zeros"])
def test_an_unusable_sform_falls_back_to_the_qform_and_says_so(tmp_path, sform):
    path = small_nifti(tmp_path, sform=sform, qform=QFORM)
    with pytest.warns(UserWarning, match="the sform is unusable"):
        image = read_image(path)
    np.testing.assert_allclose(image.affine, QFORM, atol=1e-5)
    assert image.metadata["nifti"]["affine_from"] == "qform"
    assert "qform is used" in image.metadata["warning"]


def test_without_a_qform_the_voxel_sizes_are_used(tmp_path):
    with pytest.warns(UserWarning, match="the pixdim is used"):
        image = read_image(small_nifti(tmp_path, sform=np.full((3, 4), np.nan)))
    assert image.spacing == (1.5, 1.5, 2.0) and affine_problem(image.affine) is None


def test_nothing_usable_left_is_refused(tmp_path):
    path = small_nifti(tmp_path, sform=np.zeros((3, 4)))
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 80, float("nan"))  # pixdim[1], which nibabel would not save as NaN
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"small.nii: no usable geometry.*pixdim \[nan, 1.5, 2.0\]"):
        read_image(path)


def test_memory_past_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    from napari_medit import MedicalImage, write_image

    monkeypatch.setenv("NAPARI_MEDIT_MAX_IMAGE_BYTES", "1K")
    assert read_image(small_nifti(tmp_path)).array.size == 120  # 240 bytes stored: under the limit
    write_image(tmp_path / "big.nii.gz", MedicalImage(np.zeros((20, 20, 20), np.int16), np.eye(4)))
    write_image(tmp_path / "big.mgz", MedicalImage(np.zeros((20, 20, 20), np.float32), np.eye(4)))
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "big.png")
    for name in ("big.nii.gz", "big.mgz", "big.png"):
        with pytest.raises(
            ImageReadError,
            match=rf"{name}: its pixel data .* would take .* more than the limit "
            r"NAPARI_MEDIT_MAX_IMAGE_BYTES sets \(1.0 KiB\).*set "
            "NAPARI_MEDIT_MAX_IMAGE_BYTES to a larger size",
        ):
            read_image(tmp_path / name)
    with pytest.raises(ImageReadError, match=r"MR_small.dcm: its pixel data .* more than the limit"):
        read_image(get_testdata_file("MR_small.dcm"))
    monkeypatch.setenv("NAPARI_MEDIT_MAX_IMAGE_BYTES", "1G")
    assert read_image(tmp_path / "big.png").array.shape == (40, 40)


def test_the_limit_itself_must_be_a_size(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDIT_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(ImageReadError, match="NAPARI_MEDIT_MAX_IMAGE_BYTES='lots' is not a size"):
        read_image(small_nifti(tmp_path))


def png_declaring(tmp_path: Path, width: int, height: int) -> Path:
    """A real PNG whose IHDR claims another size (its CRC made right, so Pillow believes it)."""
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_a_decompression_bomb_is_refused_with_one_message(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDIT_MAX_IMAGE_BYTES", "512M")
    with pytest.raises(ImageReadError, match=r"bomb.png: declares more pixels than Pillow will decode"):
        read_image(png_declaring(tmp_path, 30000, 30000))
    with pytest.raises(ImageReadError, match=r"bomb.png: its pixel data \(12000 x 12000\) would take"):
        read_image(png_declaring(tmp_path, 12000, 12000))  # under Pillow's bound, over the memory it needs


def test_a_corrupted_value_representation_is_an_image_read_error(tmp_path):
    data = bytearray(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    at = data.find(b"\x28\x00\x10\x00")  # (0028,0010) Rows: its VR 'US' becomes 'UN'-like garbage
    data[at + 4 : at + 6] = b"ZZ"
    path = tmp_path / "vr.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"vr.dcm"):
        read_image(path)


def test_the_napari_reader_hook_refuses_with_the_same_message(tmp_path, monkeypatch):
    from napari_medit._reader import get_reader

    monkeypatch.setenv("NAPARI_MEDIT_MAX_IMAGE_BYTES", "1K")
    path = png_declaring(tmp_path, 2000, 2000)
    reader = get_reader(str(path))
    with pytest.raises(ImageReadError, match="NAPARI_MEDIT_MAX_IMAGE_BYTES"):
        reader(str(path))


def test_a_write_that_fails_halfway_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    from napari_medit import MedicalImage, write_image
    from napari_medit.io import formats

    target = write_image(tmp_path / "result.nii.gz", MedicalImage(np.ones((4, 5, 6), np.int16), np.eye(4)))
    before = target.read_bytes()

    def disk_full(path, image):  # half a file, then the disk is full
        Path(path).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    # the writer write_image reaches through the format table (napari_medit.io.formats)
    nifti = dataclasses.replace(formats.NIFTI, write=disk_full)
    monkeypatch.setattr(
        formats, "FORMATS", tuple(nifti if f is formats.NIFTI else f for f in formats.FORMATS)
    )
    with pytest.raises(OSError, match="No space left"):
        write_image(target, MedicalImage(np.zeros((4, 5, 6), np.int16), np.eye(4)))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.nii.gz"]  # no partial file left


def test_a_folder_that_cannot_be_written_leaves_nothing(tmp_path):
    from napari_medit import MedicalImage, write_image

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(OSError):
        write_image(blocker / "result.png", MedicalImage(np.zeros((4, 5), np.uint8), np.eye(4)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]

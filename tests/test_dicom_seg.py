"""Masks as DICOM SEG: written from painted layers, read back onto the image through its references."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tiny_models
from conftest import dicom_slice, save

from napari_medit.catalogue import MASK_ROLES
from napari_medit.cli import main
from napari_medit.io import ImageReadError, MedicalImage, read_image, write_image
from napari_medit.io.dicom_derived import DicomOutputError, write_dicom
from napari_medit.io.dicom_seg import SEGMENT_MEANINGS, read_seg, write_seg


def painted(shape, seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[tuple(slice(int(rng.integers(0, n // 2)), int(rng.integers(n // 2 + 1, n + 1))) for n in shape)] = (
        True
    )
    return mask


def test_every_mask_role_has_a_segment_meaning():
    assert set(SEGMENT_MEANINGS) == set(MASK_ROLES)


def test_seg_of_painted_masks_reads_back_to_the_same_voxels(oblique_series, tmp_path):
    shown = read_image(oblique_series["folder"]).reoriented()  # as napari shows it: axial, radiological
    masks = {"edit_mask": painted(shown.array.shape, 1), "keep_mask": painted(shown.array.shape, 2)}
    path = write_seg(tmp_path / "masks.dcm", masks, shown)

    on_image = read_seg(path, shown)
    assert set(on_image) == set(masks)
    for role, mask in masks.items():
        np.testing.assert_array_equal(on_image[role].array > 0, mask)
        np.testing.assert_array_equal(on_image[role].affine, shown.affine)
    # Alone, the SEG's own geometry is the series' grid (file order).
    alone = read_seg(path)
    source = shown.in_source_orientation()
    for role, mask in masks.items():
        np.testing.assert_allclose(alone[role].affine, source.affine, atol=1e-4)
        in_file_order = MedicalImage(mask, shown.affine, shown.metadata).in_source_orientation().array
        np.testing.assert_array_equal(alone[role].array > 0, in_file_order)
    seg = pydicom.dcmread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["edit", "keep"]
    assert (
        seg.StudyInstanceUID == "1.2.3" and seg.PatientID == "P0042" and seg.FrameOfReferenceUID == "1.2.3.9"
    )


def test_frames_are_placed_by_reference_not_frame_order(oblique_series, tmp_path):
    image = read_image(oblique_series["folder"])
    mask = np.zeros(image.array.shape, bool)
    mask[1, 2:4, 2:5] = True
    mask[5, 6:9, 1:3] = True
    path = write_seg(tmp_path / "masks.dcm", {"pathology_mask": mask}, image)
    seg = pydicom.dcmread(path)
    seg.PerFrameFunctionalGroupsSequence = list(reversed(seg.PerFrameFunctionalGroupsSequence))
    frames = seg.pixel_array[::-1]  # reverse the frames and their references together
    seg.PixelData = pydicom.pixels.pack_bits(frames)
    seg.save_as(tmp_path / "reversed.dcm")
    np.testing.assert_array_equal(
        read_seg(tmp_path / "reversed.dcm", image)["pathology_mask"].array > 0, mask
    )


def test_radiograph_seg_round_trip(tmp_path):
    path = save(
        dicom_slice(
            np.zeros((20, 16), np.uint16),
            modality="CR",
            photometric="MONOCHROME1",
            extra={"PatientOrientation": ["L", "F"]},
        ),
        tmp_path / "cr.dcm",
    )
    image = read_image(path)
    roi = painted((20, 16), 3)
    seg = write_seg(tmp_path / "roi.dcm", {"roi_mask": roi}, image)
    np.testing.assert_array_equal(read_seg(seg, image)["roi_mask"].array > 0, roi)
    np.testing.assert_array_equal(read_seg(seg)["roi_mask"].array > 0, roi)


def test_seg_of_the_source_opens_on_its_derived_series_and_not_on_another(oblique_series, tmp_path):
    image = read_image(oblique_series["folder"])
    mask = painted(image.array.shape, 4)
    path = write_seg(tmp_path / "masks.dcm", {"edit_mask": mask}, image)
    write_dicom(tmp_path / "derived", image)
    derived = read_image(tmp_path / "derived")
    np.testing.assert_array_equal(read_seg(path, derived)["edit_mask"].array > 0, mask)

    other = tmp_path / "other"
    for k in range(3):
        save(
            dicom_slice(
                np.zeros((12, 10), np.int16),
                position=(0, 0, 3.0 * k),
                orientation=(1, 0, 0, 0, 1, 0),
                series_uid="9.8.7",
            ),
            other / f"{k}.dcm",
        )
    with pytest.raises(ImageReadError, match=r"segments other images .* open it on the series it references"):
        read_seg(path, read_image(other))


def test_bad_seg_requests_are_refused_in_one_line(oblique_series, tmp_path):
    image = read_image(oblique_series["folder"])
    with pytest.raises(ValueError, match="edit_mask is empty"):
        write_seg(tmp_path / "x.dcm", {"edit_mask": np.zeros(image.array.shape, bool)}, image)
    with pytest.raises(ValueError, match="shape"):
        write_seg(tmp_path / "x.dcm", {"edit_mask": np.ones((3, 3), bool)}, image)
    nifti = read_image(
        write_image(tmp_path / "v.nii.gz", MedicalImage(np.zeros((3, 4, 5), np.uint8), np.eye(4)))
    )
    with pytest.raises(DicomOutputError, match="no patient or study context"):
        write_seg(tmp_path / "x.dcm", {"edit_mask": np.ones((3, 4, 5), bool)}, nifti)
    assert not (tmp_path / "x.dcm").exists()
    seg = write_seg(tmp_path / "m.dcm", {"edit_mask": np.ones(image.array.shape, bool)}, image)
    with pytest.raises(ImageReadError, match="holds masks, not an image"):
        read_image(seg)
    with pytest.raises(ImageReadError, match="not a readable DICOM SEG"):
        read_seg(oblique_series["folder"] / next(p.name for p in oblique_series["folder"].iterdir()))


def test_cli_takes_masks_from_a_seg_by_label(oblique_series, tmp_path):
    from napari_medit.backends import save_model

    model = save_model(tmp_path / "model", tiny_models.pixel_unet(), {"name": "tiny", "value_range": [-1, 1]})
    image = read_image(oblique_series["folder"])
    lesion = np.zeros(image.array.shape, bool)
    lesion[2:5, 3:9, 2:7] = True
    seg = write_seg(
        tmp_path / "masks.dcm", {"pathology_mask": lesion, "brain_mask": np.ones_like(lesion)}, image
    )
    nifti = write_image(tmp_path / "lesion_mask.nii.gz", image.with_array(lesion.astype(np.uint8)))
    common = [
        "edit",
        "repaint",
        "--image",
        str(oblique_series["folder"]),
        "--model",
        str(model),
        "--steps",
        "3",
        "--axis",
        "0",
        "--seed",
        "9",
    ]
    assert main([*common, "--pathology-mask", str(seg), "--out", str(tmp_path / "a.nii.gz")]) == 0
    assert main([*common, "--pathology-mask", str(nifti), "--out", str(tmp_path / "b.nii.gz")]) == 0
    np.testing.assert_array_equal(
        read_image(tmp_path / "a.nii.gz").array, read_image(tmp_path / "b.nii.gz").array
    )


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed (make test installs it)"
)
def test_dciodvfy_accepts_the_seg(oblique_series, tmp_path):
    image = read_image(oblique_series["folder"])
    path = write_seg(tmp_path / "masks.dcm", {"brain_mask": painted(image.array.shape, 5)}, image)
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    assert [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")] == []


def test_a_seg_write_that_fails_halfway_leaves_the_previous_seg_whole(tmp_path, monkeypatch):
    path = save(
        dicom_slice(
            np.zeros((20, 16), np.uint16),
            modality="CR",
            photometric="MONOCHROME1",
            extra={"PatientOrientation": ["L", "F"]},
        ),
        tmp_path / "cr.dcm",
    )
    image = read_image(path)
    first = write_seg(tmp_path / "masks" / "roi.dcm", {"roi_mask": painted((20, 16), 3)}, image)
    before = first.read_bytes()

    def killed(self, filename, *args, **kwargs):  # half a file written, then the process dies
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pydicom.Dataset, "save_as", killed)
    with pytest.raises(OSError, match="No space left"):
        write_seg(first, {"roi_mask": painted((20, 16), 4)}, image)
    assert first.read_bytes() == before
    assert [p.name for p in first.parent.iterdir()] == ["roi.dcm"]

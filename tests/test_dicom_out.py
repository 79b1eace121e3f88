"""Edits of DICOM sources written back as derived DICOM: geometry, context, UIDs and stored values."""

import json
import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest
import tiny_models
from conftest import dicom_slice, save
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from napari_medit.cli import main
from napari_medit.editing import edit
from napari_medit.io import read_image, write_image
from napari_medit.io.dicom_derived import DicomOutputError, StoredRangeWarning, write_dicom

GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness")
CONTEXT = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "FrameOfReferenceUID",
    "Modality",
    "SOPClassUID",
)
STORED = (
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
)


def by_source(folder):
    """{source SOPInstanceUID: derived dataset} for every file of a derived series."""
    derived = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    return {ds.SourceImageSequence[0].ReferencedSOPInstanceUID: ds for ds in derived}


def series_lesion(shape, slices=(2, 3, 4)):
    mask = np.zeros(shape, bool)
    for k in slices:
        mask[k, 3:9, 2:7] = True
    return mask


def test_series_round_trip_keeps_geometry_context_and_untouched_voxels(oblique_series, tmp_path):
    source = read_image(oblique_series["folder"])
    lesion = series_lesion(source.array.shape)
    result = edit(
        "repaint", source, model=tiny_models.pixel_unet(), pathology_mask=lesion, axis=0, steps=4, seed=1
    )
    assert result.edited_slices == [2, 3, 4]
    written = write_dicom(tmp_path / "derived", result.image)
    assert len(written) == oblique_series["count"]  # untouched slices are part of the new series too

    back = read_image(tmp_path / "derived")
    np.testing.assert_array_equal(back.affine, source.affine)
    np.testing.assert_array_equal(back.array, result.image.array)
    np.testing.assert_array_equal(back.array[~lesion], source.array[~lesion])
    assert not np.array_equal(back.array[lesion], source.array[lesion])

    sources = {
        ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in oblique_series["folder"].iterdir())
    }
    derived = by_source(tmp_path / "derived")
    assert set(derived) == set(sources)
    slice_order = [
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source.metadata["_dicom_files"]
    ]
    series_uids = {ds.SeriesInstanceUID for ds in derived.values()}
    sop_uids = [ds.SOPInstanceUID for ds in derived.values()]
    assert len(series_uids) == 1 and series_uids.isdisjoint({ds.SeriesInstanceUID for ds in sources.values()})
    assert len(set(sop_uids)) == len(sop_uids) and set(sop_uids).isdisjoint(sources)
    for uid, ds in derived.items():
        original = sources[uid]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        for keyword in GEOMETRY + CONTEXT + STORED:
            assert ds.get(keyword) == original.get(keyword), keyword
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.SyntheticData == "YES"
        assert (
            ds.SeriesNumber == original.SeriesNumber + 1000
            and "napari-medit counterfactual" in ds.SeriesDescription
        )
        assert "repaint" in ds.DerivationDescription and "seed 1" in ds.DerivationDescription
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        if not lesion[slice_order.index(uid)].any():
            assert ds.PixelData == original.PixelData  # untouched slices: the stored bytes themselves


def test_monochrome1_radiograph_keep_mask_stored_values_bit_identical(tmp_path):
    rng = np.random.default_rng(3)
    stored = rng.integers(200, 3900, (40, 36)).astype(np.uint16)
    path = save(
        dicom_slice(
            stored,
            photometric="MONOCHROME1",
            modality="CR",
            slope=1.5,
            intercept=-100,
            extra={"WindowCenter": "2000", "WindowWidth": "4000"},
        ),
        tmp_path / "cr.dcm",
    )
    image = read_image(path)
    keep = np.zeros(stored.shape, bool)
    keep[:, :14] = True
    edit_mask = np.zeros(stored.shape, bool)
    edit_mask[8:30, 16:32] = True
    result = edit(
        "radedit",
        image,
        model=tiny_models.text_unet(),
        prompt="effusion",
        steps=6,
        skip=1,
        edit_mask=edit_mask,
        keep_mask=keep,
        seed=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoredRangeWarning)
        [out] = write_dicom(tmp_path / "cf.dcm", result.image)
    ds, original = pydicom.dcmread(out), pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.SOPClassUID == original.SOPClassUID
    np.testing.assert_array_equal(ds.pixel_array[keep], original.pixel_array[keep])
    assert not np.array_equal(ds.pixel_array[edit_mask], original.pixel_array[edit_mask])
    # What napari-medit reads back is the edit, value for value (the display inversion undone and redone).
    np.testing.assert_allclose(read_image(out).array, result.image.array, atol=0.75)  # half a slope step


def test_compressed_source_is_written_uncompressed_with_the_same_stored_values(tmp_path):
    stored = (np.arange(48 * 40).reshape(48, 40) % 3000).astype(np.uint16)
    ds = dicom_slice(stored, position=(0, 0, 0), orientation=(1, 0, 0, 0, 1, 0))
    ds.compress(RLELossless)
    path = save(ds, tmp_path / "rle.dcm")
    image = read_image(path)
    [out] = write_dicom(tmp_path / "same.dcm", image.with_array(image.array.copy()))
    derived = pydicom.dcmread(out)
    assert derived.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(derived.pixel_array, stored)


def test_values_beyond_the_stored_range_are_clipped_with_a_warning(tmp_path):
    stored = np.full((6, 5), 100, np.uint16)
    path = save(dicom_slice(stored, modality="CR"), tmp_path / "cr.dcm")
    image = read_image(path)
    values = image.array.astype(np.float32)
    values[0, 0], values[0, 1], values[0, 2] = -20, 5000, 123.4
    with pytest.warns(StoredRangeWarning, match="2 edited pixel value"):
        [out] = write_dicom(tmp_path / "out.dcm", image.with_array(values))
    assert list(pydicom.dcmread(out).pixel_array[0, :4]) == [0, 4095, 123, 100]


@pytest.mark.parametrize("name, shape", [("v.nii.gz", (4, 5, 6)), ("x.png", (5, 6))])
def test_dicom_output_from_nifti_or_png_is_refused_in_one_line(tmp_path, name, shape):
    from napari_medit.io import MedicalImage

    path = write_image(tmp_path / name, MedicalImage(np.zeros(shape, np.uint8), np.eye(4), {}))
    with pytest.raises(DicomOutputError, match="no patient or study context") as raised:
        write_dicom(tmp_path / "out", read_image(path))
    assert "\n" not in str(raised.value) and not (tmp_path / "out").exists()


def test_a_failed_write_leaves_nothing_and_a_full_folder_needs_overwrite(
    oblique_series, tmp_path, monkeypatch
):
    source = read_image(oblique_series["folder"])
    out = tmp_path / "derived"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_dicom(out, source)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    calls = []
    original = pydicom.Dataset.save_as

    def fail_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", fail_third)
    with pytest.raises(OSError, match="disk full"):
        write_dicom(out, source, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # the old folder is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["derived", "series"]  # no staging folder is left
    monkeypatch.setattr(pydicom.Dataset, "save_as", original)
    write_dicom(out, source, overwrite=True)
    assert len(list(out.iterdir())) == oblique_series["count"]


def test_cli_edit_writes_a_series_and_refuses_what_it_cannot(oblique_series, tmp_path):
    from napari_medit.backends import save_model

    model = save_model(tmp_path / "model", tiny_models.pixel_unet(), {"name": "tiny", "value_range": [-1, 1]})
    source = read_image(oblique_series["folder"])
    mask = write_image(
        tmp_path / "lesion_mask.nii.gz", source.with_array(series_lesion(source.array.shape).astype(np.uint8))
    )
    out = tmp_path / "cf"
    args = [
        "edit",
        "repaint",
        "--image",
        str(oblique_series["folder"]),
        "--pathology-mask",
        str(mask),
        "--model",
        str(model),
        "--steps",
        "3",
        "--axis",
        "0",
        "--seed",
        "5",
        "--out",
        str(out),
        "--format",
        "dicom",
    ]
    assert main(args) == 0
    provenance = json.loads((tmp_path / "cf.json").read_text())
    assert len(provenance["outputs"]) == oblique_series["count"] and provenance["slices"] == [2, 3, 4]
    np.testing.assert_array_equal(read_image(out).affine, source.affine)
    before = sorted(p.stat().st_mtime_ns for p in out.iterdir())
    assert main(args) == 2  # the folder holds files now
    assert sorted(p.stat().st_mtime_ns for p in out.iterdir()) == before
    assert main([*args, "--overwrite"]) == 0
    # A NIfTI source has no DICOM context: refused before any edit runs.
    assert (
        main(
            [*args[:2], "--image", str(mask), *args[4:-4], "--out", str(tmp_path / "n"), "--format", "dicom"]
        )
        == 2
    )
    assert not (tmp_path / "n").exists()
    assert main([*args[:-4], "--out", str(tmp_path / "one.dcm")]) == 2  # a series is not one file


def test_batch_writes_dicom_items(oblique_series, tmp_path):
    from napari_medit.backends import save_model
    from napari_medit.batch import run_batch
    from napari_medit.jobs import OutputFormat

    model = save_model(tmp_path / "model", tiny_models.pixel_unet(), {"name": "tiny", "value_range": [-1, 1]})
    source = read_image(oblique_series["folder"])
    mask = write_image(
        tmp_path / "lesion_mask.nii.gz", source.with_array(series_lesion(source.array.shape).astype(np.uint8))
    )
    (tmp_path / "m.csv").write_text(
        f"id,image,method,pathology_mask,steps,axis\ns1,{oblique_series['folder']},repaint,{mask},2,0\n"
    )
    summary = run_batch(
        tmp_path / "m.csv",
        tmp_path / "out",
        model=str(model),
        workers=0,
        show_progress=False,
        output_format=OutputFormat.dicom,
    )
    assert summary.count("done") == 1, summary.failed
    assert len(list((tmp_path / "out" / "s1").iterdir())) == oblique_series["count"]
    again = run_batch(
        tmp_path / "m.csv",
        tmp_path / "out",
        model=str(model),
        workers=0,
        show_progress=False,
        output_format=OutputFormat.dicom,
    )
    assert again.count("skipped") == 1


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed (make test installs it)"
)
def test_dciodvfy_finds_no_error_the_source_did_not_have(oblique_series, tmp_path):
    source = read_image(oblique_series["folder"])
    [first, *_] = write_dicom(tmp_path / "derived", source)
    origin = pydicom.dcmread(first).SourceImageSequence[0].ReferencedSOPInstanceUID
    original = next(
        p
        for p in oblique_series["folder"].iterdir()
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == origin
    )

    def errors(path):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        return {line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")}

    new = errors(first) - errors(original)
    # dicom3tools 2022 predates Synthetic Data (0008,001C), which the standard added later that year.
    assert {line for line in new if "0x0008,0x001c" not in line} == set()


def test_pydicom_and_highdicom_read_the_output_strictly(oblique_series, tmp_path):
    import highdicom as hd

    source = read_image(oblique_series["folder"])
    [first, *_] = write_dicom(tmp_path / "derived", source)
    with pydicom.config.strict_reading():
        ds = pydicom.dcmread(first)
    assert ds.pixel_array.shape == (12, 10)
    image = hd.imread(first)
    assert image.SOPInstanceUID == ds.SOPInstanceUID

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dicom_slice, save
from pydicom.data import get_testdata_file

from napari_medit.io import ImageReadError, read_image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_point(ds, row, col):
    """The standard's equation C.7.6.2.1-1, written out independently of the reader."""
    ipp = np.array(ds.ImagePositionPatient, float)
    iop = np.array(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return ipp + row * dr * iop[3:] + col * dc * iop[:3]


@pytest.mark.parametrize("name", ["MR_small.dcm", "examples_overlay.dcm", "CT_small.dcm"])
def test_pydicom_files_geometry_and_values(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    image = read_image(path)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    np.testing.assert_array_equal(image.array, ds.pixel_array * slope + intercept)
    for row, col in [(0, 0), (5, 17), (ds.Rows - 1, ds.Columns - 1)]:
        ras = image.affine @ [row, col, 0, 1]
        np.testing.assert_allclose(ras[:3], LPS_TO_RAS @ lps_point(ds, row, col), atol=1e-4)
    assert image.metadata["modality"] == ds.Modality
    assert image.spacing == pytest.approx([float(v) for v in ds.PixelSpacing])


@pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")
def test_agrees_with_nibabel_dicom_wrapper():
    """nibabel's own DICOM geometry (LPS, column-major index) as an independent reference."""
    from nibabel.nicom.dicomwrappers import wrapper_from_file

    path = get_testdata_file("MR_small.dcm")
    wrapper_affine = wrapper_from_file(path).affine  # maps (row, col, slice) -> LPS
    image = read_image(path)
    for row, col in [(0, 0), (3, 40), (63, 63)]:
        expected = wrapper_affine @ [row, col, 0, 1]
        np.testing.assert_allclose(
            (image.affine @ [row, col, 0, 1])[:3], LPS_TO_RAS @ expected[:3], atol=1e-4
        )


def test_series_sorted_geometrically_with_oblique_affine(oblique_series):
    s = oblique_series
    image = read_image(s["folder"])
    assert image.array.shape == (s["count"], 12, 10)
    # Slice k holds 100 * (k + 1): geometric order, whatever the names and InstanceNumbers say.
    for k in range(s["count"]):
        np.testing.assert_array_equal(image.array[k], 100 * (k + 1) + s["ramp"])
    assert image.is_oblique
    assert image.spacing == pytest.approx([s["slice_gap"], *s["spacing"]])
    for k, row, col in [(0, 0, 0), (3, 7, 2), (6, 11, 9)]:
        lps = (
            s["origin"]
            + k * s["slice_gap"] * s["normal"]
            + row * 0.9 * s["along_col"]
            + col * 0.8 * s["along_row"]
        )
        np.testing.assert_allclose((image.affine @ [k, row, col, 1])[:3], LPS_TO_RAS @ lps, atol=1e-4)


def test_series_in_reverse_normal_direction_still_ascends(tmp_path):
    ramp = np.arange(16, dtype=np.int16).reshape(4, 4)
    for k, z in enumerate([30.0, 20.0, 10.0]):  # written top-down, InstanceNumber ascending
        ds = dicom_slice(ramp + k, position=(0, 0, z), orientation=(1, 0, 0, 0, 1, 0), instance=k + 1)
        save(ds, tmp_path / f"s{k}.dcm")
    image = read_image(tmp_path)
    np.testing.assert_array_equal(image.array[:, 0, 0], [2, 1, 0])  # z = 10, 20, 30
    assert image.affine[2, 0] == pytest.approx(10.0) and image.affine[2, 3] == pytest.approx(10.0)


def test_monochrome1_is_inverted_so_dense_is_bright(tmp_path):
    stored = np.array([[0, 100], [4000, 4095]], dtype=np.uint16)
    path = save(dicom_slice(stored, photometric="MONOCHROME1", modality="CR"), tmp_path / "cr.dcm")
    image = read_image(path)
    np.testing.assert_array_equal(image.array, 4095 - stored)
    assert image.metadata["inverted_monochrome1"] is True


def test_rescale_slope_intercept_applied(tmp_path):
    stored = np.array([[0, 1], [1000, 2000]], dtype=np.uint16)
    ct = save(dicom_slice(stored, slope=1, intercept=-1024, modality="CT"), tmp_path / "ct.dcm")
    image = read_image(ct)
    np.testing.assert_array_equal(image.array, stored.astype(int) - 1024)
    assert image.array.dtype == np.int16
    pet = save(dicom_slice(stored, slope=0.25, intercept=1.5), tmp_path / "pt.dcm")
    np.testing.assert_allclose(read_image(pet).array, stored * 0.25 + 1.5)


def test_radiograph_without_position_uses_patient_orientation(tmp_path):
    pixels = np.zeros((6, 8), dtype=np.uint16)
    ds = dicom_slice(pixels, modality="DX", spacing=(0.2, 0.2))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = ["0.15", "0.15"]
    ds.PatientOrientation = ["L", "F"]
    image = read_image(save(ds, tmp_path / "dx.dcm"))
    assert image.orientation == "IL"  # rows towards the feet, columns towards the patient's left
    assert image.spacing == pytest.approx([0.15, 0.15])
    assert "ImagerPixelSpacing" in image.metadata["spacing_note"]


def test_folder_with_several_series_loads_largest_and_names_others(tmp_path, oblique_series):
    other = dicom_slice(
        np.ones((4, 4), np.int16),
        position=(0, 0, 0),
        orientation=(1, 0, 0, 0, 1, 0),
        series_uid="9.9.9",
        description="localizer",
    )
    save(other, oblique_series["folder"] / "sub" / "loc.dcm")
    (oblique_series["folder"] / "notes.txt").write_text("not dicom")
    image = read_image(oblique_series["folder"])
    assert image.array.shape[0] == oblique_series["count"]
    assert [o["description"] for o in image.metadata["other_series"]] == ["localizer"]
    assert "localizer" in image.metadata["warning"]


def test_duplicate_positions_refused(tmp_path):
    for k in range(2):
        save(
            dicom_slice(np.ones((4, 4), np.int16), position=(0, 0, 5), orientation=(1, 0, 0, 0, 1, 0)),
            tmp_path / f"echo{k}.dcm",
        )
    with pytest.raises(ImageReadError, match="share one position"):
        read_image(tmp_path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="no DICOM image files"):
        read_image(tmp_path)


def test_truncated_dicom(tmp_path):
    with pytest.raises(ImageReadError, match=r"MR_truncated.dcm"):
        read_image(get_testdata_file("MR_truncated.dcm"))
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut.dcm"):
        read_image(cut)


def test_non_image_dicom_refused():
    with pytest.raises(ImageReadError, match="without pixel data"):
        read_image(get_testdata_file("rtplan.dcm"))

"""Shared test helpers: synthetic DICOM series built with pydicom, as a scanner would write them."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)


def pytest_report_header(config) -> str:
    """Which napari the run tests (make test runs the napari tests on the previous minor release too)."""
    from importlib.metadata import version

    return f"napari {version('napari')}, vispy {version('vispy')}"


def rotation(alpha: float, beta: float, gamma: float) -> np.ndarray:
    """A proper rotation matrix from three angles (radians)."""
    ca, sa, cb, sb, cg, sg = (
        np.cos(alpha),
        np.sin(alpha),
        np.cos(beta),
        np.sin(beta),
        np.cos(gamma),
        np.sin(gamma),
    )
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cg, -sg], [0, sg, cg]])
    return rz @ ry @ rx


def dicom_slice(
    pixels: np.ndarray,
    *,
    position=None,
    orientation=None,
    spacing=(0.9, 0.8),
    series_uid: str = "1.2.3.4",
    instance: int = 1,
    modality: str = "MR",
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    description: str = "t1_axial",
    extra: dict | None = None,
) -> Dataset:
    sop_class = {
        "CR": ComputedRadiographyImageStorage,
        "DX": DigitalXRayImageStorageForPresentation,
        "CT": CTImageStorage,
    }.get(modality, MRImageStorage)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.3"
    # Patient and Study modules as an archive holds them (derived objects copy them).
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "Test^Patient",
        "P0042",
        "19700101",
        "O",
    )
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "7", "A1234"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 3
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12 if pixels.dtype == np.uint16 else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0 if pixels.dtype == np.uint16 else 1
    ds.PixelSpacing = [str(s) for s in spacing]
    if position is not None:
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.FrameOfReferenceUID = "1.2.3.9"
        ds.SliceThickness = "2.5"
    if orientation is not None:
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    if slope is not None:
        ds.RescaleSlope = str(slope)
        ds.RescaleIntercept = str(intercept or 0)
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def oblique_series(tmp_path):
    """An oblique 7-slice series saved under shuffled names with misleading InstanceNumbers.

    Slice k is filled with 100 * (k + 1) plus a row/column ramp, so the reading
    order and the in-plane orientation can both be checked.
    """
    rng = np.random.default_rng(7)
    frame = rotation(0.35, -0.2, 0.15)
    along_row, along_col, normal = frame[:, 0], frame[:, 1], frame[:, 2]
    origin = np.array([-80.5, 20.25, 35.0])
    slice_gap, spacing, shape, count = 2.5, (0.9, 0.8), (12, 10), 7
    folder = tmp_path / "series"
    names = rng.permutation([f"IMG{rng.integers(1e6):06d}_{i}.dcm" for i in range(count)])
    instances = rng.permutation(count) + 1
    ramp = (np.arange(shape[0])[:, None] * 3 + np.arange(shape[1])[None, :]).astype(np.int16)
    for k in range(count):
        pixels = (100 * (k + 1) + ramp).astype(np.int16)
        ds = dicom_slice(
            pixels,
            position=origin + k * slice_gap * normal,
            orientation=np.concatenate([along_row, along_col]),
            spacing=spacing,
            instance=int(instances[k]),
        )
        save(ds, folder / names[k])
    return {
        "folder": folder,
        "origin": origin,
        "along_row": along_row,
        "along_col": along_col,
        "normal": normal,
        "slice_gap": slice_gap,
        "spacing": spacing,
        "ramp": ramp,
        "count": count,
    }


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (offline-first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)

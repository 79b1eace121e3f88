"""DICOM through pydicom: single images (CR/DX radiographs, MR/CT slices,
multi-frame volumes) and folders holding a series.

Geometry follows the standard (PS3.3 C.7.6.2): a pixel at (row r, column c)
lies at ImagePositionPatient + r * dr * Fc + c * dc * Fr in LPS millimetres,
where Fr/Fc are the row/column direction cosines of ImageOrientationPatient
and (dr, dc) is PixelSpacing. Slices are ordered by their position along the
slice normal, never by file name or InstanceNumber, and the result is
converted to RAS+ like every ``MedicalImage``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from .image import ImageReadError, MedicalImage
from .limits import check_declared

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# PatientOrientation letters (PS3.3 C.7.6.1.1.1) as LPS unit vectors.
_LETTER_TO_LPS = {
    "L": (1, 0, 0),
    "R": (-1, 0, 0),
    "P": (0, 1, 0),
    "A": (0, -1, 0),
    "H": (0, 0, 1),
    "F": (0, 0, -1),
}
# Metadata key: the source file of each slice, in the array's slice order (file orientation). DICOM
# writers re-read these headers (never the pixels) to derive new instances from them.
SOURCE_FILES = "_dicom_files"
# Two slice positions closer than this (mm) along the normal are the same location.
_SAME_POSITION_MM = 1e-3
# napari-medit's own decoder dependencies (pyproject.toml), named when an environment lacks them.
_DECODERS = "python-gdcm pylibjpeg pylibjpeg-openjpeg"


def has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_dicom_file(path: Path) -> MedicalImage:
    ds = _dcmread(path)
    if ds.get("SOPClassUID") == pydicom.uid.SegmentationStorage:
        raise ImageReadError(
            f"{path}: a DICOM SEG holds masks, not an image; open it in napari (Masks widget: "
            "Load mask file...) or give it to a mask option (--edit-mask FILE ...)"
        )
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise ImageReadError(
            f"{path}: DICOM file without pixel data ({ds.get('Modality', 'unknown modality')} object)"
        )
    pixels = _pixels(ds, path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return _multiframe_volume(ds, pixels, path)
    affine, spacing_note = _plane_affine(ds)
    metadata = _metadata(ds, path, spacing_note)
    metadata[SOURCE_FILES] = [str(Path(path).resolve())]
    return MedicalImage(pixels, affine, metadata)


def read_dicom_series(folder: Path) -> MedicalImage:
    """Load the largest series in ``folder`` (searched recursively) as one volume."""
    series = _scan_series(folder)
    if not series:
        raise ImageReadError(f"{folder}: no DICOM image files in this folder")
    ranked = sorted(series.items(), key=lambda item: len(item[1]), reverse=True)
    uid, members = ranked[0]
    others = [_series_summary(u, m) for u, m in ranked[1:]]
    image = read_dicom_file(members[0][0]) if len(members) == 1 else _stack_series(members, folder)
    image.metadata["series"] = _series_summary(uid, members)
    image.metadata["path"] = str(folder)
    if others:
        image.metadata["other_series"] = others
        image.metadata["warning"] = (
            f"{folder} holds {len(ranked)} series; loaded the largest ({len(members)} files, "
            f"'{image.metadata['series']['description']}'), others: "
            + ", ".join(f"'{o['description']}' ({o['files']} files)" for o in others)
        )
    return image


# ---------------------------------------------------------------- reading


def _dcmread(path: Path, header_only: bool = False) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError as exc:
        raise ImageReadError(f"{path}: not a DICOM file ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: no such file") from exc
    except Exception as exc:  # truncated or corrupt data elements
        raise ImageReadError(f"{path}: corrupt DICOM file ({_first_line(exc)})") from exc


def _check_declared(ds: Dataset, path: Path, slices: int = 1) -> None:
    """Refuse, before decoding, pixels the header says would not fit (``slices`` such files: a series)."""
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if bits not in (1, 8, 16, 32, 64):
        raise ImageReadError(
            f"{path}: BitsAllocated {bits} is not a size pixels are stored in (the header is damaged)"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1) * slices
    # per voxel: the stored samples, and float64 output after a rescale
    itemsize = int(ds.get("SamplesPerPixel", 1) or 1) * bits / 8 + 8
    check_declared(path, (frames, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)), itemsize)


def _pixels(ds: Dataset, path: Path) -> np.ndarray:
    """Decoded pixels in output units: MONOCHROME1 inverted, then Rescale Slope/Intercept."""
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    _check_declared(ds, path)
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(_decode_failure(path, syntax, exc)) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith(("RGB", "YBR", "PALETTE")):
        stored = _to_gray(ds, stored)
    elif photometric == "MONOCHROME1":
        stored = _invert_monochrome1(ds, stored)
    return _rescale(stored, [ds] if int(ds.get("NumberOfFrames", 1) or 1) == 1 else _frame_transforms(ds))


def _decode_failure(path: Path, syntax, exc: Exception) -> str:
    """One line: the transfer syntax, what is wrong, and the fix."""
    if syntax is None or not _is_compressed(syntax):
        return f"{path}: cannot decode pixel data ({_first_line(exc)})"
    named = f"{syntax.name} ({syntax})" if syntax.name != str(syntax) else str(syntax)
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:  # pydicom has no decoder at all: video, JPEG XL, private syntaxes
        return (
            f"{path}: pixel data is compressed as {named}, which napari-medit cannot decode; fix: convert "
            "the file to an uncompressed transfer syntax first (e.g. gdcmconv --raw, or dcmtk's dcmdjpeg)"
        )
    if available:  # a decoder ran and failed: the data itself is damaged or unusual
        return f"{path}: cannot decode its {named} pixel data ({_first_line(exc)})"
    return (
        f"{path}: pixel data is compressed as {named} and no decoder for it is installed; "
        f"fix: pip install {_DECODERS}"
    )


def _is_compressed(syntax) -> bool:
    try:
        return syntax.is_compressed
    except ValueError:  # a UID pydicom does not know as a transfer syntax: assume compressed
        return True


def _invert_monochrome1(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    # MONOCHROME1 displays the minimum as white; invert over the stored bit range so
    # dense tissue is bright and every file of a series flips the same way.
    bits = int(ds.get("BitsStored", stored.dtype.itemsize * 8))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return (-1 - stored.astype(np.int64)).astype(stored.dtype)
    return ((1 << bits) - 1 - stored.astype(np.int64)).astype(stored.dtype)


def _to_gray(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    # pydicom already converts YBR to RGB; palette images still need their lookup table.
    from pydicom.pixels import apply_color_lut

    rgb = (
        apply_color_lut(stored, ds)
        if str(ds.PhotometricInterpretation).upper() == "PALETTE COLOR"
        else stored
    )
    gray = rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma
    return np.round(gray).astype(rgb.dtype)


def _rescale(stored: np.ndarray, transforms: list) -> np.ndarray:
    """Apply per-frame (slope, intercept); integers stay integers when the maths allows."""
    slopes = np.array([float(t.get("RescaleSlope", 1) or 1) for t in transforms])
    intercepts = np.array([float(t.get("RescaleIntercept", 0) or 0) for t in transforms])
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return stored
    shape = (-1,) + (1,) * (stored.ndim - 1) if len(transforms) > 1 else ()
    values = stored.astype(np.float64) * slopes.reshape(shape) + intercepts.reshape(shape)
    if np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)):
        return values.astype(_smallest_int(values))
    return values.astype(np.float32)


def _smallest_int(values: np.ndarray) -> type:
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if values.size == 0 or (info.min <= values.min() and values.max() <= info.max):
            return dtype
    return np.int64


def _frame_transforms(ds: Dataset) -> list:
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    frames = int(ds.NumberOfFrames)
    out = []
    for i in range(frames):
        group = per_frame[i] if i < len(per_frame) else Dataset()
        seq = group.get("PixelValueTransformationSequence") or shared.get("PixelValueTransformationSequence")
        out.append(seq[0] if seq else ds)
    return out


# ---------------------------------------------------------------- geometry


def _plane_affine(ds: Dataset) -> tuple[np.ndarray, str | None]:
    """4x4 affine of one slice, array index (row, col, 0) -> RAS+."""
    row_spacing, col_spacing, note = _pixel_spacing(ds)
    if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds:
        along_row, along_col = _cosines(ds.ImageOrientationPatient)
        origin = np.array(ds.ImagePositionPatient, dtype=float)
    else:
        # Projection radiographs (CR/DX) have no patient position; PatientOrientation
        # names where rows and columns point, defaulting to a PA chest film.
        along_row, along_col = _patient_orientation(ds)
        origin = np.zeros(3)
    normal = np.cross(along_row, along_col)
    thickness = float(ds.get("SliceThickness", 1) or 1)
    lps = np.eye(4)
    lps[:3, 0] = along_col * row_spacing
    lps[:3, 1] = along_row * col_spacing
    lps[:3, 2] = normal * thickness
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps, note


def _pixel_spacing(ds: Dataset) -> tuple[float, float, str | None]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            note = None if keyword == "PixelSpacing" else f"spacing from {keyword} (at the detector)"
            return float(value[0]), float(value[1]), note
    return 1.0, 1.0, "no pixel spacing in the file: 1 mm assumed"


def _cosines(orientation) -> tuple[np.ndarray, np.ndarray]:
    values = np.array(orientation, dtype=float)
    along_row, along_col = values[:3], values[3:]
    return along_row / np.linalg.norm(along_row), along_col / np.linalg.norm(along_col)


def _patient_orientation(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    codes = list(ds.get("PatientOrientation", []) or [])
    if len(codes) != 2:
        codes = ["L", "F"]
    vectors = []
    for code in codes:
        v = sum(np.array(_LETTER_TO_LPS[c], dtype=float) for c in str(code).upper() if c in _LETTER_TO_LPS)
        vectors.append(v / np.linalg.norm(v) if np.any(v) else None)
    if vectors[0] is None or vectors[1] is None or abs(vectors[0] @ vectors[1]) > 1e-3:
        return np.array([1.0, 0, 0]), np.array([0, 0, -1.0])
    return vectors[0], vectors[1]


def _volume_affine(slice_ds: Dataset, first: np.ndarray, last: np.ndarray, count: int) -> np.ndarray:
    """Affine of a (slice, row, col) volume whose slices run from ``first`` to ``last``."""
    plane, _ = _plane_affine(slice_ds)
    lps = LPS_TO_RAS @ plane  # back to LPS (the matrix is its own inverse)
    volume = np.eye(4)
    volume[:3, 0] = (last - first) / (count - 1)
    volume[:3, 1] = lps[:3, 0]
    volume[:3, 2] = lps[:3, 1]
    volume[:3, 3] = first
    return LPS_TO_RAS @ volume


def _ordered_positions(positions: np.ndarray, normal: np.ndarray, where: Path) -> tuple[np.ndarray, dict]:
    """Order slices along the normal; refuse duplicates; report uneven spacing."""
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    steps = np.diff(depth[order])
    if np.any(steps < _SAME_POSITION_MM):
        raise ImageReadError(
            f"{where}: several slices share one position (several echoes, phases or acquisitions "
            "in one series); split them into folders of one acquisition each"
        )
    info = {"slice_spacing": float(steps.mean())}
    if steps.max() - steps.min() > max(1e-2, 0.01 * steps.mean()):
        info["warning"] = f"uneven slice spacing {steps.min():.3f}-{steps.max():.3f} mm; the mean is used"
    return order, info


def _stack_series(members: list[tuple[Path, Dataset]], folder: Path) -> MedicalImage:
    first_ds = members[0][1]
    missing = [
        p.name for p, ds in members if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds
    ]
    if missing:
        raise ImageReadError(
            f"{folder}: cannot order the slices, {len(missing)} file(s) lack ImagePositionPatient/"
            f"ImageOrientationPatient (e.g. {missing[0]})"
        )
    along_row, along_col = _cosines(first_ds.ImageOrientationPatient)
    for path, ds in members:
        r, c = _cosines(ds.ImageOrientationPatient)
        if not (np.allclose(r, along_row, atol=1e-4) and np.allclose(c, along_col, atol=1e-4)):
            raise ImageReadError(
                f"{folder}: slices of one series have different orientations (e.g. {path.name})"
            )
        if (ds.Rows, ds.Columns) != (first_ds.Rows, first_ds.Columns):
            raise ImageReadError(f"{folder}: slices of one series have different sizes (e.g. {path.name})")
    normal = np.cross(along_row, along_col)
    positions = np.array([np.array(ds.ImagePositionPatient, dtype=float) for _, ds in members])
    order, spacing_info = _ordered_positions(positions, normal, folder)
    paths = [members[i][0] for i in order]
    _check_declared(first_ds, folder, slices=len(paths))
    slices = [_pixels(_dcmread(p), p) for p in paths]
    dtype = np.result_type(*[s.dtype for s in slices])
    array = np.stack([s.astype(dtype, copy=False) for s in slices])
    affine = _volume_affine(first_ds, positions[order[0]], positions[order[-1]], len(order))
    metadata = _metadata(first_ds, folder, None)
    metadata.update(spacing_info)
    metadata["files"] = [p.name for p in paths]
    metadata[SOURCE_FILES] = [str(p.resolve()) for p in paths]
    return MedicalImage(array, affine, metadata)


def _multiframe_volume(ds: Dataset, pixels: np.ndarray, path: Path) -> MedicalImage:
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    metadata = _metadata(ds, path, None)
    try:
        orientation = (shared.get("PlaneOrientationSequence") or per_frame[0].PlaneOrientationSequence)[0]
        measures = (shared.get("PixelMeasuresSequence") or per_frame[0].PixelMeasuresSequence)[0]
        positions = np.array(
            [np.array(f.PlanePositionSequence[0].ImagePositionPatient, dtype=float) for f in per_frame]
        )
    except (AttributeError, IndexError, KeyError, TypeError):
        # No per-frame geometry (e.g. a cine or an ultrasound clip): frames stacked as they come.
        affine, _note = _plane_affine(ds)
        metadata["warning"] = "multi-frame file without per-frame positions: frames stacked in file order"
        volume = np.eye(4)
        volume[:, 1:3] = affine[:, 0:2]
        volume[:3, 0] = affine[:3, 2]
        volume[:, 3] = affine[:, 3]
        return MedicalImage(pixels, volume, metadata)
    geometry = Dataset()
    geometry.ImageOrientationPatient = orientation.ImageOrientationPatient
    geometry.PixelSpacing = measures.PixelSpacing
    geometry.ImagePositionPatient = list(positions[0])
    along_row, along_col = _cosines(orientation.ImageOrientationPatient)
    order, spacing_info = _ordered_positions(positions, np.cross(along_row, along_col), path)
    metadata.update(spacing_info)
    affine = _volume_affine(geometry, positions[order[0]], positions[order[-1]], len(order))
    return MedicalImage(np.ascontiguousarray(pixels[order]), affine, metadata)


# ---------------------------------------------------------------- series discovery and metadata


def _scan_series(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if name.upper() == "DICOMDIR":
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not DICOM, or unreadable: a folder may hold other files too
                continue
            if "Rows" not in ds:  # reports, structured reports, presentation states
                continue
            series[str(ds.get("SeriesInstanceUID", "unknown"))].append((path, ds))
    return dict(series)


def _series_summary(uid: str, members: list[tuple[Path, Dataset]]) -> dict[str, Any]:
    ds = members[0][1]
    return {
        "uid": uid,
        "description": str(ds.get("SeriesDescription", "") or "unnamed"),
        "number": int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
        "modality": str(ds.get("Modality", "")),
        "files": len(members),
    }


def _metadata(ds: Dataset, path: Path, spacing_note: str | None) -> dict[str, Any]:
    header = {}
    for keyword in (
        "Modality",
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesDescription",
        "BodyPartExamined",
        "ViewPosition",
        "PhotometricInterpretation",
        "BitsStored",
        "RescaleSlope",
        "RescaleIntercept",
        "WindowCenter",
        "WindowWidth",
        "Manufacturer",
    ):
        value = ds.get(keyword)
        if value not in (None, ""):
            header[keyword] = _plain(value)
    metadata: dict[str, Any] = {
        "format": "dicom",
        "path": str(path),
        "modality": str(ds.get("Modality", "")) or None,
        "dicom": header,
    }
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        metadata["inverted_monochrome1"] = True
    if spacing_note:
        metadata["spacing_note"] = spacing_note
    return metadata


def _plain(value: Any) -> Any:
    """pydicom's value types (DSfloat, IS, PersonName, MultiValue) as JSON-friendly Python."""
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]

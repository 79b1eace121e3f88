"""Counterfactuals written back as DICOM: a derived series beside the source.

Each output instance is its source instance's header (same SOP class, Patient,
Study, Frame of Reference, per-slice geometry, stored representation, rescale
and window), with what the standard asks of a derived, synthetic image
(PS3.3 C.7.6.1: ImageType DERIVED\\SECONDARY, Derivation Description, Source
Image Sequence; C.12.1: Synthetic Data YES), new Series and SOP Instance UIDs,
and the edited pixels mapped back to stored values by inverting exactly what
the reader applied (MONOCHROME1 inversion, then Rescale Slope/Intercept), so
unedited pixels get their source's stored values bit for bit.

Headers are re-read from the source files (never their pixels); output is
always Explicit VR Little Endian, whatever the source's transfer syntax.
"""

from __future__ import annotations

import copy
import datetime
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from .._version import __version__
from .dicom import SOURCE_FILES
from .image import MedicalImage

SOFTWARE = "napari-medit"
# Derived series are numbered after their source's, as scanners number reconstructions.
SERIES_NUMBER_OFFSET = 1000
# Attributes describing the source's pixels that the edit makes wrong, or that a
# derived image must not carry (PS3.3 C.7.6.1.1.2: a derived image's icon is its own).
_STALE = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "IconImageSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "SourceApplicationEntityTitle",
)


class StoredRangeWarning(UserWarning):
    """Edited values fell outside what the source's stored representation can hold."""


class DicomOutputError(ValueError):
    """DICOM output cannot be derived from this image; the message says why and what to write instead."""


def source_files(image: MedicalImage) -> list[Path]:
    """The source instance of each slice of ``image`` (in the file's voxel order), or a clear refusal."""
    files = image.metadata.get(SOURCE_FILES)
    where = image.metadata.get("path") or "this image"
    if not files:
        kind = image.metadata.get("format")
        if kind == "dicom":
            raise DicomOutputError(
                f"{where}: DICOM output from a multi-frame (enhanced) DICOM file is not "
                "supported; write .nii.gz instead"
            )
        raise DicomOutputError(
            f"{where}: DICOM output needs a DICOM source; a {kind or 'non-DICOM'} image has no patient or "
            f"study "
            "context to derive from; write .nii.gz (volumes) or .png (2D) instead"
        )
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DicomOutputError(
            f"{missing[0]}: this source file is gone; DICOM output copies its header, so "
            "open the series again from where it is now"
        )
    return [Path(f) for f in files]


def check_dicom_output(out: str | Path, image: MedicalImage, overwrite: bool = False) -> list[Path]:
    """Refuse, in one line, a DICOM output ``image`` cannot be written as; returns the source files."""
    out = Path(out).expanduser()
    image = image.in_source_orientation()
    files = source_files(image)
    slices = 1 if image.array.ndim == 2 else image.array.shape[0]
    if image.array.ndim not in (2, 3) or slices != len(files):
        raise DicomOutputError(
            f"{out}: the image ({image.array.shape}) does not match its {len(files)} source DICOM instance(s)"
        )
    if out.suffix.lower() == ".dcm":
        if len(files) > 1:
            raise DicomOutputError(
                f"{out}: a series of {len(files)} slices is written to a folder: --out FOLDER --format dicom"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty; choose another folder or --overwrite")
    return files


def write_dicom(
    out: str | Path, image: MedicalImage, *, overwrite: bool = False, description: str | None = None
) -> list[Path]:
    """Write ``image`` (an edit of a DICOM source, any orientation) as a derived DICOM series.

    ``out`` ending in ``.dcm`` is a single file (2D images); anything else is a folder that gets one
    file per source slice, untouched slices included. A folder that already holds files is refused
    unless ``overwrite``. Files are written in a temporary folder beside ``out`` and moved in place
    at the end, so a failure leaves nothing partial. ``description`` overrides the Derivation
    Description built from the edit's provenance (``image.metadata['edit']``). Returns the files.
    """
    out = Path(out).expanduser()
    files = check_dicom_output(out, image, overwrite)
    image = image.in_source_orientation()
    single = out.suffix.lower() == ".dcm"
    slices = [image.array] if image.array.ndim == 2 else list(image.array)
    description = description or derivation_text(image.metadata.get("edit") or {})
    series_uid = generate_uid()
    now = datetime.datetime.now()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{out.name}-", dir=out.parent))
    try:
        names, clipped = [], 0
        for index, (path, values) in enumerate(zip(files, slices, strict=True)):
            source = _read_header(path)
            stored, outside = to_stored(values, source, path)
            clipped += outside
            derived = derive(source, stored, series_uid, now, description)
            name = out.name if single else f"slice_{index + 1:04d}.dcm"
            derived.save_as(staging / name, enforce_file_format=True)
            names.append(name)
        if clipped:
            warnings.warn(
                f"{out}: {clipped} edited pixel value(s) lay outside the source's stored range and were "
                "clipped to it",
                StoredRangeWarning,
                stacklevel=2,
            )
        if single:
            (staging / out.name).replace(out)
            return [out]
        _replace_folder(staging, out)
        return [out / name for name in names]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def to_stored(values: np.ndarray, source: Dataset, path: Path | str = "") -> tuple[np.ndarray, int]:
    """Undo the reader's mapping (MONOCHROME1 inversion, then Rescale Slope/Intercept) for one
    frame: stored values in the source's representation, and how many had to be clipped."""
    photometric = str(source.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomOutputError(
            f"{path}: DICOM output keeps the source's pixel representation, and "
            f"{photometric} sources are converted to grey when read; write .png instead"
        )
    if "FloatPixelData" in source or "DoubleFloatPixelData" in source:
        raise DicomOutputError(
            f"{path}: floating-point DICOM pixel data cannot be written back; write .nii.gz"
        )
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise DicomOutputError(f"{path}: the image holds NaN or infinite values, which DICOM cannot store")
    slope = float(source.get("RescaleSlope", 1) or 1)
    intercept = float(source.get("RescaleIntercept", 0) or 0)
    stored = np.rint((values - intercept) / slope)
    bits_allocated = int(source.BitsAllocated)
    bits_stored = int(source.get("BitsStored", bits_allocated))
    signed = int(source.get("PixelRepresentation", 0)) == 1
    if photometric == "MONOCHROME1":  # the reader inverted over the stored bit range
        stored = -1 - stored if signed else (1 << bits_stored) - 1 - stored
    low, high = (
        (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    )
    outside = int(np.count_nonzero((stored < low) | (stored > high)))
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    return np.clip(stored, low, high).astype(dtype), outside


def derive(
    source: Dataset, stored: np.ndarray, series_uid: str, now: datetime.datetime, description: str
) -> Dataset:
    """The derived instance: the source header, the new pixels and what marks it derived and synthetic."""
    ds = copy.deepcopy(source)  # a header only (read without pixels): cheap, and the source stays as read
    for keyword in _STALE:
        if keyword in ds:
            delattr(ds, keyword)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    sop_uid = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    number = source.get("SeriesNumber")
    ds.SeriesNumber = (int(number) if number not in (None, "") else 0) + SERIES_NUMBER_OFFSET
    ds.SeriesDescription = f"{SOFTWARE} counterfactual of {source.get('SeriesDescription', '') or 'series'}"[
        :64
    ]
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    kept = list(source.get("ImageType", []) or [])[2:]
    ds.ImageType = ["DERIVED", "SECONDARY", *kept]
    ds.DerivationDescription = description[:1024]
    ds.SyntheticData = "YES"
    ds.SoftwareVersions = f"{SOFTWARE} {__version__}"
    ds.SourceImageSequence = [_source_reference(source)]
    ds.PixelData = stored.astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()
    ds["PixelData"].VR = "OB" if stored.dtype.itemsize == 1 else "OW"
    ds.Rows, ds.Columns = stored.shape
    return ds


def derivation_text(provenance: dict[str, Any]) -> str:
    """What the Derivation Description says: the method, model and seed that made the image."""
    if not provenance:
        return f"Edited with {SOFTWARE} {__version__}; synthetic image"
    model = provenance.get("model") or {}
    return (
        f"Synthetic counterfactual made by {SOFTWARE} {provenance.get('napari_medit', __version__)}: "
        f"method {provenance.get('method')} ({provenance.get('reference', '')}), model {model.get('name')} "
        f"(weights sha256 {str(model.get('weights_sha256'))[:16]}), seed {provenance.get('seed')}"
    )


def _source_reference(source: Dataset) -> Dataset:
    from pydicom.sr.codedict import codes

    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = Dataset()  # DCM 121322: "Source image for image processing operation"
    code = codes.DCM.SourceImageForImageProcessingOperation
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = (
        code.value,
        code.scheme_designator,
        code.meaning,
    )
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def _read_header(path: Path) -> Dataset:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomOutputError(
            f"{path}: DICOM output from a multi-frame (enhanced) DICOM file is not supported; "
            "write .nii.gz instead"
        )
    return ds


def _replace_folder(staging: Path, out: Path) -> None:
    """Move the finished folder into place; an old one (with --overwrite) goes only once the new one is
    whole."""
    if out.exists():
        old = out.with_name(f".old-{out.name}-{datetime.datetime.now():%Y%m%d%H%M%S%f}")
        out.replace(old)
        staging.replace(out)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        staging.replace(out)

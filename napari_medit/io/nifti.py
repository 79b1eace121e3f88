"""NIfTI-1/2 through nibabel, keeping the header so a write reproduces the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from .image import ImageReadError, MedicalImage
from .limits import affine_problem, check_declared


def read_nifti(path: Path) -> MedicalImage:
    try:
        image = nib.load(path)
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ImageReadError(f"{path}: not a NIfTI image (nibabel sees {type(image).__name__})")
        scaled = image.dataobj.slope != 1 or image.dataobj.inter != 0
        check_declared(
            path,
            image.header.get_data_shape(),
            max(image.header.get_data_dtype().itemsize, 8 if scaled else 0),
        )
        # dataobj applies scl_slope/scl_inter; reading it here surfaces truncated files now.
        array = np.asanyarray(image.dataobj)
    except ImageReadError:
        raise
    except Exception as exc:  # nibabel, gzip and zlib each raise their own types
        raise ImageReadError(f"{path}: not a readable NIfTI file ({_reason(exc)})") from exc
    header = image.header
    if array.ndim < 2:
        raise ImageReadError(f"{path}: NIfTI with shape {array.shape} is not an image")
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    metadata = {
        "format": "nifti",
        "path": str(path),
        "modality": None,
        "nifti": {
            "version": 2 if isinstance(header, nib.Nifti2Header) else 1,
            "sform_code": sform_code,
            "qform_code": qform_code,
            "datatype": str(header.get_data_dtype()),
            "scl_slope_inter": [_plain(v) for v in header.get_slope_inter()],
            "descrip": header["descrip"].item().decode("latin-1").strip("\x00 "),
            "units": list(header.get_xyzt_units()),
        },
        "_nifti_header": header,
        "_nifti_affine": image.affine,
    }
    affine, source = _usable_affine(path, header, sform_code, qform_code)
    metadata["nifti"]["affine_from"] = source
    if source != "sform" and sform_code > 0:
        metadata["warning"] = (
            f"the sform is unusable ({affine_problem(header.get_sform())}): the {source} is used"
        )
        warnings.warn(f"{path}: {metadata['warning']}", stacklevel=3)
    elif source == "pixdim":
        metadata["warning"] = "no usable sform or qform: spacing comes from pixdim, orientation unknown"
    return MedicalImage(array, affine, metadata)


def _usable_affine(path: Path, header, sform_code: int, qform_code: int) -> tuple[np.ndarray, str]:
    """The sform, else the qform, else the voxel sizes: the first that is finite and invertible, as the
    NIfTI standard orders them (nibabel takes the sform whenever its code is set, whatever it holds)."""
    candidates = []
    if sform_code > 0:
        candidates.append(("sform", header.get_sform))
    if qform_code > 0:
        candidates.append(("qform", header.get_qform))
    candidates.append(("pixdim", header.get_base_affine))
    for source, affine_of in candidates:
        try:
            affine = affine_of()
        except Exception:  # noqa: BLE001 - a quaternion nibabel cannot use counts as unusable
            continue
        if affine_problem(affine) is None:
            return affine, source
    raise ImageReadError(
        f"{path}: no usable geometry: the sform, qform and voxel sizes (pixdim "
        f"{[float(v) for v in header['pixdim'][1:4]]}) are all non-finite, zero or singular; "
        "set a valid sform or qform (nibabel's set_sform, or fslorient) or export the image again"
    )


def write_nifti(path: Path, image: MedicalImage) -> Path:
    """Write ``image``; when it still has the geometry it was read with, the
    source header (sform/qform codes, units, description) comes back unchanged."""
    image = image.in_source_orientation()
    header = image.metadata.get("_nifti_header")
    source_affine = image.metadata.get("_nifti_affine")
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    array = _writable(image.array, header)
    if header is not None and source_affine is not None and np.array_equal(image.affine, source_affine):
        header = header.copy()
        header.set_data_dtype(array.dtype)
        # affine=None keeps the header's own sform and qform rows instead of re-deriving them.
        out = klass(array, None, header)
    else:
        out = klass(array, image.affine, header.copy() if header is not None else None)
        out.set_data_dtype(array.dtype)
        code = int(header["sform_code"]) if header is not None and header["sform_code"] > 0 else 1
        out.set_sform(image.affine, code=code)
        out.set_qform(image.affine, code=code)
    # Values are written as they are: no rescaling, so a read gives them back exactly.
    out.header.set_slope_inter(np.nan, np.nan)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, path)
    return path


def _writable(array: np.ndarray, header) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    source_dtype = header.get_data_dtype() if header is not None else None
    fits_int32 = (
        array.size == 0 or np.iinfo(np.int32).min <= array.min() <= array.max() <= np.iinfo(np.int32).max
    )
    if array.dtype == np.int64 and source_dtype != np.int64 and fits_int32:
        # napari Labels are int64 by default; NIfTI readers widely reject 64-bit ints.
        return array.astype(np.int32)
    return array


def _plain(value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

"""FreeSurfer MGH/MGZ volumes (what recon-all writes: T1.mgz, brain.mgz, aseg.mgz) through nibabel.

The header is kept so that a write with unchanged geometry reproduces the file's
voxel size, direction cosines, centre and scan parameters (TR, TE, TI, flip angle).
nibabel keeps only the fixed part of the footer: FreeSurfer's free-text tags
(talairach transform path, command history) are not carried over.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from .image import ImageReadError, MedicalImage
from .limits import check_declared

# FreeSurfer's classic voxel types. uint16 (MRI_USHRT) is left out: older FreeSurfer releases
# and nibabel versions cannot read it, and int16/int32 hold the same values.
_STORABLE = (np.uint8, np.int16, np.int32, np.float32)


def read_mgh(path: Path) -> MedicalImage:
    try:
        image = nib.MGHImage.from_filename(path, mmap=False)  # in memory: the file is not held open
        check_declared(path, image.header.get_data_shape(), image.header.get_data_dtype().itemsize * 2)
        # Reading the voxels here surfaces truncated or corrupt files now, not in napari later.
        # MGH is big-endian on disk; native byte order is what torch and napari's thumbnails accept.
        stored = np.asanyarray(image.dataobj)
        array = np.asarray(stored, dtype=stored.dtype.newbyteorder("="))
    except ImageReadError:
        raise
    except Exception as exc:  # nibabel, gzip and zlib each raise their own types
        raise ImageReadError(f"{path}: not a readable FreeSurfer MGH/MGZ file ({_reason(exc)})") from exc
    header = image.header
    metadata = {
        "format": "mgh",
        "path": str(path),
        "modality": None,
        "mgh": {
            "compressed": path.name.lower().endswith(".mgz"),
            "datatype": header.get_data_dtype().newbyteorder("=").name,
            # FreeSurfer's units: milliseconds, and the flip angle in radians.
            **{key: float(header[key]) for key in ("tr", "te", "ti", "flip_angle")},
        },
        "_mgh_header": header,
    }
    return MedicalImage(array, image.affine, metadata)


def write_mgh(path: Path, image: MedicalImage) -> Path:
    """Write ``image`` as .mgz (gzip) or .mgh; with the geometry it was read with, the source
    header comes back unchanged, otherwise the affine is set and the scan parameters are kept."""
    image = image.in_source_orientation()
    if image.ndim not in (3, 4):
        raise ValueError(
            f"{path}: MGH/MGZ holds 3D or 4D volumes and this image has shape {image.array.shape}; "
            "save it as NIfTI (.nii.gz)" + (" or PNG" if image.ndim == 2 else "")
        )
    _check_orthogonal(path, image.affine)
    array = _storable(path, image.array)
    header = image.metadata.get("_mgh_header")
    # nibabel rewrites the header's geometry only when the affine differs from it: an unchanged
    # image keeps the source's float32 voxel size, direction cosines and centre bit for bit.
    out = nib.MGHImage(array, image.affine, header.copy() if header is not None else None)
    out.header.set_data_dtype(array.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, path)
    return path


def _storable(path: Path, array: np.ndarray) -> np.ndarray:
    """``array`` in a voxel type MGH stores: integers keep their values, floats become float32."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.type in _STORABLE:
        return array
    if array.dtype.kind == "f":
        # MGH has no 64-bit float; FreeSurfer itself computes in float32.
        return array.astype(np.float32)
    if array.dtype.kind in "iu":
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for dtype in (np.int16, np.int32):
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                return array.astype(dtype)
        raise ValueError(
            f"{path}: values {low}..{high} do not fit MGH's 32-bit integers; save as NIfTI (.nii.gz)"
        )
    raise ValueError(f"{path}: MGH cannot store {array.dtype} voxels; save as NIfTI (.nii.gz)")


def _check_orthogonal(path: Path, affine: np.ndarray) -> None:
    # MGH stores voxel sizes and direction cosines, not a free matrix: a sheared affine
    # would be written but read back differently by FreeSurfer's tools.
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(columns.T @ columns, np.eye(3), atol=1e-4):
        raise ValueError(
            f"{path}: this image's affine has shear, which MGH cannot store; save as NIfTI (.nii.gz)"
        )


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

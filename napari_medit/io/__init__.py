"""Reading and writing medical images with their spatial metadata.

``read_image`` and ``write_image`` pick the format from the path; they work
without napari and raise ``ImageReadError`` with a message naming the file
and the problem.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .dicom import is_dicom_path, read_dicom_file, read_dicom_series
from .image import NEUROLOGICAL_AXIAL, RADIOLOGICAL_AXIAL, ImageReadError, MedicalImage
from .limits import check_geometry
from .mgh import is_mgh_path, read_mgh, write_mgh
from .nifti import is_nifti_path, read_nifti, write_nifti
from .raster import is_raster_path, read_raster, write_png

__all__ = [
    "NEUROLOGICAL_AXIAL",
    "RADIOLOGICAL_AXIAL",
    "SUPPORTED",
    "ImageReadError",
    "MedicalImage",
    "read_image",
    "write_image",
]

SUPPORTED = (
    "NIfTI (.nii, .nii.gz), FreeSurfer MGH (.mgz, .mgh), DICOM (a file, or a folder holding a series), "
    "PNG, JPEG"
)


def read_image(path: str | os.PathLike) -> MedicalImage:
    """Read a NIfTI or FreeSurfer MGH/MGZ volume, a DICOM file or series folder, or a PNG/JPEG radiograph.

    Every failure, from any library underneath (nibabel, pydicom, Pillow, GDCM, pylibjpeg), is one
    ``ImageReadError`` naming the file and the problem; a file that declares more pixel data than
    the memory available (or $NAPARI_MEDIT_MAX_IMAGE_BYTES) is refused before it is decoded, and an
    image is never handed on with an affine that is not finite and invertible."""
    path = Path(path).expanduser()
    try:
        image = _read(path)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(
            f"{path}: not enough memory to read it; free memory or use a smaller file"
        ) from None
    except Exception as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ImageReadError(
            f"{path}: cannot be read, the file is damaged or not what its name says "
            f"({type(exc).__name__}: {reason})"
        ) from exc
    check_geometry(path, image)
    return image


def _read(path: Path) -> MedicalImage:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path)
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty")
    if is_nifti_path(path):
        return read_nifti(path)
    if is_mgh_path(path):
        return read_mgh(path)
    if is_raster_path(path):
        return read_raster(path)
    if is_dicom_path(path):
        return read_dicom_file(path)
    raise ImageReadError(f"{path}: unsupported file type; napari-medit reads {SUPPORTED}")


PARTIAL_PREFIX = ".partial-"  # a file being written; renamed to its name once complete


def write_image(path: str | os.PathLike, image: MedicalImage) -> Path:
    """Write ``image`` as NIfTI (.nii/.nii.gz, any dimension), FreeSurfer MGH (.mgz/.mgh, 3D/4D)
    or PNG (2D only). Written beside the target and renamed: a failure halfway (disk full, permission
    denied, killed) leaves neither a partial file nor a damaged previous one."""
    path = Path(path).expanduser()
    if is_nifti_path(path):
        writer = write_nifti
    elif is_mgh_path(path):
        writer = write_mgh
    elif path.suffix.lower() == ".png":
        writer = write_png
    else:
        raise ValueError(
            f"{path}: cannot write this file type; use .nii.gz (any image), .mgz (volumes) or .png (2D)"
        )
    with replacing(path) as temporary:  # the same ending: the writer picks its format by it
        writer(temporary, image)
    return path


@contextlib.contextmanager
def replacing(path: Path):
    """A temporary name beside ``path`` to write to; renamed to ``path`` when the block completes,
    removed when it fails, so ``path`` is either the old file, whole, or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(PARTIAL_PREFIX + path.name)
    try:
        yield temporary
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def can_read(path: str | os.PathLike) -> bool:
    """Cheap check used by napari's reader hook: never raises, never decodes pixels."""
    try:
        path = Path(path)
        if path.is_dir():
            return _folder_has_dicom(path)
        return path.is_file() and (
            is_nifti_path(path) or is_mgh_path(path) or is_raster_path(path) or is_dicom_path(path)
        )
    except OSError:
        return False


def _folder_has_dicom(folder: Path, probe: int = 50) -> bool:
    from .dicom import SUFFIXES, has_dicom_preamble

    for count, (root, _, files) in enumerate(os.walk(folder)):
        for name in files[:probe]:
            candidate = Path(root) / name
            if candidate.suffix.lower() in SUFFIXES or has_dicom_preamble(candidate):
                return True
        if count > probe:
            break
    return False

"""Reading and writing medical images with their spatial metadata.

``read_image`` and ``write_image`` pick the format from the path; they work
without napari and raise ``ImageReadError`` with a message naming the file
and the problem.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .dicom import read_dicom_series
from .formats import BY_KIND, SUPPORTED, OutputFormat, format_of, writer_for
from .image import NEUROLOGICAL_AXIAL, RADIOLOGICAL_AXIAL, ImageReadError, MedicalImage
from .limits import check_geometry

__all__ = [
    "NEUROLOGICAL_AXIAL",
    "RADIOLOGICAL_AXIAL",
    "SUPPORTED",
    "ImageReadError",
    "MedicalImage",
    "read_image",
    "write_image",
]


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
    entry = format_of(path)
    if entry is not None:
        return entry.read(path)
    raise ImageReadError(f"{path}: unsupported file type; napari-medit reads {SUPPORTED}")


PARTIAL_PREFIX = ".partial-"  # a file being written; renamed to its name once complete


def write_image(path: str | os.PathLike, image: MedicalImage) -> Path:
    """Write ``image`` in the format its name ends in (``formats.FORMATS``: NIfTI for any image,
    FreeSurfer MGH for volumes, PNG for 2D images). Written beside the target and renamed: a failure
    halfway (disk full, permission denied, killed) leaves neither a partial file nor a damaged
    previous one."""
    path = Path(path).expanduser()
    entry = writer_for(path)
    with replacing(path) as temporary:  # the same ending: the writer picks its variant by it
        entry.write(temporary, image)
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
        return path.is_file() and format_of(path) is not None
    except OSError:
        return False


def _folder_has_dicom(folder: Path, probe: int = 50) -> bool:
    dicom = BY_KIND[OutputFormat.dicom]
    for count, (root, _, files) in enumerate(os.walk(folder)):
        for name in files[:probe]:
            candidate = Path(root) / name
            if dicom.named_in(candidate) or dicom.sniff(candidate):
                return True
        if count > probe:
            break
    return False

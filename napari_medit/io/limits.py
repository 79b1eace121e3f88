"""What a file may ask of the machine, checked before a pixel is decoded, and what geometry it must have.

A damaged or hostile file must end in one ``ImageReadError``, never in an out-of-memory kill of
napari (which loses every unsaved mask) nor in an affine that napari and the slicing code trip
over far from the cause.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .image import ImageReadError

MEMORY_LIMIT_ENVIRON = "NAPARI_MEDIT_MAX_IMAGE_BYTES"  # bytes, or with a unit: 512M, 8G
MAX_DIMENSION = 2**20  # voxels along one axis: a larger count is a damaged header, whatever the memory
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def memory_limit() -> tuple[int, str]:
    """The most bytes an image may declare, and what sets it: $NAPARI_MEDIT_MAX_IMAGE_BYTES, else
    the memory available now."""
    text = os.environ.get(MEMORY_LIMIT_ENVIRON, "").strip().upper().removesuffix("B")
    if text:
        try:
            value = float(text[:-1]) * _UNITS[text[-1]] if text[-1] in _UNITS else float(text)
        except ValueError:
            raise ImageReadError(
                f"{MEMORY_LIMIT_ENVIRON}={os.environ[MEMORY_LIMIT_ENVIRON]!r} is not a size; "
                "give bytes or a size such as 8G"
            ) from None
        return int(value), f"the limit {MEMORY_LIMIT_ENVIRON} sets"
    import psutil

    return int(psutil.virtual_memory().available), "the memory available"


def check_declared(path: Path, shape, itemsize: float, what: str = "its pixel data") -> None:
    """Refuse, before allocating it, an image whose header declares an impossible shape or more bytes
    than the memory limit allows; ``itemsize`` is the bytes per voxel once read (after scaling)."""
    dims = [int(n) for n in shape]
    if any(n <= 0 for n in dims) or any(n > MAX_DIMENSION for n in dims):
        raise ImageReadError(
            f"{path}: the header declares a shape of {tuple(dims)}, which no image has "
            "(the file is damaged): export the image again from its source"
        )
    needed = int(np.prod(dims, dtype=np.float64) * itemsize)
    limit, source = memory_limit()
    if needed > limit:
        raise ImageReadError(
            f"{path}: {what} ({' x '.join(map(str, dims))}) would take {_size(needed)}, more "
            f"than {source} ({_size(limit)}); free memory, or set {MEMORY_LIMIT_ENVIRON} "
            "to a larger size if the file is what you expect"
        )


def affine_problem(affine) -> str | None:
    """What makes ``affine`` unusable as a voxel-to-world map (None: it is usable)."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return "its affine is not finite"
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not (spacing > 0).all():
        return "its voxel sizes include zero"
    # Singular up to float precision: a row or column that is (almost) a combination of the others.
    if abs(np.linalg.det(affine[:3, :3] / spacing)) < 1e-6:
        return "its affine is singular (the voxel axes are not independent)"
    return None


def check_geometry(path: Path, image) -> None:
    """Refuse an image whose array or affine cannot be used."""
    if image.array.ndim < 2 or 0 in image.array.shape:
        raise ImageReadError(f"{path}: an image of shape {image.array.shape} holds no pixels to edit")
    problem = affine_problem(image.affine)
    if problem:
        raise ImageReadError(
            f"{path}: {problem}; the file's geometry is damaged: export the image again from "
            "its source (scanner, PACS or the tool that wrote it)"
        )


def _size(nbytes: float) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = 2 ** (10 * (" KMGT".index(unit[0])))
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"

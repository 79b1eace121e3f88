"""PNG and JPEG radiographs through Pillow: grayscale, bit depth preserved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .image import ImageReadError, MedicalImage
from .limits import check_declared

# A radiograph file carries no geometry: rows run head -> feet and columns towards the
# patient's left (PA view), 1 mm pixels. As RAS+ columns: (row, col, normal, origin).
RADIOGRAPH_AFFINE = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def read_raster(path: Path) -> MedicalImage:
    try:
        with Image.open(path) as picture:
            # bytes per pixel as stored, and as the uint16/float array it becomes
            check_declared(path, picture.size[::-1], len(picture.getbands()) * 4 + 4)
            picture.load()
            mode = picture.mode
            array = _gray(picture)
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: no such file") from exc
    except Image.DecompressionBombError as exc:  # Pillow refuses these at open, before our own check
        raise ImageReadError(
            f"{path}: declares more pixels than Pillow will decode ({exc}); a damaged or "
            "hostile file: re-save it at its real size if you trust where it came from"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable PNG/JPEG image ({exc})") from exc
    metadata = {
        "format": "png" if path.suffix.lower() == ".png" else "jpeg",
        "path": str(path),
        "modality": None,
        "source_mode": mode,
        "spacing_note": "PNG/JPEG files carry no pixel spacing: 1 mm assumed",
    }
    return MedicalImage(array, RADIOGRAPH_AFFINE.copy(), metadata)


def _gray(picture: Image.Image) -> np.ndarray:
    """8-bit stays uint8, 16-bit stays uint16; colour becomes luma (ITU-R BT.601)."""
    if picture.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(picture).astype(np.uint16)
    if picture.mode == "I":  # 16-bit PNGs often open as 32-bit integer mode
        array = np.asarray(picture)
        return array.astype(np.uint16) if array.min() >= 0 and array.max() <= 65535 else array
    if picture.mode in ("L", "1"):
        return np.asarray(picture.convert("L"))
    if picture.mode == "F":
        return np.asarray(picture)
    return np.asarray(picture.convert("RGB").convert("L"))


def write_png(path: Path, image: MedicalImage) -> Path:
    array = image.array
    if array.ndim != 2:
        raise ValueError(
            f"PNG holds one 2D image; this one has shape {array.shape}: save it as NIfTI (.nii.gz)"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer) and (
        not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array))
    ):
        raise ValueError(
            f"PNG stores whole numbers and this image holds {array.dtype} values: "
            "save it as NIfTI (.nii.gz) to keep them exactly"
        )
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(
            f"PNG stores values 0-65535 and this image spans {low}-{high}: save it as NIfTI (.nii.gz)"
        )
    # 16-bit sources stay 16-bit; everything else that fits (masks, labels) is written as 8-bit.
    out = array.astype(np.uint16 if array.dtype == np.uint16 or high > 255 else np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(path)
    return path

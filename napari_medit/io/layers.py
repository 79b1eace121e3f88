"""MedicalImage <-> napari layer data, in plain numpy (napari is not imported here).

Volumes are shown reoriented to axial slices (radiological view by default)
with their physical spacing as the layer scale. Only exact flips and
transposes are used, and the way back to the file's own voxel order and
exact affine travels in the layer metadata, so writers reproduce the source
and masks painted on the layer land on the right voxels.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..catalogue import MASK_ROLES, role_of
from .image import RADIOLOGICAL_AXIAL, MedicalImage

_MASK_NAME = re.compile(r"mask|seg|label|roi", re.IGNORECASE)


def guess_layer_type(image: MedicalImage, name: str) -> str:
    """Integer files named like masks open as Labels, everything else as Image."""
    integral = image.array.dtype == bool or np.issubdtype(image.array.dtype, np.integer)
    return "labels" if integral and _MASK_NAME.search(name) else "image"


def to_layer_data(
    image: MedicalImage, name: str, layer_type: str | None = None, axcodes=RADIOLOGICAL_AXIAL
) -> tuple[np.ndarray, dict[str, Any], str]:
    layer_type = layer_type or guess_layer_type(image, name)
    shown = image.reoriented(axcodes)
    data = shown.array
    metadata = {**shown.metadata, "affine": shown.affine}
    extra_axes = data.ndim - shown.spatial_ndim
    if extra_axes:
        # napari slices the leading axes: put time/channels first so the plane stays spatial.
        data = np.moveaxis(data, tuple(range(shown.spatial_ndim, data.ndim)), tuple(range(extra_axes)))
        metadata["_extra_axes_first"] = extra_axes
    if not data.dtype.isnative:  # big-endian files: napari 0.8's thumbnails fail on swapped bytes
        data = data.astype(data.dtype.newbyteorder("="))
    scale, translate = _scale_translate(shown.affine, shown.spatial_ndim)
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": (1.0,) * extra_axes + scale,
        "translate": (0.0,) * extra_axes + translate,
        "metadata": metadata,
    }
    if layer_type == "image":
        kwargs.update(colormap="gray", contrast_limits=display_range(image), rgb=False)
    else:
        data = data.astype(np.uint8) if data.dtype == bool else data
        role = role_of(name)  # a mask named like a role (lesion_mask.nii.gz) is coloured like it
        if role is not None:
            color = MASK_ROLES[role].color
            kwargs["colormap"] = {0: "transparent", 1: color, None: color}
    return data, kwargs, layer_type


def from_layer(
    data: np.ndarray, metadata: dict[str, Any] | None, scale=None, translate=None, file_order: bool = True
) -> MedicalImage:
    """The MedicalImage behind a layer: in the file's voxel order when it came from one (for
    writers), or with ``file_order=False`` in the layer's own order (for editing what is shown)."""
    metadata = dict(metadata or {})
    affine = metadata.pop("affine", None)
    data = np.asarray(data)
    extra_axes = metadata.pop("_extra_axes_first", 0)
    if extra_axes:
        data = np.moveaxis(data, tuple(range(extra_axes)), tuple(range(data.ndim - extra_axes, data.ndim)))
    if affine is None:
        affine = _affine_from_scale(data.ndim, scale, translate)
    image = MedicalImage(data, np.asarray(affine), metadata)
    return image.in_source_orientation() if file_order else image


# Contrast presets the Data widget offers, with what each shows.
CONTRAST_PRESETS = {
    "as read": "the file's DICOM window when it has one, else 0.5-99.5 % of the values",
    "MRI tissue": "1-99 % of the non-zero voxels: the background does not dilute the tissue's contrast",
    "full range": "minimum to maximum, every value distinguishable (X-rays, masks of intensities)",
}


def display_range(image: MedicalImage, preset: str = "as read") -> tuple[float, float]:
    """Contrast limits for ``image`` under one of CONTRAST_PRESETS."""
    if preset not in CONTRAST_PRESETS:
        raise ValueError(f"unknown contrast preset {preset!r}; choose one of {', '.join(CONTRAST_PRESETS)}")
    window = image.metadata.get("dicom", {})
    center, width = window.get("WindowCenter"), window.get("WindowWidth")
    if (
        preset == "as read"
        and center is not None
        and width is not None
        and not image.metadata.get("inverted_monochrome1")
    ):
        center = center[0] if isinstance(center, list) else center
        width = width[0] if isinstance(width, list) else width
        if float(width) > 0:
            return float(center) - float(width) / 2, float(center) + float(width) / 2
    values = image.array[np.isfinite(image.array)] if image.array.dtype.kind == "f" else image.array.ravel()
    if values.size == 0:
        return 0.0, 1.0
    if preset == "full range":
        low, high = float(values.min()), float(values.max())
        return (low, high) if high > low else (low, low + 1.0)
    # percentiles of a regular sample: fast on big volumes
    values = values[:: max(1, values.size // 1_000_000)]
    if preset == "MRI tissue" and values.any():
        values = values[values != 0]
    low, high = (float(v) for v in np.percentile(values, (1, 99) if preset == "MRI tissue" else (0.5, 99.5)))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low, low + 1.0)


def _scale_translate(affine: np.ndarray, ndim: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-axis spacing, and the origin projected on each axis direction.

    Exact for axis-aligned images; for oblique ones the slices are shown
    unrotated at their true spacing (napari cannot slice obliquely), which
    keeps every layer derived from the same image aligned.
    """
    columns = affine[:3, :ndim]
    spacing = np.linalg.norm(columns, axis=0)
    directions = columns / spacing
    origin = directions.T @ affine[:3, 3]
    return tuple(float(s) for s in spacing), tuple(float(o) for o in origin)


def _affine_from_scale(ndim: int, scale, translate) -> np.ndarray:
    spatial = min(ndim, 3)
    affine = np.eye(4)
    if scale is not None:
        affine[range(spatial), range(spatial)] = np.asarray(scale, dtype=float)[-spatial:]
    if translate is not None:
        affine[:spatial, 3] = np.asarray(translate, dtype=float)[-spatial:]
    return affine

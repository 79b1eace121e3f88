"""The image type every part of napari-medit passes around.

A ``MedicalImage`` is an array plus the 4x4 affine that maps a voxel index,
in the array's own axis order, to RAS+ millimetres (NIfTI's world frame).
2D images use the same 4x4 form: index (i, j) is treated as (i, j, 0), so
a radiograph keeps its pixel spacing and orientation like a volume does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

# Axial slices in radiological convention: the slider walks inferior -> superior,
# anterior is at the top of the screen and the patient's right on the screen's left.
RADIOLOGICAL_AXIAL = ("S", "P", "L")
NEUROLOGICAL_AXIAL = ("S", "P", "R")


class ImageReadError(Exception):
    """A file or folder that cannot be read as a medical image; the message names both."""


@dataclass
class MedicalImage:
    array: np.ndarray
    affine: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {self.affine.shape}")
        if self.array.ndim < 2:
            raise ValueError(f"an image needs at least 2 dimensions, got shape {self.array.shape}")

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def spatial_ndim(self) -> int:
        return min(self.array.ndim, 3)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial array axis."""
        norms = np.linalg.norm(self.affine[:3, : self.spatial_ndim], axis=0)
        return tuple(float(n) for n in norms)

    @property
    def orientation(self) -> str:
        """Axis codes such as 'RAS' or 'SPL': where each array axis points (2 letters for 2D)."""
        return "".join(nib.aff2axcodes(self.affine))[: self.spatial_ndim]

    @property
    def is_oblique(self) -> bool:
        directions = self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)
        return not np.allclose(np.abs(directions).max(axis=0), 1.0, atol=1e-4)

    def with_array(self, array: np.ndarray, **metadata: Any) -> MedicalImage:
        """Same geometry, new voxels (e.g. an edit result or a mask for this image)."""
        if array.shape[: self.spatial_ndim] != self.array.shape[: self.spatial_ndim]:
            raise ValueError(
                f"array of shape {array.shape} does not fit an image of shape {self.array.shape}"
            )
        return replace(self, array=array, metadata={**self.metadata, **metadata})

    def reoriented(self, axcodes: tuple[str, str, str] = RADIOLOGICAL_AXIAL) -> MedicalImage:
        """Transpose/flip a volume so its axes point along ``axcodes``, for display.

        Only exact index permutations and flips are applied (no resampling); the
        way back is recorded so that ``in_source_orientation`` restores the file's
        own voxel order and its affine bit for bit. 2D images are returned as is.
        """
        if self.spatial_ndim < 3:
            return self
        source = self.in_source_orientation()
        start = io_orientation(source.affine)
        to_display = ornt_transform(start, axcodes2ornt(axcodes))
        spatial_shape = source.array.shape[:3]
        array = _apply_spatial_ornt(source.array, to_display)
        affine = source.affine @ inv_ornt_aff(to_display, spatial_shape)
        metadata = {
            **source.metadata,
            "display_orientation": "".join(axcodes),
            "_to_source": ornt_transform(axcodes2ornt(axcodes), start),
            "_source_affine": source.affine,
        }
        return MedicalImage(array, affine, metadata)

    def in_source_orientation(self) -> MedicalImage:
        """Undo ``reoriented``: the file's voxel order with its exact affine."""
        if "_to_source" not in self.metadata:
            return self
        metadata = dict(self.metadata)
        to_source = metadata.pop("_to_source")
        affine = metadata.pop("_source_affine")
        metadata.pop("display_orientation", None)
        return MedicalImage(_apply_spatial_ornt(self.array, to_source), affine, metadata)

    def summary(self) -> dict[str, Any]:
        """What a reader saw, in JSON-friendly form (for `napari-medit info`)."""
        meta = {k: v for k, v in self.metadata.items() if not k.startswith("_") and _is_plain(v)}
        return {
            "shape": list(self.array.shape),
            "dtype": str(self.array.dtype),
            "spacing": [round(s, 6) for s in self.spacing],
            "orientation": self.orientation,
            "oblique": self.is_oblique,
            "affine": self.affine.round(6).tolist(),
            "value_range": _value_range(self.array),
            **meta,
        }


# Anatomical planes, each as the orientation its slices are given to a model in: the slice axis
# first, then rows and columns as a radiologist looks at them (radiological left-right).
PLANES = {
    "axial": RADIOLOGICAL_AXIAL,  # feet -> head; anterior up, patient's right on the left
    "coronal": ("A", "I", "L"),  # back -> front; head up, patient's right on the left
    "sagittal": ("L", "I", "P"),  # right -> left; head up, anterior on the left
}


def plane_axis(affine: np.ndarray, plane: str) -> tuple[int, bool]:
    """The voxel axis ``plane`` slices an image with ``affine`` along, and whether the plane counts
    its slices from the other end (its slice i is then voxel index n - 1 - i)."""
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; choose one of {', '.join(PLANES)}")
    _, back = plane_transforms(affine, PLANES[plane])
    return int(back[0, 0]), bool(back[0, 1] < 0)


def plane_transforms(affine: np.ndarray, axcodes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    """nibabel orientation transforms (there, back) between an affine's voxel axes and ``axcodes``."""
    start, target = io_orientation(affine), axcodes2ornt(axcodes)
    return ornt_transform(start, target), ornt_transform(target, start)


def apply_orientation(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Flip/transpose the first three axes of ``array`` as ``ornt`` says (exact, no resampling)."""
    return _apply_spatial_ornt(array, ornt)


def _apply_spatial_ornt(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """nibabel's apply_orientation on the first three axes only (extra axes ride along)."""
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, ornt))


def _value_range(array: np.ndarray) -> list[float] | None:
    if array.size == 0 or not np.issubdtype(array.dtype, np.number):
        return None
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    if finite.size == 0:
        return None
    return [float(finite.min()), float(finite.max())]


def _is_plain(value: Any) -> bool:
    """True for values json.dumps can write as they are."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False

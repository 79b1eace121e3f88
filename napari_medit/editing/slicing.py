"""From a 2D image or a volume to batches on the model's grid, and back.

- Slices along one axis are independent 2D edits; only the chosen ones are touched.
- Intensities: one robust window per volume (0.5-99.5 percentiles) maps the
  source to [0, 1] and the model's range, and back to the source's scale and dtype.
- Geometry: each slice is padded to a square (aspect kept) and resized to the
  model's resolution; results are resized back and cropped. The caller then
  composites at native resolution, so what must not change stays bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ROBUST_PERCENTILES = (0.5, 99.5)


def slices_to_edit(num_slices: int, region: np.ndarray | None, slice_range: tuple[int, int] | None) -> list[int]:
    """The slices (along axis 0 of ``region``) to edit: a given [start, stop) range, or those the region touches."""
    if slice_range is not None:
        start, stop = slice_range
        if not 0 <= start < stop <= num_slices:
            raise ValueError(f"slice range {start}:{stop} is outside the {num_slices} slices along this axis")
        return list(range(start, stop))
    if region is None:
        return list(range(num_slices))
    return [int(i) for i in np.flatnonzero(region.reshape(num_slices, -1).any(axis=1))]


@dataclass(frozen=True)
class IntensityWindow:
    """A linear map taking the source's robust range to [0, 1].

    Outliers are not clipped on the way in (they map a little outside [0, 1],
    and come back unchanged); results are clipped to the source's full range.
    """

    low: float
    high: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, volume: np.ndarray) -> IntensityWindow:
        values = volume.ravel()[:: max(1, volume.size // 2_000_000)]
        low, high = (float(v) for v in np.percentile(values, ROBUST_PERCENTILES))
        if high <= low:
            low, high = float(volume.min()), float(volume.max())
        if high <= low:
            raise ValueError("the image is constant: there is nothing for a model to edit")
        return cls(low, high, float(volume.min()), float(volume.max()))

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        return (values.astype(np.float64) - self.low) / (self.high - self.low)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        return np.clip(unit.astype(np.float64) * (self.high - self.low) + self.low, self.minimum, self.maximum)


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the source's dtype: integers rounded and clipped to their range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    if dtype == bool:
        return values > 0.5
    return values.astype(dtype)


@dataclass(frozen=True)
class Grid:
    """How (H, W) slices map to the model's square grid."""

    height: int
    width: int
    resolution: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding that centres the slice in a square."""
        dh, dw = self.side - self.height, self.side - self.width
        return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2

    def to_model(self, slices: np.ndarray, soft: bool = False) -> torch.Tensor:
        """(B, H, W) -> (B, 1, R, R) float32. Images are resampled with antialiasing, masks
        (``soft``) by area so that their model-grid values are coverage fractions."""
        x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
        x = F.pad(x, self.pads)  # zero = background after normalisation, or 'not in the mask'
        if self.side == self.resolution:
            return x
        if soft:
            return F.interpolate(x, size=(self.resolution,) * 2, mode="area" if self.side > self.resolution else "bilinear")
        return F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", antialias=True, align_corners=False)

    def from_model(self, x: torch.Tensor) -> np.ndarray:
        """(B, 1, R, R) -> (B, H, W) float64."""
        if self.side != self.resolution:
            x = F.interpolate(x.float(), size=(self.side,) * 2, mode="bilinear", antialias=True, align_corners=False)
        left, _, top, _ = self.pads
        return x[:, 0, top : top + self.height, left : left + self.width].double().cpu().numpy()


def to_latent_grid(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A mask on the image grid averaged onto a latent grid ``factor`` times coarser."""
    return mask if factor == 1 else F.avg_pool2d(mask, factor)

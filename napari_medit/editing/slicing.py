"""From a 2D image or a volume to batches on the model's grid, and back.

- Slices along one axis are independent 2D edits; only the chosen ones are touched.
- Intensities: one linear map per volume takes the source to [0, 1] and the
  model's range, and back to the source's scale and dtype: a robust window
  (0.5-99.5 percentiles), min-max, or 8-bit levels, as the model declares
  (napari_medit.preprocessing).
- Geometry: each slice is padded to a square (aspect kept) or centre-cropped to
  one, as the model declares, and resized to the model's resolution; results are
  resized back. The caller composites at native resolution, so what must not
  change (and what a crop cut away) stays bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..preprocessing import Fit, Intensity

ROBUST_PERCENTILES = (0.5, 99.5)


def slices_to_edit(
    num_slices: int, region: np.ndarray | None, slice_range: tuple[int, int] | None
) -> list[int]:
    """The slices (along axis 0 of ``region``) to edit: a given [start, stop) range, or those the region
    touches."""
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
    """A linear map taking [low, high] of the source to [0, 1], optionally quantised to 8 bits.

    With the robust window, outliers are not clipped on the way in (they map a
    little outside [0, 1], and come back unchanged); results are clipped to the
    source's full range.
    """

    low: float
    high: float
    minimum: float
    maximum: float
    kind: Intensity = Intensity.window
    levels: int | None = None  # quantise to this many steps on the way in (an 8-bit PNG: 255)

    @classmethod
    def of(cls, volume: np.ndarray, kind: Intensity = Intensity.window) -> IntensityWindow:
        minimum, maximum = float(volume.min()), float(volume.max())
        levels = None
        if kind is Intensity.eight_bit and volume.dtype == np.uint8:
            low, high = 0.0, 255.0  # already 8-bit: value / 255, exactly as the PNGs were read
        elif kind in (Intensity.min_max, Intensity.eight_bit):
            low, high = minimum, maximum
            levels = 255 if kind is Intensity.eight_bit else None
        else:
            values = volume.ravel()[:: max(1, volume.size // 2_000_000)]
            low, high = (float(v) for v in np.percentile(values, ROBUST_PERCENTILES))
            if high <= low:
                low, high = minimum, maximum
        if maximum <= minimum:
            raise ValueError("the image is constant: there is nothing for a model to edit")
        return cls(low, high, minimum, maximum, kind, levels)

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        unit = (values.astype(np.float64) - self.low) / (self.high - self.low)
        return unit if self.levels is None else np.round(unit * self.levels) / self.levels

    def describe(self) -> dict:
        return {"intensity": self.kind.value, "low": self.low, "high": self.high}

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        return np.clip(
            unit.astype(np.float64) * (self.high - self.low) + self.low, self.minimum, self.maximum
        )


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the source's dtype: integers rounded and clipped to their range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return values > 0.5
    return values.astype(dtype)


@dataclass(frozen=True)
class Grid:
    """How (H, W) slices map to the model's square grid: padded (``Fit.pad``) or centre-cropped."""

    height: int
    width: int
    resolution: int
    fit: Fit = Fit.pad

    @property
    def side(self) -> int:
        if self.fit is Fit.center_crop:
            return min(self.height, self.width)
        return max(self.height, self.width)

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding that centres the slice in a square."""
        dh, dw = max(self.side - self.height, 0), max(self.side - self.width, 0)
        return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2

    @property
    def crop(self) -> tuple[slice, slice]:
        """The rows and columns of the slice the model sees (all of them when padding)."""
        if self.fit is Fit.pad:
            return slice(0, self.height), slice(0, self.width)
        top, left = (self.height - self.side) // 2, (self.width - self.side) // 2
        return slice(top, top + self.side), slice(left, left + self.side)

    @property
    def covers_all(self) -> bool:
        return self.fit is Fit.pad or self.height == self.width

    def covered(self) -> np.ndarray:
        """(H, W) bool: the pixels the model sees; outside them a result keeps the source."""
        seen = np.zeros((self.height, self.width), dtype=bool)
        seen[self.crop] = True
        return seen

    def describe(self) -> dict:
        rows, cols = self.crop
        return {
            "fit": self.fit.value,
            "resolution": self.resolution,
            "region": [rows.start, cols.start, self.side, self.side],
        }  # top, left, height, width

    def to_model(self, slices: np.ndarray, soft: bool = False) -> torch.Tensor:
        """(B, H, W) -> (B, 1, R, R) float32. Images are resampled with antialiasing, masks
        (``soft``) by area so that their model-grid values are coverage fractions."""
        rows, cols = self.crop
        x = torch.from_numpy(np.ascontiguousarray(slices[:, rows, cols], dtype=np.float32))[:, None]
        x = F.pad(x, self.pads)  # zero = background after normalisation, or 'not in the mask'
        if self.side == self.resolution:
            return x
        if soft:
            return F.interpolate(
                x, size=(self.resolution,) * 2, mode="area" if self.side > self.resolution else "bilinear"
            )
        return F.interpolate(
            x, size=(self.resolution,) * 2, mode="bilinear", antialias=True, align_corners=False
        )

    def from_model(self, x: torch.Tensor) -> np.ndarray:
        """(B, 1, R, R) -> (B, H, W) float64; NaN where the model does not see the slice (a crop)."""
        if self.side != self.resolution:
            x = F.interpolate(
                x.float(), size=(self.side,) * 2, mode="bilinear", antialias=True, align_corners=False
            )
        left, _, top, _ = self.pads
        seen = x[:, 0, top : top + min(self.side, self.height), left : left + min(self.side, self.width)]
        out = np.full((x.shape[0], self.height, self.width), np.nan)
        out[(slice(None), *self.crop)] = seen.double().cpu().numpy()
        return out


def to_latent_grid(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A mask on the image grid averaged onto a latent grid ``factor`` times coarser."""
    return mask if factor == 1 else F.avg_pool2d(mask, factor)


def binarised(mask: torch.Tensor) -> torch.Tensor:
    """A cell is in the mask when at least half of it is: the (mask > 0) mask resized to the
    model's grid and thresholded at 0.5, as diffusers' DiffEdit ``preprocess_mask`` (which
    RadEdit's pipeline uses) binarises the masks it is given."""
    return (mask >= 0.5).to(mask.dtype)

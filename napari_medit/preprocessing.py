"""How a model wants its slices: fitted to its square grid, and intensities mapped to its range.

Stated per model (medit.json's ``preprocessing``; a default per preset for published models)
because the references differ, and a model fed otherwise than it was trained gives worse edits:

- RadEdit (seed 000, App. D): resize, centre crop to 512, min-max to [-1, 1].
- PIE and other Stable Diffusion fine-tunes: resize, centre crop, 8-bit /255 to [-1, 1].
- MedEdit: 128 px slices from 8-bit PNGs (/255, [0, 1]), padded to a centred square.
- napari-medit's demo models were trained on padded slices with a robust window.

``IntensityWindow`` and ``Grid`` apply these settings to a volume's slices (the engine, training
and the stress tests' models all feed their networks through them).

Torch-free: the catalogue, the CLI and the widgets read it without importing torch (``Grid``
imports it when it resamples).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

ROBUST_PERCENTILES = (0.5, 99.5)  # the robust window's percentiles


class Fit(str, enum.Enum):
    """How a slice of any shape becomes the model's square."""

    pad = "pad"  # centred in a square of its longer side: nothing is cut
    center_crop = "center-crop"  # the centred square of its shorter side; pixels outside are never edited


class Intensity(str, enum.Enum):
    """How source values map to [0, 1] (then linearly to the model's value range)."""

    window = "window"  # robust 0.5-99.5 % percentiles of the volume -> [0, 1], outliers not clipped
    min_max = "min-max"  # the volume's minimum -> 0, maximum -> 1
    eight_bit = "8-bit"  # as an 8-bit PNG: uint8 values / 255; other sources min-max to 0..255, rounded


@dataclass(frozen=True)
class Preprocessing:
    fit: Fit = Fit.pad
    intensity: Intensity = Intensity.window

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Preprocessing:
        """From medit.json's ``preprocessing`` object (absent: the demo models' pad + window);
        ValueError names a bad entry and the values allowed."""
        config = dict(config or {})
        unknown = sorted(set(config) - {"fit", "intensity"})
        if unknown:
            raise ValueError(f"preprocessing has no entry {unknown[0]!r}; it takes 'fit' and 'intensity'")
        values = {}
        for name, kind in (("fit", Fit), ("intensity", Intensity)):
            if name in config:
                try:
                    values[name] = kind(config[name])
                except ValueError:
                    allowed = ", ".join(repr(m.value) for m in kind)
                    raise ValueError(
                        f"preprocessing {name} must be one of {allowed}, got {config[name]!r}"
                    ) from None
        return cls(**values)

    def as_config(self) -> dict[str, str]:
        return {"fit": self.fit.value, "intensity": self.intensity.value}


DEMO = Preprocessing(Fit.pad, Intensity.window)  # what napari-medit's own training uses
RADEDIT = Preprocessing(Fit.center_crop, Intensity.min_max)  # RadEdit, App. D
STABLE_DIFFUSION = Preprocessing(Fit.center_crop, Intensity.eight_bit)  # PIE's run_pie.py, SD fine-tunes
MEDEDIT = Preprocessing(Fit.pad, Intensity.eight_bit)  # MedEdit's PNG slices


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
        # top, left, height, width
        return {
            "fit": self.fit.value,
            "resolution": self.resolution,
            "region": [rows.start, cols.start, self.side, self.side],
        }

    def to_model(self, slices: np.ndarray, soft: bool = False) -> torch.Tensor:
        """(B, H, W) -> (B, 1, R, R) float32. Images are resampled with antialiasing, masks
        (``soft``) by area so that their model-grid values are coverage fractions."""
        import torch
        import torch.nn.functional as F

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
        import torch.nn.functional as F

        if self.side != self.resolution:
            x = F.interpolate(
                x.float(), size=(self.side,) * 2, mode="bilinear", antialias=True, align_corners=False
            )
        left, _, top, _ = self.pads
        seen = x[:, 0, top : top + min(self.side, self.height), left : left + min(self.side, self.width)]
        out = np.full((x.shape[0], self.height, self.width), np.nan)
        out[(slice(None), *self.crop)] = seen.double().cpu().numpy()
        return out

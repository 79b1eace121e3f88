"""How a model wants its slices: fitted to its square grid, and intensities mapped to its range.

Stated per model (medit.json's ``preprocessing``; a default per preset for published models)
because the references differ, and a model fed otherwise than it was trained gives worse edits:

- RadEdit (seed 000, App. D): resize, centre crop to 512, min-max to [-1, 1].
- PIE and other Stable Diffusion fine-tunes: resize, centre crop, 8-bit /255 to [-1, 1].
- MedEdit: 128 px slices from 8-bit PNGs (/255, [0, 1]), padded to a centred square.
- napari-medit's demo models were trained on padded slices with a robust window.

Torch-free: the catalogue, the CLI and the widgets read it without importing torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


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

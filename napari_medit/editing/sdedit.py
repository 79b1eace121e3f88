"""SDEdit (Meng et al., ICLR 2022): noise the image part-way, then denoise.

    x = x_0 noised to t_0 = strength * T
    for t = t_0..1: x = DDPM step (optionally: outside the mask, the original noised to t - 1)

MedEdit's paper runs it as a baseline with an encoding ratio of 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .control import NoiseSource, Progress, parameter
from .ddpm import strength_steps
from .denoiser import Denoiser

ETA = 1.0  # SDEdit's reverse SDE, discretised as DDPM


@dataclass(frozen=True)
class SDEditParams:
    strength: float = parameter(0.1, "encoding ratio t0: 0.1 in MedEdit's SDEdit baseline")
    steps: int = parameter(1000, "DDPM steps: the baseline's full 1000; fewer gives a strided DDPM")

    def validate(self) -> None:
        strength_steps(self.steps, self.strength)


def sdedit(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    params: SDEditParams,
    noise: NoiseSource,
    progress: Progress,
    conditions: torch.Tensor | None = None,
) -> torch.Tensor:
    schedule = denoiser.schedule
    steps = schedule.final_steps(params.steps, params.strength)
    progress.start(len(steps))
    x = schedule.add_noise(x0, noise.like(x0, "start"), steps[0][0])
    for t, t_prev in steps:
        eps = denoiser(x, t, None, conditions)
        x0_estimate = schedule.predict_x0(x, eps, t)
        x = schedule.step(x, eps, t, t_prev, ETA, noise.like(x, "reverse"))
        if mask is not None:
            x = mask * x + (1 - mask) * schedule.add_noise(x0, noise.like(x, "known"), t_prev)
        progress.step(x0_estimate)
    return x

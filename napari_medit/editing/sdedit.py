"""SDEdit (Meng et al., ICLR 2022): noise the image part-way, then denoise.

    x = x_0 noised to t_0 = strength * T
    for t = t_0..1: x = DDPM step (optionally: outside the mask, the original noised to t - 1)

MedEdit's paper runs it as a baseline with an encoding ratio of 0.1.
"""

from __future__ import annotations

import torch

from ..catalogue import SDEditParams
from .control import Edited, EditInputs, NoiseSource, Progress
from .ddpm import DDPM_ETA
from .denoiser import Denoiser


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
        x = schedule.step(x, eps, t, t_prev, DDPM_ETA, noise.like(x, "reverse"))
        if mask is not None:
            x = mask * x + (1 - mask) * schedule.add_noise(x0, noise.like(x, "known"), t_prev)
        progress.step(x0_estimate)
    return x


def run(inputs: EditInputs) -> Edited:
    """The catalogue's entry point: masks by role, on the model's grid."""
    return Edited([inputs.call(sdedit, mask=inputs.masks.get("edit_mask"))])

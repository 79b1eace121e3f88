"""PIE: progressive image editing (Liang et al., 2023; official code IrohXu/PIE).

    z_0 = the original;  z = z_0
    for n = 1..N:                                     # N progressive steps
        x = z noised to t_start = gamma * T           # masked img2img with strength gamma
        for t = t_start..1 (DDIM, eta 0, guidance w):
            x = DDIM step of x with eps_u + w (eps_c - eps_u)
            x = M * x + (1 - M) * (z_0 noised to t - 1)   # outside the ROI, the original
        z = ((x - z_0) 0.01 + z_0)(1 - M) + ((x - z_0) 0.75 + z_0) M
        keep z as step n of the progression

The reference pipeline re-noises the original to the step it just left (t
rather than t - 1); here the known region matches the sample's noise level.
"""

from __future__ import annotations

import torch

from ..catalogue import PIEParams
from .control import NoiseSource, Progress
from .denoiser import Denoiser

OUTSIDE_ROI_KEEP, INSIDE_ROI_KEEP = 0.01, 0.75  # the end-of-step blend of PIE's code


def pie(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    roi_mask: torch.Tensor,
    params: PIEParams,
    noise: NoiseSource,
    progress: Progress,
    conditions: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    schedule = denoiser.schedule
    steps = schedule.final_steps(params.steps, params.strength)
    progress.start(params.iterations * len(steps))
    text, null = denoiser.embed([params.prompt, ""], x0.shape[0])
    z, progression = x0, []
    for _ in range(params.iterations):
        start_noise = noise.like(x0, "img2img")
        x = schedule.add_noise(z, start_noise, steps[0][0])
        for t, t_prev in steps:
            eps, _ = denoiser.guided(x, t, text, null, params.guidance, conditions)
            x0_estimate = schedule.predict_x0(x, eps, t)
            step_noise = noise.like(x, "ddim") if params.eta > 0 else None
            x = schedule.step(x, eps, t, t_prev, params.eta, step_noise)
            x = roi_mask * x + (1 - roi_mask) * schedule.add_noise(x0, start_noise, t_prev)
            progress.step(x0_estimate)
        z = ((x - x0) * OUTSIDE_ROI_KEEP + x0) * (1 - roi_mask) + ((x - x0) * INSIDE_ROI_KEEP + x0) * roi_mask
        progression.append(z)
    return progression


def run(denoiser, x0, masks, params, noise, progress, conditions):
    """The catalogue's entry point: masks by role, on the model's grid."""
    return pie(denoiser, x0, roi_mask=masks["roi_mask"], params=params, noise=noise, progress=progress,
               conditions=conditions)

"""DiffEdit-style masked editing (Couairon et al., ICLR 2023) with a given mask.

    x_inv[t] = DDIM inversion of x_0 with the inversion prompt, up to t_enc = strength * T
    x = x_inv[t_enc]
    for t = t_enc..1:
        x = DDIM step with eps_u + w (eps_c - eps_u)
        x = M * x + (1 - M) * x_inv[t - 1]          # outside the mask, the inverted latent

The mask is the user's (DiffEdit's own mask estimation from prompt
differences is not used: users here paint masks), binarised on the model's
grid by default as DiffEdit's thresholded masks are. Differences from diffusers'
StableDiffusionDiffEditPipeline, on purpose: the inversion is unguided unless
``inversion_guidance`` says otherwise (its invert() guides at 7.5), and the
outside is pasted from x_inv at the level of the sample just produced (the
pipeline pastes the one a step noisier, and its last step lands on x_inv at the
first timestep rather than on x_0).
"""

from __future__ import annotations

import torch

from ..catalogue import DiffEditParams
from .control import Edited, EditInputs, NoiseSource, Progress
from .ddpm import FINAL
from .denoiser import Denoiser


def diffedit(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    edit_mask: torch.Tensor,
    params: DiffEditParams,
    noise: NoiseSource,
    progress: Progress,
    conditions: torch.Tensor | None = None,
) -> torch.Tensor:
    schedule = denoiser.schedule
    steps = schedule.final_steps(params.steps, params.strength)
    progress.start(2 * len(steps))
    c_inv, c_edit, null = denoiser.embed([params.inversion_prompt, params.prompt, ""], x0.shape[0])

    # DDIM inversion: walk the deterministic sampler backwards, eps taken at the level reached.
    inverted = {FINAL: x0}
    x = x0
    for t, t_prev in reversed(steps):
        if params.inversion_guidance == 1:
            eps = denoiser(x, t, c_inv, conditions)
        else:
            eps, _ = denoiser.guided(x, t, c_inv, null, params.inversion_guidance, conditions)
        x = schedule.step_mean(x, eps, t_prev, t, eta=0.0)  # Eq. 12 run from t_prev up to t
        inverted[t] = x
        progress.step(schedule.predict_x0(x, eps, t))

    x = inverted[steps[0][0]]
    for t, t_prev in steps:
        eps, _ = denoiser.guided(x, t, c_edit, null, params.guidance, conditions)
        x0_estimate = schedule.predict_x0(x, eps, t)
        x = schedule.step(x, eps, t, t_prev, 0.0, None)
        x = edit_mask * x + (1 - edit_mask) * inverted[t_prev]
        progress.step(x0_estimate)
    return x


def run(inputs: EditInputs) -> Edited:
    """The catalogue's entry point: masks by role, on the model's grid."""
    return Edited([inputs.call(diffedit, edit_mask=inputs.masks["edit_mask"])])

"""MedEdit (Ben Alaya et al., 2024; official code Malekba98/MedEdit).

A conditional DDPM sees [x_t, pathology mask, brain mask] and inpaints, in
RePaint fashion, the region where the counterfactual may differ:

    inpaint = dilate(pathology, 25 x 25 at 128 px) AND brain
    x_T = the original noised to T
    for t = T..1:
        x_unknown = mu_t(x_t, eps(x_t, t | pathology, brain)) + sigma_t z
        x_known   = the original freshly noised to t - 1
        x_{t-1}   = inpaint * x_unknown + (1 - inpaint) * x_known

The inpainting mask is made by the method catalogue's mask hook (napari_medit.masks).
The dilation lets tissue around the lesion deform (mass effect); the network
is conditioned on the undilated mask. The published configuration runs all
1000 steps with no resampling; strided schedules and resampling are options.
Resampling repeats each step r times, as MedEdit's code does (resample_steps),
not RePaint's jumps of j steps.

Differs from MedEdit's code on purpose: the known region is noised to t - 1,
the level of the sample it joins (MedEdit's code noises it to t), and the step
back up between repeats is q(x_t | x_t-1) (its code uses beta_(t-1)).
"""

from __future__ import annotations

import torch

from ..catalogue import MedEditParams, RePaintStart
from .control import Edited, EditInputs, NoiseSource, Progress
from .denoiser import Denoiser
from .repaint import repaint_loop, repeat_schedule


def mededit(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    inpaint_mask: torch.Tensor,
    params: MedEditParams,
    noise: NoiseSource,
    progress: Progress,
    conditions: torch.Tensor,
) -> torch.Tensor:
    """``conditions``: the model's mask channels, the pathology and brain masks in the order it was
    trained with (``condition_names``); ``inpaint_mask`` the region regenerated."""
    timesteps = denoiser.schedule.timesteps(params.steps)
    return repaint_loop(
        denoiser,
        x0,
        known=1 - inpaint_mask,
        timesteps=timesteps,
        visits=repeat_schedule(len(timesteps), params.jump_n_sample),
        noise=noise,
        progress=progress,
        conditions=conditions,
        start=RePaintStart.noised_input,
    )


def run(inputs: EditInputs) -> Edited:
    """The catalogue's entry point; ``inpaint_mask`` comes from the catalogue's mask hook."""
    return Edited([inputs.call(mededit, inpaint_mask=inputs.masks["inpaint_mask"])])

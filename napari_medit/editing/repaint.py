"""RePaint (Lugmayr et al., CVPR 2022), Algorithm 1, and the naive RePaint baseline.

    x_T ~ N(0, I)
    for t = T..1, with jumps back up the chain (resampling):
        x_known   = sqrt(a_{t-1}) x_0 + sqrt(1 - a_{t-1}) n       # the known image, freshly noised
        x_unknown = mu_t(x_t, eps) + sigma_t z                    # the model's DDPM step
        x_{t-1}   = m * x_known + (1 - m) * x_unknown             # m = 1 where the image is known
        (on a jump: x_t ~ q(x_t | x_{t-1}) for jump_length steps, jump_n_sample - 1 times)

The loop here serves MedEdit too (its model sees mask channels, its mask is
dilated, it starts from the noised input, and its resampling repeats each step
instead of jumping j steps back). The naive baseline in MedEdit's paper is
MedEdit's loop on the undilated pathology mask: the ``mededit-paper`` preset.
"""

from __future__ import annotations

import torch

from ..catalogue import RePaintParams, RePaintStart
from .control import Edited, EditInputs, NoiseSource, Progress
from .ddpm import DDPM_ETA, FINAL
from .denoiser import Denoiser


def jump_schedule(steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """RePaint's time indices 0..steps-1 visited in order, going back up at each jump point
    (the schedule of RePaint's reference code, also diffusers' RePaintScheduler)."""
    jumps = dict.fromkeys(range(0, steps - jump_length, jump_length), jump_n_sample - 1)
    t, visits = steps, []
    while t >= 1:
        t -= 1
        visits.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                visits.append(t)
    return visits


def repeat_schedule(steps: int, repeats: int) -> list[int]:
    """MedEdit's resampling in the same notation: every step but the last is run ``repeats``
    times, going one step back up (q(x_t | x_t-1)) between repeats."""
    visits = []
    for t in range(steps - 1, -1, -1):
        visits.append(t)
        for _ in range(repeats - 1 if t > 0 else 0):
            visits += [t + 1, t]
    return visits


def repaint_loop(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    known: torch.Tensor,
    timesteps: list[int],
    visits: list[int],
    noise: NoiseSource,
    progress: Progress,
    conditions: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    start: RePaintStart = RePaintStart.noise,
) -> torch.Tensor:
    """Inpaint where ``known`` is 0, over ``timesteps`` (descending) in the order ``visits``
    gives (``jump_schedule`` or ``repeat_schedule`` over their indices)."""
    schedule = denoiser.schedule
    # index i of the visit schedule -> timesteps[-1 - i]
    at = {i: timesteps[len(timesteps) - 1 - i] for i in range(len(timesteps))}
    at[-1] = FINAL
    progress.start(sum(1 for a, b in zip([len(timesteps), *visits], visits, strict=False) if b < a))

    first = at[visits[0]]
    x = noise.like(x0, "start")
    if start is RePaintStart.noised_input:
        x = schedule.add_noise(x0, x, first)
    previous = len(timesteps)  # the jump schedule starts one index above its first visit
    for index in visits:
        if index < previous:  # a denoising step from timestep at[index] to at[index - 1]
            t, t_prev = at[index], at[index - 1]
            eps = denoiser(x, t, text, conditions)
            x0_estimate = schedule.predict_x0(x, eps, t)
            unknown = schedule.step(x, eps, t, t_prev, DDPM_ETA, noise.like(x, "reverse"))
            x_known = schedule.add_noise(x0, noise.like(x, "known"), t_prev)
            x = known * x_known + (1 - known) * unknown
            progress.step(x0_estimate)
        else:  # a jump back up: one forward step q(x_{t+1} | x_t)
            x = schedule.forward_step(x, at[previous - 1], at[index - 1], noise.like(x, "jump"))
        previous = index
    return x


def repaint(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    inpaint_mask: torch.Tensor,
    params: RePaintParams,
    noise: NoiseSource,
    progress: Progress,
    conditions: torch.Tensor | None = None,
) -> torch.Tensor:
    """The naive RePaint baseline: inpaint exactly the given mask."""
    timesteps = denoiser.schedule.timesteps(params.steps)
    return repaint_loop(
        denoiser,
        x0,
        known=1 - inpaint_mask,
        timesteps=timesteps,
        visits=jump_schedule(len(timesteps), params.jump_length, params.jump_n_sample),
        noise=noise,
        progress=progress,
        conditions=conditions,
        start=params.start,
    )


def run(inputs: EditInputs) -> Edited:
    """The catalogue's entry point: the naive baseline inpaints the undilated pathology mask."""
    return Edited([inputs.call(repaint, inpaint_mask=inputs.masks["pathology_mask"])])

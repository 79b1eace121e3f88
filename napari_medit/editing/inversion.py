"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024; RadEdit Algorithm 1).

Every x_hat_t is drawn independently from q(x_t | x_0); the noise maps z_t
are whatever makes the DDPM reverse step land exactly on x_hat_{t-1}:

    x_hat_{t-1} = mu_t(x_hat_t, eps(x_hat_t, t, c)) + sigma_t z_t

We store the residual sigma_t z_t = x_hat_{t-1} - mu_t rather than z_t: on the
last step sigma is 0, where the reference code's division gives NaN (RadEdit's
pipeline) or is replaced by z = 0 (the edit-friendly inversion code). The
residual is finite and lands the reverse pass exactly on x_0, the property the
paper states; a choice, since with z = 0 the last step would not be exact.

With a text prompt and ``guidance`` != 1, eps is the classifier-free guided
estimate, as the references invert with an inversion prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .control import NoiseSource, Progress
from .ddpm import DDPM_ETA, FINAL
from .denoiser import Denoiser


@dataclass
class Inversion:
    x_hat: dict[int, torch.Tensor]  # timestep -> x_hat_t (FINAL -> x_0)
    residual: dict[int, torch.Tensor]  # timestep t -> sigma_t z_t for the step t -> t_prev


def invert(
    denoiser: Denoiser,
    x0: torch.Tensor,
    steps: list[tuple[int, int]],
    *,
    text: torch.Tensor | None,
    conditions: torch.Tensor | None,
    noise: NoiseSource,
    progress: Progress,
    null: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> Inversion:
    """Invert ``x0`` over the (t, t_prev) pairs in ``steps`` (descending); with ``null`` (the
    empty prompt's embedding) and ``guidance`` != 1, under classifier-free guidance."""
    schedule = denoiser.schedule
    x_hat = {FINAL: x0}
    for t, _ in steps:
        x_hat[t] = schedule.add_noise(x0, noise.like(x0, "inversion"), t)
    residual = {}
    for t, t_prev in steps:
        if null is None or guidance == 1:
            eps = denoiser(x_hat[t], t, text, conditions)
        else:
            eps, _ = denoiser.guided(x_hat[t], t, text, null, guidance, conditions)
        mean = schedule.step_mean(x_hat[t], eps, t, t_prev, DDPM_ETA)
        residual[t] = x_hat[t_prev] - mean
        progress.step(schedule.predict_x0(x_hat[t], eps, t))
    return Inversion(x_hat, residual)

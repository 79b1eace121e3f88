"""Through-plane regularisation of slice-wise edits, in the spirit of DiffusionMBIR (Chung et al., CVPR 2023).

A 2D model denoises every slice on its own. DiffusionMBIR makes the stack agree across
slices: at every step, after the model predicts the clean image, it takes an optimisation
step that penalises differences along the slice axis. Here the penalty is quadratic,
R(x0) = 1/2 sum_i |x0_{i+1} - x0_i|^2 over neighbouring edited slices. DiffusionMBIR uses
total variation, but a quadratic penalty keeps the step linear, so it commutes with
classifier-free guidance (see below). One gradient step on R, of size lambda / 2, taken
only inside the edited region m:

    x0_hat  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)             # the model's clean estimate
    x0_hat' = x0_hat + lambda m (mean of its neighbours - x0_hat)
    eps'    = (x_t - sqrt(a_t) x0_hat') / sqrt(1 - a_t)          # the noise that predicts it

The sampler then runs unchanged on eps', so every method (DDPM, DDIM, RePaint,
inversions) is regularised the same way. Neighbours are the slices one index away that
are also edited; at the ends of an edited run a slice is its own missing neighbour.
lambda = 0 installs nothing and leaves results bit-identical. lambda = 1 replaces x0_hat
inside the region with its neighbours' mean. The correction is affine in eps with weights
summing to one, so applying it to each guided pass equals applying it to the guided
combination, and the masked combination in RadEdit is regularised the same way.

All the slices being edited must be in one batch. The network itself still runs in
micro-batches of ``max_batch`` items.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from .denoiser import Denoiser


class ThroughPlaneSmoothing(Denoiser):
    """``denoiser`` with its clean-image prediction smoothed along the slice axis inside ``region``."""

    def __init__(
        self,
        denoiser: Denoiser,
        *,
        slices: Sequence[int],
        region: torch.Tensor,
        strength: float,
        max_batch: int,
    ):
        if not 0 < strength <= 1:
            raise ValueError(f"through-plane smoothing must be in (0, 1], got {strength}")
        self.inner, self.strength, self.max_batch = denoiser, strength, max(1, max_batch)
        self.region = region  # (slices, 1, h, w) on the diffusion grid, 0..1
        position = {s: i for i, s in enumerate(slices)}
        self.before = [position.get(s - 1, i) for i, s in enumerate(slices)]
        self.after = [position.get(s + 1, i) for i, s in enumerate(slices)]
        for name in (
            "name",
            "resolution",
            "image_channels",
            "latent_channels",
            "latent_factor",
            "value_range",
            "condition_names",
            "schedule",
            "image_conditioned",
        ):
            setattr(self, name, getattr(denoiser, name))

    # What the methods ask of a model, answered by the wrapped one.
    text_conditioned = property(lambda self: self.inner.text_conditioned)
    device = property(lambda self: self.inner.device)
    weights_hash = property(lambda self: self.inner.weights_hash)
    evaluations = property(lambda self: self.inner.evaluations)
    feature_cache = property(lambda self: self.inner.feature_cache)

    def encode_text(self, prompts):
        return self.inner.encode_text(prompts)

    def encode(self, images, noise=None):
        return self.inner.encode(images, noise=noise)

    def decode(self, latents):
        return self.inner.decode(latents)

    def encode_prior(self, images):
        return self.inner.encode_prior(images)

    def __call__(self, x_t, t: float, text=None, conditions=None) -> torch.Tensor:
        cache, pieces = self.inner.feature_cache, []
        for i in range(0, x_t.shape[0], self.max_batch):
            # Each piece of the batch is a stream of its own for a feature cache: at one timestep the
            # pieces follow each other, and each must reuse its own features at the next.
            with contextlib.nullcontext() if cache is None else cache.stream(i):
                pieces.append(
                    self.inner(
                        x_t[i : i + self.max_batch],
                        t,
                        None if text is None else text[i : i + self.max_batch],
                        None if conditions is None else conditions[i : i + self.max_batch],
                    )
                )
        return self.regularised(x_t, torch.cat(pieces), t)

    def regularised(self, x_t: torch.Tensor, eps: torch.Tensor, t: float) -> torch.Tensor:
        """eps' whose clean estimate is one smoothing step along the slices (the module docstring)."""
        schedule, count = self.schedule, len(self.before)
        a_t = schedule.alpha_bar(t)
        # A guided call stacks copies of the slices (unconditional, conditional): smooth each copy.
        x0 = schedule.predict_x0(x_t, eps, t).reshape(-1, count, *x_t.shape[1:])
        neighbours = (x0[:, self.before] + x0[:, self.after]) / 2
        x0 = x0 + self.strength * self.region.to(x0.dtype) * (neighbours - x0)
        return (x_t - a_t**0.5 * x0.reshape(x_t.shape)) / (1 - a_t) ** 0.5

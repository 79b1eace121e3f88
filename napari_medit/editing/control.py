"""Noise, progress and cancellation: what a running edit shares with its caller."""

from __future__ import annotations

import inspect
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..results import EditCancelled

if TYPE_CHECKING:
    from .denoiser import Denoiser


class NoiseSource:
    """Standard normal noise for a batch, each item from its own seeded generators.

    Each image (slice) owns its noise: one seed (a generator of its own), or a mixture
    ``((seed, weight), ...)`` of seeded fields that neighbouring slices may share
    (``slice_noise.slice_mixtures``). So a slice gets the same noise whatever the batch
    size, and the same seed gives bit-identical output. Noise is drawn on the CPU and
    then moved, so a seed means the same thing on every device.
    """

    def __init__(
        self, seeds: Sequence[int | Sequence[tuple[int, float]]], device: torch.device | str = "cpu"
    ):
        self.mixtures = [((int(s), 1.0),) if isinstance(s, (int, np.integer)) else tuple(s) for s in seeds]
        fields = dict.fromkeys(seed for mixture in self.mixtures for seed, _ in mixture)
        self.generators = {seed: torch.Generator().manual_seed(int(seed)) for seed in fields}
        self.device = torch.device(device)

    def draw(self, shape: Sequence[int], kind: str = "") -> torch.Tensor:
        """A (B, *shape) tensor; ``kind`` names the draw (tests use it to script the noise)."""
        fields = {seed: torch.randn(tuple(shape), generator=g) for seed, g in self.generators.items()}
        if all(len(m) == 1 and m[0][1] == 1.0 for m in self.mixtures):
            return torch.stack([fields[m[0][0]] for m in self.mixtures]).to(self.device)
        # Mixed in float64: the weights' squares sum to one, and so does each element's variance.
        mixed = [sum(weight * fields[seed].double() for seed, weight in m) for m in self.mixtures]
        return torch.stack(mixed).to(self.device)

    def like(self, x: torch.Tensor, kind: str = "") -> torch.Tensor:
        return self.draw(x.shape[1:], kind).to(x.dtype)

    def step_generators(self, kind: str) -> list[torch.Generator]:
        """One generator per item, seeded from its own (leading) seed and ``kind``: for diffusers
        schedulers that draw their step noise themselves (``step(..., generator=[...])``)."""
        return [
            torch.Generator().manual_seed(zlib.crc32(f"{m[0][0]}:{kind}".encode())) for m in self.mixtures
        ]


def scheduler_step_options(scheduler, noise: NoiseSource) -> dict:
    """A stochastic scheduler (Euler ancestral, DDPM) draws its own step noise: hand it one
    generator per slice, seeded from the slice's seed, so results do not depend on batching."""
    if "generator" in inspect.signature(scheduler.step).parameters:
        return {"generator": noise.step_generators("scheduler-step")}
    return {}


@dataclass
class StepInfo:
    step: int  # steps done so far, over the whole run
    total: int
    x0_estimate: torch.Tensor  # the current estimate of the clean batch, in diffusion space
    chunk: int  # which batch of slices this is


class Progress:
    """Counts denoising steps across batches, reports them, honours cancel requests."""

    def __init__(
        self,
        callback: Callable[[StepInfo], None] | None = None,
        cancel: threading.Event | None = None,
        chunks: int = 1,
    ):
        self.callback, self.cancel, self.chunks = callback, cancel, chunks
        self.chunk, self.done, self.per_chunk = 0, 0, 0

    def start(self, steps_per_chunk: int) -> None:
        """Called by a method before its loop; the total is known from the first batch on."""
        self.per_chunk = steps_per_chunk
        self.check()

    def next_chunk(self) -> None:
        self.chunk += 1

    @property
    def total(self) -> int:
        return self.per_chunk * self.chunks

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise EditCancelled("edit cancelled")

    def step(self, x0_estimate: torch.Tensor) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(StepInfo(self.done, self.total, x0_estimate.detach(), self.chunk))
        self.check()


@dataclass
class EditInputs:
    """One batch of slices as every method's runner receives it (``Runner``), on the model's grid."""

    denoiser: Denoiser
    x0: torch.Tensor  # (B, C, h, w) the slices in diffusion space (a VAE model's latents)
    image: torch.Tensor  # (B, 1, R, R) the slices as images on the model's grid, in its value range
    masks: dict[str, torch.Tensor]  # by role, with the catalogue's derived ones, on the diffusion grid
    params: Any  # the method's parameters (catalogue), every default resolved
    noise: NoiseSource
    progress: Progress
    conditions: torch.Tensor | None  # the mask channels the model reads beside x_t, if any

    def call(self, method: Callable[..., torch.Tensor], **arguments) -> torch.Tensor:
        """``method(denoiser, x0, params=, noise=, progress=, conditions=, **arguments)``: the
        signature every method's function shares, with what only it takes (its masks) added."""
        shared = dict(
            params=self.params, noise=self.noise, progress=self.progress, conditions=self.conditions
        )
        return method(self.denoiser, self.x0, **shared, **arguments)


@dataclass
class Edited:
    """What every method's runner returns: ``versions`` of the batch in diffusion space (one; PIE:
    one per progression step), the ``maps`` it computed by name (catalogue.MAP_ROLES; each
    (B, 1, R, R) on the model's image grid, in [0, 1]), and the scheduler it sampled with when
    that is not the model's own (its provenance settings)."""

    versions: list[torch.Tensor]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    scheduler: dict | None = None


Runner = Callable[[EditInputs], Edited]  # a method's entry point, named by its catalogue entry

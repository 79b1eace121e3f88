"""Test doubles for the editing engine, for napari-medit's tests and for anyone checking a pipeline
built on it: a denoiser whose every answer is known in closed form.

Not imported by napari-medit itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .editing.ddpm import NoiseSchedule
from .editing.denoiser import Denoiser
from .preprocessing import Preprocessing


class GaussianDenoiser(Denoiser):
    """The exact MMSE denoiser for data x0 ~ N(mean_c, std^2 I).

    With x_t = sqrt(a) x0 + sqrt(1 - a) eps, E[eps | x_t] =
    sqrt(1 - a) (x_t - sqrt(a) mean_c) / (a std^2 + 1 - a). The mean depends
    on the prompt (a table, '' being unconditional) and, when mask channels
    are given, shifts by ``condition_shift`` inside the first mask, so every
    method can be checked against closed-form answers.
    """

    def __init__(
        self,
        scheduler,
        *,
        resolution: int = 16,
        means: dict[str, float] | None = None,
        std: float = 0.5,
        condition_names: Sequence[str] = (),
        condition_shift: float = 0.0,
        value_range: tuple[float, float] = (-1.0, 1.0),
        preprocessing: Preprocessing = Preprocessing(),
    ):
        self.schedule = NoiseSchedule.from_scheduler(scheduler)
        self.preprocessing = preprocessing
        self.resolution, self.std, self.value_range = resolution, std, value_range
        self.means = dict(means or {"": 0.0})
        self.prompts = list(self.means)
        self.condition_names = tuple(condition_names)
        self.condition_shift = condition_shift
        self.name = "gaussian-analytic"

    @property
    def text_conditioned(self) -> bool:
        return len(self.prompts) > 1

    def encode_text(self, prompts):
        if not self.text_conditioned:
            return None
        unknown = [p for p in prompts if p not in self.means]
        if unknown:
            raise ValueError(f"the analytic denoiser knows no prompt {unknown[0]!r}")
        # One-hot "embeddings": the conditional mean is a lookup in the table.
        return torch.nn.functional.one_hot(
            torch.tensor([self.prompts.index(p) for p in prompts]), len(self.prompts)
        ).to(torch.float32)[:, None, :]

    def mean(self, text, conditions, like: torch.Tensor) -> torch.Tensor:
        table = torch.tensor([self.means[p] for p in self.prompts], dtype=like.dtype)
        unconditional = self.means.get("", 0.0)
        mean = torch.zeros_like(like) + (
            unconditional if text is None else (text[:, 0, :].to(like.dtype) @ table)[:, None, None, None]
        )
        if conditions is not None and self.condition_shift:
            mean = mean + self.condition_shift * conditions[:, :1]
        return mean

    def model_output(self, x_t, t, text, conditions):
        a = self.schedule.alpha_bar(t)
        mean = self.mean(text, conditions, x_t)
        return (1 - a) ** 0.5 * (x_t - a**0.5 * mean) / (a * self.std**2 + 1 - a)

"""The DDPM/DDIM step maths every editing method shares.

Notation follows DDIM (Song et al. 2021, Eq. 12) as used by RadEdit's
Algorithm 1: with a_t = alpha_bar_t,

    x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z
    sigma  = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)

eta = 1 on consecutive steps is the DDPM ancestral sampler, eta = 0 is DDIM.
The noise schedule itself (alpha_bar, the inference timesteps) always comes
from a diffusers or MONAI scheduler object; nothing here is tabulated by hand.
What else the scheduler's config says is honoured or refused: ``clip_sample``
clips x0_hat at every step as diffusers' and MONAI's schedulers do. DDPM-family
schedulers (diffusers' and MONAI's DDPM, RePaint) step to the posterior mean of
the clipped x0_hat, which is the step above with eps re-derived from it; DDIM
keeps the network's eps in the direction term (diffusers' default
``use_clipped_model_output=False``). ``thresholding`` and learned variances are
refused, naming the setting.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..catalogue import strength_steps

FINAL = -1  # the timestep after the last one: x_prev is the clean sample there
# eta = 1, the DDPM ancestral sampler: SDEdit's reverse SDE discretised, RePaint's sampling, and
# the sampler the edit-friendly inversion (RadEdit, MedEdit's baselines) is defined on.
DDPM_ETA = 1.0


@dataclass(frozen=True)
class NoiseSchedule:
    alphas_cumprod: torch.Tensor  # float64, one per training timestep
    final_alpha_cumprod: float  # alpha_bar "after" t = 0 (1.0 when the scheduler sets alpha to one)
    prediction_type: str = "epsilon"
    scheduler: object = None  # the diffusers/MONAI scheduler it came from (timestep spacing lives there)
    clip_range: tuple[float, float] | None = None  # x0_hat is clipped to this at every step (clip_sample)
    posterior_mean: bool = False  # DDPM-family: with a clip, eps is re-derived from the clipped x0_hat

    @classmethod
    def from_scheduler(cls, scheduler) -> NoiseSchedule:
        """Read a diffusers (DDPM/DDIM/PNDM/...) or MONAI scheduler; ValueError names a setting
        the engine cannot honour."""
        settings_from = getattr(scheduler, "config", None) or scheduler  # MONAI keeps them as attributes

        def setting(name):
            return getattr(settings_from, name, None)

        prediction = setting("prediction_type") or "epsilon"
        if setting("thresholding"):
            raise ValueError(
                f"{type(scheduler).__name__} has thresholding=True (dynamic thresholding), which "
                "napari-medit does not implement; set it to false in the scheduler config"
            )
        if str(setting("variance_type") or "fixed_small").startswith("learned"):
            raise ValueError(
                f"{type(scheduler).__name__} has variance_type={setting('variance_type')!r}: models "
                "that learn their variance are not supported; use a fixed-variance model"
            )
        final = getattr(scheduler, "final_alpha_cumprod", None)
        alphas = scheduler.alphas_cumprod.detach().to(torch.float64).cpu()
        # DDPM schedulers step to the clean sample after t = 0 (alpha_bar = 1); DDIM ones say.
        return cls(
            alphas,
            1.0 if final is None else float(final),
            str(prediction),
            scheduler,
            _clip_range(scheduler, setting),
            type(scheduler).__name__.startswith(("DDPM", "RePaint")),
        )

    def own(self) -> NoiseSchedule:
        """This schedule with a scheduler object of its own, for one edit: ``set_timesteps`` rewrites
        the scheduler's timesteps and multistep schedulers (PNDM, DPM-Solver) keep a history on it."""
        if self.scheduler is None:
            return self
        from_config = getattr(type(self.scheduler), "from_config", None)
        fresh = from_config(self.scheduler.config) if from_config else copy.deepcopy(self.scheduler)  # MONAI
        return dataclasses.replace(self, scheduler=fresh)

    def settings(self) -> dict[str, Any]:
        """What the engine takes from the scheduler, for provenance."""
        return {
            **scheduler_settings(self.scheduler),
            "prediction_type": self.prediction_type,
            "clip_sample": None if self.clip_range is None else list(self.clip_range),
            "final_alpha_cumprod": self.final_alpha_cumprod,
        }

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_bar(self, t: float) -> float:
        """alpha_bar at a training timestep; at a fractional one (Euler-type schedulers query the
        model between them), from sigma = sqrt((1 - a) / a) interpolated linearly in t, as they do."""
        if t == FINAL:
            return self.final_alpha_cumprod
        t = float(t)
        below = int(t)
        if t == below:
            return float(self.alphas_cumprod[below])
        sigmas = (
            (1 - self.alphas_cumprod[below : below + 2]) / self.alphas_cumprod[below : below + 2]
        ) ** 0.5
        sigma = float(sigmas[0] + (t - below) * (sigmas[1] - sigmas[0]))
        return 1 / (1 + sigma**2)

    def timesteps(self, num_steps: int) -> list[int]:
        """Descending inference timesteps as the scheduler spaces them (its own config decides),
        each once: PNDM's PLMS list repeats one timestep for its own warm-up, which a sampler
        here would spend a model call on without moving (t -> t is no step)."""
        if not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be between 1 and {self.num_train_timesteps}, got {num_steps}")
        scheduler = self.scheduler
        if scheduler is None:
            stride = self.num_train_timesteps // num_steps
            return list(range((num_steps - 1) * stride, -1, -stride))
        scheduler.set_timesteps(num_steps)
        return list(dict.fromkeys(int(t) for t in scheduler.timesteps))

    def final_steps(self, num_steps: int, strength: float) -> list[tuple[int, int]]:
        """The last ``strength`` of a ``num_steps`` schedule: where img2img and SDEdit start."""
        return pairs(self.timesteps(num_steps))[-strength_steps(num_steps, strength) :]

    def sigma(self, t: int, t_prev: int, eta: float) -> float:
        if eta == 0:
            return 0.0
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        return eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5

    def to_epsilon(self, model_output: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The noise estimate, whatever the model was trained to predict."""
        if self.prediction_type == "epsilon":
            return model_output
        a_t = self.alpha_bar(t)
        if self.prediction_type == "v_prediction":
            return a_t**0.5 * model_output + (1 - a_t) ** 0.5 * x_t
        if self.prediction_type == "sample":
            return (x_t - a_t**0.5 * model_output) / (1 - a_t) ** 0.5
        raise ValueError(f"unsupported prediction type '{self.prediction_type}'")

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """x0_hat, clipped when the scheduler says so."""
        a_t = self.alpha_bar(t)
        x0 = (x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        return x0 if self.clip_range is None else x0.clamp(*self.clip_range)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """Sample q(x_t | x_0) with the given standard normal noise."""
        a_t = self.alpha_bar(t)
        return a_t**0.5 * x0 + (1 - a_t) ** 0.5 * noise

    def step_mean(
        self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, eta: float
    ) -> torch.Tensor:
        """mu_t(x_t, eps): x_prev without its noise term."""
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        sigma = self.sigma(t, t_prev, eta)
        direction = max(1 - a_prev - sigma**2, 0.0) ** 0.5
        x0 = self.predict_x0(x_t, eps, t)
        if self.clip_range is not None and self.posterior_mean:  # the noise the clipped x0_hat implies
            eps = (x_t - a_t**0.5 * x0) / (1 - a_t) ** 0.5
        return a_prev**0.5 * x0 + direction * eps

    def step(self, x_t, eps, t: int, t_prev: int, eta: float, noise: torch.Tensor | None) -> torch.Tensor:
        """x_prev = mu + sigma z (z ignored when sigma = 0)."""
        mean = self.step_mean(x_t, eps, t, t_prev, eta)
        sigma = self.sigma(t, t_prev, eta)
        return mean if sigma == 0 or noise is None else mean + sigma * noise

    def forward_step(self, x: torch.Tensor, t_from: int, t_to: int, noise: torch.Tensor) -> torch.Tensor:
        """q(x_to | x_from) for t_to > t_from: RePaint's jump back up the chain."""
        a_from, a_to = self.alpha_bar(t_from), self.alpha_bar(t_to)
        ratio = a_to / a_from
        return ratio**0.5 * x + (1 - ratio) ** 0.5 * noise


def scheduler_settings(scheduler) -> dict[str, Any]:
    """A scheduler's class and timestep spacing, for provenance."""
    config = getattr(scheduler, "config", {}) or {}
    spacing = {k: config.get(k) for k in ("timestep_spacing", "steps_offset") if config.get(k) is not None}
    return {"class": type(scheduler).__name__ if scheduler is not None else None, **spacing}


def _clip_range(scheduler, setting) -> tuple[float, float] | None:
    """diffusers: clip_sample with clip_sample_range r -> [-r, r]; MONAI: clip_sample with
    clip_sample_values [min, max] (defaults: True, [-1, 1]). Applied as written: in the model's units."""
    if not setting("clip_sample"):
        return None
    values = getattr(scheduler, "clip_sample_values", None)
    if values is not None:
        return float(values[0]), float(values[1])
    bound = float(setting("clip_sample_range") or 1.0)
    return -bound, bound


def pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """(t, t_prev) for each step of a descending timestep list, ending at FINAL."""
    return list(zip(timesteps, [*timesteps[1:], FINAL], strict=True))

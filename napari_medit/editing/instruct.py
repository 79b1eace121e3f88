"""Instruction editing: BiomedJourney (Gu et al., 2023), an InstructPix2Pix model (Brooks et al., CVPR 2023).

    # the VAE posterior mode, not scaled; the image itself in pixel space
    c_I = E(prior)
    z = N(0, I) * the scheduler's initial sigma
    for t in the model's scheduler timesteps:
        eps_TI, eps_I, eps_u = eps(z, c_I, c_T), eps(z, c_I, {}), eps(z, 0, {})
        eps = eps_u + s_T (eps_TI - eps_I) + s_I (eps_I - eps_u)
        z = scheduler step(eps, t, z)

The sampling loop is diffusers' ``StableDiffusionInstructPix2PixPipeline``: the model's own
scheduler (public IP2P checkpoints ship Euler ancestral, InstructX2X DDIM), ``scale_model_input``
on the noisy latent only, the image latent appended unscaled, one forward of the batch
[text + image, empty text + image, empty text + zero image]. Guidance is on when s_T > 1
and s_I >= 1, as in the pipeline; otherwise one conditional pass. ``strength`` (not in the
papers) starts from the prior noised part-way instead of pure noise, as img2img does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..catalogue import InstructParams
from .control import Edited, EditInputs, NoiseSource, Progress, scheduler_step_options
from .denoiser import Denoiser


def instruct(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    image: torch.Tensor,
    params: InstructParams,
    noise: NoiseSource,
    progress: Progress,
    conditions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Edit the prior ``image`` (the model's value range; ``x0`` is its diffusion-space encoding)
    as ``params.prompt`` says."""
    scheduler = model_scheduler(denoiser, "instruct")
    prior = denoiser.encode_prior(image).to(x0.dtype)
    scheduler.set_timesteps(params.steps)
    timesteps = list(scheduler.timesteps)
    if params.strength is None:
        z = noise.like(x0, "start") * scheduler.init_noise_sigma
    else:  # img2img's slice of the schedule (StableDiffusionImg2ImgPipeline.get_timesteps)
        timesteps = timesteps[params.steps - int(params.steps * params.strength) :]
        z = scheduler.add_noise(x0, noise.like(x0, "start"), timesteps[0].reshape(1))
    text, null = denoiser.embed([params.prompt, ""], x0.shape[0])
    progress.start(len(timesteps))

    def eps_of(z_scaled, t):
        return guided_eps(
            denoiser, z_scaled, t, text, null, prior, params.text_guidance, params.image_guidance, conditions
        )

    return sample(denoiser, scheduler, z, timesteps, eps_of, noise, progress, dtype=x0.dtype)


def sample(
    denoiser: Denoiser,
    scheduler,
    z: torch.Tensor,
    timesteps,
    eps_of: Callable[[torch.Tensor, Any], torch.Tensor],
    noise: NoiseSource,
    progress: Progress,
    *,
    dtype: torch.dtype,
    after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The pipeline's sampling loop over ``timesteps`` of ``scheduler``, from ``z``: ``eps_of(z_scaled,
    t)`` is the guided noise estimate, and ``after_step(i, z)`` may replace the sample step ``i`` made
    (InstructX2X pastes its known region back there). The scheduler's own draws come from ``noise``."""
    step_options = scheduler_step_options(scheduler, noise)
    for i, t in enumerate(timesteps):
        z_scaled = scheduler.scale_model_input(z, t)
        eps = eps_of(z_scaled, t)
        x0_estimate = denoiser.schedule.predict_x0(z_scaled, eps, float(t))
        z = scheduler.step(eps, t, z, **step_options).prev_sample.to(dtype)
        if after_step is not None:
            z = after_step(i, z)
        progress.step(x0_estimate)
    return z


def guided_eps(
    denoiser, z_scaled, t, text, null, prior, text_guidance: float, image_guidance: float, conditions=None
) -> torch.Tensor:
    """InstructPix2Pix's two-scale classifier-free guidance, one forward of the tripled batch."""
    t = t.item() if isinstance(t, torch.Tensor) else t
    if not (text_guidance > 1 and image_guidance >= 1):  # the pipeline's do_classifier_free_guidance
        return denoiser(z_scaled, t, text, _beside(prior, conditions))
    images = torch.cat([prior, prior, torch.zeros_like(prior)])
    masks = None if conditions is None else torch.cat([conditions] * 3)
    both = denoiser(torch.cat([z_scaled] * 3), t, torch.cat([text, null, null]), _beside(images, masks))
    eps_text_image, eps_image, eps_uncond = both.chunk(3)
    return (
        eps_uncond + text_guidance * (eps_text_image - eps_image) + image_guidance * (eps_image - eps_uncond)
    )


def _beside(prior, conditions):
    """What follows x_t on channels: the prior image, then any mask conditions."""
    return prior if conditions is None else torch.cat([prior, conditions.to(prior.dtype)], dim=1)


# What an instruction model's own scheduler must offer: the pipeline's loop calls each of these.
INSTRUCTION_SCHEDULER_NEEDS = ("set_timesteps", "scale_model_input", "step", "add_noise", "init_noise_sigma")


def model_scheduler(denoiser: Denoiser, method: str):
    """The model's own diffusers scheduler, which instruction models are sampled with; ValueError
    for one that cannot run the pipeline's loop (loaders refuse these models already)."""
    scheduler = denoiser.schedule.scheduler
    missing = [name for name in INSTRUCTION_SCHEDULER_NEEDS if not hasattr(scheduler, name)]
    if missing or denoiser.schedule.prediction_type != "epsilon":
        raise ValueError(
            f"{method} samples with the model's own scheduler, and {type(scheduler).__name__} "
            f"{'has no ' + missing[0] if missing else 'is not for an epsilon-prediction model'}: "
            "use a diffusers DDIM, DDPM, Euler or Euler ancestral scheduler"
        )
    return scheduler


def run(inputs: EditInputs) -> Edited:
    """The catalogue's entry point (the method takes no masks)."""
    return Edited([inputs.call(instruct, image=inputs.image)])

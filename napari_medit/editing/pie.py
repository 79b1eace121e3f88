"""PIE: progressive image editing (Liang et al., 2023; official code IrohXu/PIE).

    z_0 = the original;  image = the original
    for n = 1..N:                                        # N progressive steps
        z = encode(image) noised to the first of the last gamma * steps timesteps
        for i, t in those timesteps (guidance w):         # masked img2img with strength gamma
            if i > 0: z = M * z + (1 - M) * (z_0 noised to t)   # outside the ROI, the original
            z = scheduler step of z with eps_u + w (eps_c - eps_u)
        z = ((z - z_0) 0.01 + z_0)(1 - M) + ((z - z_0) 0.75 + z_0) M
        image = decode(z) as an 8-bit image               # step n of the progression

Two loops (``PIEParams.loop``):

- ``reference``, as run_pie.py and its pipeline run it: the model's own scheduler
  (sd-v1-4 ships PNDM, so the steps are PLMS) over the pipeline's slice of its
  timesteps; every iteration starts from the previous one's decoded, clamped
  8-bit image, re-encoded with a VAE *sample*; the original's latents are VAE
  samples too, the known region drawn with its own noise (one noise for all
  timesteps), the start with another, all drawn anew each iteration (each is a
  call of the pipeline). The known region joins at the level of the
  sample it replaces: the reference does this right.
- ``latent``, napari-medit's own for pixel-space models: DDIM (eta), the
  iterations chained in model space with no 8-bit round trip, and the known
  region re-noised after each step with the start noise.
"""

from __future__ import annotations

import torch

from ..catalogue import PIELoop, PIEParams
from .control import Edited, EditInputs, NoiseSource, Progress, scheduler_step_options
from .denoiser import Denoiser

OUTSIDE_ROI_KEEP, INSIDE_ROI_KEEP = 0.01, 0.75  # the end-of-step blend of PIE's code (beta_1, beta_2)
EIGHT_BIT = 255


def pie(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    roi_mask: torch.Tensor,
    params: PIEParams,
    noise: NoiseSource,
    progress: Progress,
    conditions: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """The N-step progression, in model space. ``image``: the source in the model's value range
    before encoding (the reference loop re-encodes images; default: ``x0`` for pixel-space models)."""
    loop = params.loop or (PIELoop.reference if denoiser.latent else PIELoop.latent)
    if loop is PIELoop.reference:
        return _reference_loop(
            denoiser, x0 if image is None else image, roi_mask, params, noise, progress, conditions
        )
    return _latent_loop(denoiser, x0, roi_mask, params, noise, progress, conditions)


def _blend(z, z0, roi_mask):
    return ((z - z0) * OUTSIDE_ROI_KEEP + z0) * (1 - roi_mask) + ((z - z0) * INSIDE_ROI_KEEP + z0) * roi_mask


def _latent_loop(denoiser, x0, roi_mask, params, noise, progress, conditions):
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
        z = _blend(x, x0, roi_mask)
        progression.append(z)
    return progression


def _reference_loop(denoiser, image, roi_mask, params, noise, progress, conditions):
    schedule = denoiser.schedule
    scheduler = schedule.scheduler
    if schedule.prediction_type != "epsilon":
        raise ValueError(
            f"PIE's reference loop steps the model's own {type(scheduler).__name__} with noise "
            f"predictions, and this model predicts {schedule.prediction_type}: use loop 'latent'"
        )
    scheduler.set_timesteps(params.steps)
    # The pipeline's get_timesteps: the last int(steps * strength) of `steps`, indexed into the
    # scheduler's own list (PNDM's has one more entry: it then runs one step more, from one step higher).
    first = params.steps - int(params.steps * params.strength)
    timesteps = scheduler.timesteps[first:].tolist()  # ints, or floats for Euler-type schedulers
    progress.start(params.iterations * len(timesteps))
    text, null = denoiser.embed([params.prompt, ""], image.shape[0])

    side = image.shape[-1] // denoiser.latent_factor
    shape = (denoiser.latent_channels, side, side)  # per image: NoiseSource draws one per slice

    def latents(pixels, kind):  # a VAE posterior sample, as the pipeline's prepare_latents draws
        return denoiser.encode(pixels, noise=noise.draw(shape, kind) if denoiser.latent else None)

    def noised(z, fresh, t):
        return scheduler.add_noise(z, fresh, torch.tensor([t]))

    # a stochastic scheduler's draws, seeded per slice
    step_options = scheduler_step_options(scheduler, noise)
    current, progression = image, []
    for _ in range(params.iterations):  # each one a call of the reference's pipeline: its draws are new
        z_original = latents(image, "vae-original")  # the end-of-iteration blend's reference
        z_known = latents(image, "vae-known")  # the known region, noised to each timestep with one noise
        known_noise = noise.draw(shape, "known")
        scheduler.set_timesteps(params.steps)  # a fresh multistep history (PNDM keeps one)
        x = noised(latents(current, "vae"), noise.draw(shape, "img2img"), timesteps[0])
        for i, t in enumerate(timesteps):
            if i > 0:
                x = roi_mask * x + (1 - roi_mask) * noised(z_known, known_noise, t)
            x_scaled = scheduler.scale_model_input(x, t)
            eps, _ = denoiser.guided(x_scaled, t, text, null, params.guidance, conditions)
            x0_estimate = schedule.predict_x0(x_scaled, eps, t)
            x = scheduler.step(eps, t, x, **step_options).prev_sample
            progress.step(x0_estimate)
        z = _blend(x, z_original, roi_mask)
        progression.append(z)
        current = _eight_bit(denoiser.decode(z), denoiser.value_range)
    return progression


def _eight_bit(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """The decoded image as the pipeline hands it on: clamped, 8-bit, back in the model's range."""
    low, high = value_range
    unit = ((x - low) / (high - low)).clamp(0, 1)
    return torch.round(unit * EIGHT_BIT) / EIGHT_BIT * (high - low) + low


def run(inputs: EditInputs) -> Edited:
    """The catalogue's entry point: masks by role, on the model's grid."""
    return Edited(inputs.call(pie, roi_mask=inputs.masks["roi_mask"], image=inputs.image))  # one per step

"""InstructX2X: Region-Specific Editing (RSE) on an InstructPix2Pix model (hgminn/InstructX2X,
inference/rse_x2x.py).

    z_0 = E(prior) in diffusion space;  c_I = the prior as the model reads it beside z_t
    relevance, once, before sampling:
        z_r = z_0 noised to t_r = 0.8 T
        R = sum over channels |eps(z_r, c_I, c_T) - eps(z_r, c_I, {})|
        R = min(R, Q3 + 1.5 IQR);  R = (R - min R) / (max R - min R);  R upsampled to the image
    G = R x region                          # the user's roi_mask, else the instruction's finding templates
    M = G > tau                             # the guidance mask: nothing outside it changes
    z = z_0 noised to the first timestep
    for t -> t' in DDIM's timesteps (the folder's scheduler config, as the reference builds it):
        z = instruction step (InstructPix2Pix guidance, napari_medit.editing.instruct)
        z = M z + (1 - M) (z_0 noised to t' with the start noise)
    result = decode(z), composited with M at the image's own resolution

Differences from the reference, on purpose:
- the relevance map's noise is seeded (the reference draws it unseeded), so the map is
  reproducible;
- outside M, the original is noised to t', the level of the sample it joins; the reference
  noises it to t, one step noisier (the off-by-one RadEdit's official pipeline has too);
- on a pixel-space model the map is average-pooled to the reference's grid (8 x 8 pixels a cell,
  a Stable Diffusion latent's), where one noise draw's per-pixel map would be speckle;
- the region, when the user gives none, comes from napari-medit's per-finding templates
  (``napari_medit.instructions``) instead of the union of MS-CXR boxes, which are not
  shipped with the reference code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from ..catalogue import InstructX2XParams
from .control import Edited, EditInputs, NoiseSource, Progress
from .ddpm import scheduler_settings
from .denoiser import Denoiser
from .instruct import guided_eps, model_scheduler, sample
from .slicing import binarised, to_latent_grid

OUTLIER_IQR = 1.5  # Tukey's fence: values above Q3 + 1.5 IQR are clipped
LATENT_CELL = 8  # image pixels per cell of the grid the reference's map lies on (SD's VAE)


def instructx2x(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    image: torch.Tensor,
    region: torch.Tensor,
    params: InstructX2XParams,
    noise: NoiseSource,
    progress: Progress,
    conditions: torch.Tensor | None = None,
) -> Edited:
    """``region`` (B, 1, h, w) on the diffusion grid, in [0, 1]: where the instruction may act."""
    scheduler = reference_ddim(model_scheduler(denoiser, "instructx2x"))
    prior = denoiser.encode_prior(image).to(x0.dtype)
    text, null = denoiser.embed([params.prompt, ""], x0.shape[0])

    size = image.shape[-2:]
    map_ = relevance_map(denoiser, x0, prior, text, null, params, noise, conditions, size)
    guidance_map = map_ * F.interpolate(
        region.to(map_.dtype), size=size, mode="bilinear", align_corners=False
    )
    guidance_mask = (guidance_map >= params.threshold).to(x0.dtype)  # rse_x2x.py: >= tau
    keep = 1 - binarised(to_latent_grid(guidance_mask, denoiser.latent_factor))

    scheduler.set_timesteps(params.steps)
    timesteps = list(scheduler.timesteps)
    progress.start(len(timesteps))
    start_noise = noise.like(x0, "start")  # also the known region's, at every level, as the reference
    z = scheduler.add_noise(x0, start_noise, timesteps[0].reshape(1))

    def eps_of(z_scaled, t):
        return guided_eps(
            denoiser, z_scaled, t, text, null, prior, params.text_guidance, params.image_guidance, conditions
        )

    def paste_known(i, z):
        # Outside the map: the original at the level of the sample just produced (clean after the last step).
        last = i + 1 == len(timesteps)
        known = x0 if last else scheduler.add_noise(x0, start_noise, timesteps[i + 1].reshape(1))
        return (1 - keep) * z + keep * known

    z = sample(
        denoiser, scheduler, z, timesteps, eps_of, noise, progress, dtype=x0.dtype, after_step=paste_known
    )
    return Edited(
        [z],
        {"guidance_map": guidance_map, "guidance_mask": guidance_mask},
        scheduler=scheduler_settings(scheduler),
    )


# What rse_x2x.py's DDIM takes from CompVis sd-v1-4's scheduler config, whatever the folder ships.
SD14_DDIM = {
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
}
# What it keeps of the model's own: the noise schedule it was trained on and what it predicts.
MODEL_SCHEDULE = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
MODEL_SCHEDULE += ("rescale_betas_zero_snr", "prediction_type")


def reference_ddim(scheduler) -> DDIMScheduler:
    """The reference samples with DDIM whatever the model folder ships (its converter writes PNDM, a
    public InstructPix2Pix folder Euler ancestral): the folder's betas, and sd-v1-4's spacing, offset,
    final alpha and no clipping (100 steps: 991, 981, ..., 1), as rse_x2x.py builds it."""
    kept = {k: v for k, v in scheduler.config.items() if k in MODEL_SCHEDULE and v is not None}
    return DDIMScheduler(**kept, **SD14_DDIM)


def relevance_map(
    denoiser, x0, prior, text, null, params: InstructX2XParams, noise: NoiseSource, conditions, size
) -> torch.Tensor:
    """Where the instruction changes the model's noise estimate: (B, 1, *size) in [0, 1]."""
    schedule = denoiser.schedule
    t = min(int(params.relevance_timestep * schedule.num_train_timesteps), schedule.num_train_timesteps - 1)
    z_t = schedule.add_noise(x0, noise.like(x0, "relevance"), t)  # the model's input scale at t (VP)
    images = torch.cat([prior, prior])
    masks = None if conditions is None else torch.cat([conditions, conditions.to(prior.dtype)])
    with_text, without_text = denoiser(
        torch.cat([z_t, z_t]),
        t,
        torch.cat([text, null]),
        images if masks is None else torch.cat([images, masks], dim=1),
    ).chunk(2)
    relevance = (with_text - without_text).abs().sum(dim=1, keepdim=True)
    # The reference reads the map on Stable Diffusion's latent grid, one cell per 8 x 8 pixels. A
    # pixel-space model's per-pixel map of one noise draw is speckle: pool it to the same grid.
    cell = max(1, LATENT_CELL // denoiser.latent_factor)
    if cell > 1 and min(relevance.shape[-2:]) >= 2 * cell:
        relevance = F.avg_pool2d(relevance, cell, ceil_mode=True)
    flat = relevance.flatten(1)
    q1, q3 = torch.quantile(flat, 0.25, dim=1), torch.quantile(flat, 0.75, dim=1)
    fence = (q3 + OUTLIER_IQR * (q3 - q1))[:, None, None, None]
    relevance = torch.minimum(relevance, fence)
    low = relevance.amin(dim=(1, 2, 3), keepdim=True)
    high = relevance.amax(dim=(1, 2, 3), keepdim=True)
    unit = (relevance - low) / (high - low).clamp_min(torch.finfo(relevance.dtype).tiny)
    return F.interpolate(unit, size=size, mode="bilinear", align_corners=False)


def run(inputs: EditInputs) -> Edited:
    """The catalogue's entry point: the region (roi_mask, or the instruction's template) on the model's
    grid."""
    return inputs.call(instructx2x, image=inputs.image, region=inputs.masks["roi_mask"])

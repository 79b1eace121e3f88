"""Tiny random models of the real classes, for tests that must hold for any model."""

from __future__ import annotations

import zlib

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerAncestralDiscreteScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)

from napari_medit.editing import DiffusersDenoiser, MonaiDenoiser


def scheduler(kind: str = "ddim", steps: int = 1000):
    common = dict(
        num_train_timesteps=steps,
        beta_schedule="linear",
        beta_start=1e-4 * 1000 / steps,
        beta_end=2e-2 * 1000 / steps,
        clip_sample=False,
        prediction_type="epsilon",
    )
    if kind == "ddpm":
        return DDPMScheduler(**common)
    if kind == "euler-ancestral":  # public InstructPix2Pix checkpoints' scheduler: fractional timesteps
        return EulerAncestralDiscreteScheduler(**{k: v for k, v in common.items() if k != "clip_sample"})
    return DDIMScheduler(**common, timestep_spacing="leading", set_alpha_to_one=True, steps_offset=0)


class HashingTextEncoder:
    """Words -> fixed random vectors (a stand-in for a real text encoder in tests)."""

    def __init__(self, dim: int = 16, tokens: int = 4):
        self.dim, self.tokens = dim, tokens

    def __call__(self, prompts):
        out = torch.zeros(len(prompts), self.tokens, self.dim)
        for i, prompt in enumerate(prompts):
            for j, word in enumerate(prompt.lower().split()[: self.tokens]):
                g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
                out[i, j] = torch.randn(self.dim, generator=g)
        return out


def _seeded(module):
    torch.manual_seed(0)
    return module()


def pixel_unet(resolution: int = 16, conditions=()) -> DiffusersDenoiser:
    unet = _seeded(
        lambda: UNet2DModel(
            sample_size=resolution,
            in_channels=1 + len(conditions),
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
        )
    )
    return DiffusersDenoiser(unet, scheduler(), name="tiny-pixel-unet", condition_names=conditions)


def text_unet(resolution: int = 16, vae: bool = False) -> DiffusersDenoiser:
    latent = resolution // 2 if vae else resolution
    unet = _seeded(
        lambda: UNet2DConditionModel(
            sample_size=latent,
            in_channels=4 if vae else 1,
            out_channels=4 if vae else 1,
            layers_per_block=1,
            block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=4,
            norm_num_groups=4,
        )
    )
    autoencoder = None
    if vae:
        autoencoder = _seeded(
            lambda: AutoencoderKL(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(8, 8),
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                norm_num_groups=4,
                layers_per_block=1,
            )
        )
    return DiffusersDenoiser(
        unet, scheduler(), name="tiny-text-unet", text_encoder=HashingTextEncoder(), vae=autoencoder
    )


def monai_unet(resolution: int = 16) -> MonaiDenoiser:
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler as MonaiDDPM

    model = _seeded(
        lambda: DiffusionModelUNet(
            spatial_dims=2,
            in_channels=3,
            out_channels=1,
            channels=(8, 16),
            attention_levels=(False, True),
            num_res_blocks=1,
            num_head_channels=8,
            norm_num_groups=4,
        )
    )
    schedule = MonaiDDPM(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4, beta_end=2e-2)
    return MonaiDenoiser(
        model,
        schedule,
        resolution=resolution,
        name="tiny-monai-mededit",
        condition_names=("pathology_mask", "brain_mask"),
    )


def instruct_unet(resolution: int = 16, scheduler_kind: str = "ddim") -> DiffusersDenoiser:
    """A pixel-space instruction model: the noisy image and the prior image on two input channels."""
    unet = _seeded(
        lambda: UNet2DConditionModel(
            sample_size=resolution,
            in_channels=2,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=4,
            norm_num_groups=4,
        )
    )
    return DiffusersDenoiser(
        unet,
        scheduler(scheduler_kind),
        name="tiny-instruct-unet",
        text_encoder=HashingTextEncoder(),
        image_conditioned=True,
    )

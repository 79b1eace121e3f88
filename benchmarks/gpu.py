"""GPU benchmark: the published models' sizes, float16 against float32, with peak memory.

    python benchmarks/gpu.py [--device cuda] [--out benchmarks/results/gpu.md]
    python benchmarks/gpu.py --device cpu --smoke      # a check that the script runs (tiny sizes)

Random weights in the published architectures (timing does not depend on the weights):

- RadEdit at 512 px, 100 steps (inversion + guided editing): a Stable Diffusion 1.x-size UNet
  (860 M, cross-attention 768) inside an SDXL-architecture VAE (float32, as napari-medit keeps it).
- MedEdit on a 128 px brain volume of 155 slices: MedEdit's MONAI network, 100 steps (its own
  1000 would take ten times as long; the cost per step is what is measured).
- instruct at 512 px, 100 steps: the same UNet with 8 input channels (InstructPix2Pix's layout).

For each, float16 and float32 (``precision``): wall seconds, seconds per step, the batch size the
engine chose, and peak GPU memory. Meant to finish in under 8 minutes on one recent GPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_report

from napari_medit.editing import DiffusersDenoiser, MonaiDenoiser, edit
from napari_medit.preprocessing import Fit, Intensity, Preprocessing

PRECISIONS = ("float16", "float32")
SDXL_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    scaling_factor=0.13025,
)
SMOKE_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(8, 8),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    norm_num_groups=4,
)


class RandomText:
    """A text encoder stand-in: a fixed random (77, width) embedding per prompt."""

    def __init__(self, width: int):
        self.width = width

    def __call__(self, prompts):
        return torch.stack(
            [torch.randn(77, self.width, generator=torch.Generator().manual_seed(len(p))) for p in prompts]
        )


def latent_model(device, smoke: bool, instruction: bool) -> DiffusersDenoiser:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    width = 16 if smoke else 768
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=8 if instruction else 4,
        cross_attention_dim=width,
        **(
            dict(
                block_out_channels=(16, 32),
                layers_per_block=1,
                norm_num_groups=8,
                attention_head_dim=4,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            )
            if smoke
            else {}
        ),
    )
    vae = AutoencoderKL(**(SMOKE_VAE if smoke else SDXL_VAE))
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    model = DiffusersDenoiser(
        unet.to(device),
        scheduler,
        name="sd-size" + ("-instruct" if instruction else ""),
        text_encoder=RandomText(width),
        vae=vae.to(device),
        image_conditioned=instruction,
        preprocessing=Preprocessing(Fit.center_crop, Intensity.min_max),
    )
    return model


def mededit_model(device, smoke: bool) -> MonaiDenoiser:
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    from napari_medit.backends.mededit_checkpoint import MEDEDIT_NETWORK

    torch.manual_seed(0)
    network = dict(
        MEDEDIT_NETWORK,
        **(dict(channels=[8, 16, 16], num_head_channels=8, norm_num_groups=8) if smoke else {}),
    )
    return MonaiDenoiser(
        DiffusionModelUNet(**network).to(device),
        DDPMScheduler(num_train_timesteps=1000),
        resolution=128,
        name="mededit-size",
        condition_names=("pathology_mask", "brain_mask"),
    )


def jobs(device, smoke: bool):
    """(label, method, model, image, keyword arguments, steps run)."""
    steps = 2 if smoke else 100
    side = 64 if smoke else 512
    rng = np.random.default_rng(0)
    cxr = (rng.random((side, side)) * 255).astype(np.uint8)
    region = np.zeros(cxr.shape, bool)
    region[side // 4 : side // 2, side // 5 : side // 2] = True
    sd = latent_model(device, smoke, instruction=False)
    yield (
        f"RadEdit, {side} px",
        "radedit",
        sd,
        cxr,
        dict(prompt="No findings", edit_mask=region, steps=steps, skip=0),
        steps,
    )
    slices = 4 if smoke else 155
    volume = (rng.random((128, 128, slices)) * 1000).astype(np.int16)
    brain = np.zeros(volume.shape, bool)
    brain[16:112, 16:112] = True
    lesion = np.zeros(volume.shape, bool)
    lesion[50:70, 40:60] = True
    yield (
        f"MedEdit, 128 px x {slices} slices",
        "mededit",
        mededit_model(device, smoke),
        volume,
        dict(pathology_mask=lesion, brain_mask=brain, steps=steps, axis=2),
        steps,
    )
    instruct = latent_model(device, smoke, instruction=True)
    yield (
        f"instruct, {side} px",
        "instruct",
        instruct,
        cxr,
        dict(prompt="remove the right pleural effusion", steps=steps),
        steps,
    )


def measure(method, model, image, options, precision: str, device) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = edit(method, image, model=model, precision=precision, **options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "seconds": seconds,
        "batch": result.provenance["batch_size"],
        "peak": peak,
        "evaluations": result.provenance["model_evaluations"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps: check the script runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the report here (default: benchmarks/results/gpu.md on CUDA, nothing otherwise)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    command = f"python benchmarks/gpu.py --device {args.device}" + (" --smoke" if args.smoke else "")
    lines = [
        f"# GPU benchmark ({name})",
        "",
        f"Command: `{command}`; torch {torch.__version__}",
        "",
        "| job | precision | seconds | s / step | batch size | model evaluations | peak GPU memory (GiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, method, model, image, options, steps in jobs(device, args.smoke):
        edit(method, image, model=model, **dict(options, steps=1))  # warm-up: kernels, the allocator
        for precision in PRECISIONS:
            row = measure(method, model, image, options, precision, device)
            lines.append(
                f"| {label} | {precision} | {row['seconds']:.1f} | {row['seconds'] / steps:.3f} | "
                f"{row['batch']} | {row['evaluations']} | {row['peak']:.2f} |"
            )
            print(lines[-1], flush=True)
    write_report(
        lines, args.out or (Path(__file__).parent / "results" / "gpu.md" if device.type == "cuda" else None)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

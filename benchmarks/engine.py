"""Editing engine benchmark: wall time against the floor of model evaluations.

    python benchmarks/engine.py [--device cpu] [--out benchmarks/results/engine-cpu.md]

For each method, the run's wall time is compared with its floor: the sum, over
the network calls it made, of the time one forward pass takes at that batch
size (measured here, median of repeats). The ratio is the sampler's overhead
(resampling, masks, noise, compositing). Then the same MedEdit job on 8
slices, batched against one slice at a time.

Models are the bundled demo models: demo-brain (MONAI DiffusionModelUNet with
mask channels) and demo-cxr (diffusers UNet2DConditionModel with a CLIP text
encoder), both at 64 x 64.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_report

from napari_medit.editing import edit

RESOLUTION = 64


def demo_models(device):
    """The bundled demo models: MedEdit-style MONAI UNet (demo-brain) and text UNet (demo-cxr), 64 x 64."""
    from napari_medit.backends import load_model

    return load_model("demo-brain", device), load_model("demo-cxr", device)


class CallLog:
    """Records the batch size of every network call a denoiser makes."""

    def __init__(self, denoiser):
        self.sizes = []
        inner = denoiser.model_output

        def logged(x_t, t, text, conditions):
            self.sizes.append(x_t.shape[0])
            return inner(x_t, t, text, conditions)

        denoiser.model_output = logged
        self.inner = inner


def forward_seconds(denoiser, inner, batch: int, repeats: int = 15) -> float:
    side = denoiser.resolution // denoiser.latent_factor
    channels = denoiser.latent_channels * (2 if denoiser.image_conditioned else 1)  # x_t and the prior
    x = torch.randn(batch, channels, side, side, device=denoiser.device)
    text = denoiser.encode_text(["pleural effusion"] * batch)
    text = None if text is None else text.to(denoiser.device)
    conditions = (
        torch.rand(batch, len(denoiser.condition_names), side, side, device=denoiser.device)
        if denoiser.condition_names
        else None
    )
    times = []
    with torch.no_grad():
        inner(x, 500, text, conditions)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            inner(x, 500, text, conditions)
            _sync(denoiser.device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_image():
    yy, xx = np.mgrid[:RESOLUTION, :RESOLUTION]
    image = (400 + 200 * np.sin(xx / 5) * np.cos(yy / 7)).astype(np.float32)
    region = np.zeros(image.shape, bool)
    region[20:40, 24:44] = True
    return image, region


def run_method(method, model, options, image_shape=None):
    image, region = sample_image()
    # warm-up: first calls are slow
    edit(method, image, model=model, **_masks(method, model, region), **options)
    log = CallLog(model)
    start = time.perf_counter()
    result = edit(method, image, model=model, **_masks(method, model, region), **options)
    wall = time.perf_counter() - start
    model.model_output = log.inner
    floors = {b: forward_seconds(model, log.inner, b) for b in sorted(set(log.sizes))}
    floor = sum(floors[b] for b in log.sizes)
    return result.provenance["model_evaluations"], len(log.sizes), wall, floor


def _masks(method, model, region):
    masks = {"pathology_mask": region, "brain_mask": np.ones_like(region)} if model.condition_names else {}
    if method in ("radedit", "diffedit", "sdedit"):
        masks["edit_mask"] = region
    if method == "pie":
        masks["roi_mask"] = region
    return masks


def batched_against_single(model, slices: int = 8, steps: int = 25):
    image, region = sample_image()
    volume = np.stack([image] * slices)
    lesion = np.stack([region] * slices)
    brain = np.ones_like(lesion)
    times = {}
    for batch in (slices, 1):
        start = time.perf_counter()
        edit(
            "mededit",
            volume,
            model=model,
            pathology_mask=lesion,
            brain_mask=brain,
            steps=steps,
            batch_size=batch,
        )
        times[batch] = time.perf_counter() - start
    return times[slices], times[1]


# the scheduler sd-v1-4 (PIE's base) ships
SD_V1_4_PNDM = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
)


def evaluation_counts(device: torch.device) -> list[str]:
    """Model evaluations (network forward passes per image) against the count each method's algorithm
    implies, with demo-cxr on sd-v1-4's PNDM schedule (which lists one timestep twice) and demo-brain."""
    from diffusers import PNDMScheduler

    from napari_medit.backends import load_model
    from napari_medit.editing.ddpm import NoiseSchedule

    text = load_model("demo-cxr", device)
    text.schedule = NoiseSchedule.from_scheduler(PNDMScheduler(**SD_V1_4_PNDM))
    masks = load_model("demo-brain", device)
    instruction = load_model("demo-cxr-instruct", device)
    converted = load_model("demo-cxr-instruct", device)  # as InstructX2X's converter writes folders: PNDM
    converted.schedule = NoiseSchedule.from_scheduler(PNDMScheduler(**SD_V1_4_PNDM))
    jobs = [  # method, model, options, expected evaluations, why
        (
            "radedit",
            text,
            dict(prompt="pleural effusion", steps=10, skip=0),
            10 + 2 * 10,
            "10 inversion + 2 x 10 guided steps (PNDM's repeat run once)",
        ),
        (
            "pie",
            text,
            dict(prompt="pleural effusion", iterations=2, steps=10, strength=0.5, loop="reference"),
            2 * 2 * 6,
            "2 iterations x 2 (guidance) x 6 PLMS calls: run_pie's slice [5:] of PNDM's 11 timesteps",
        ),
        (
            "pie",
            text,
            dict(prompt="pleural effusion", iterations=2, steps=10, strength=0.5, loop="latent"),
            2 * 2 * 5,
            "2 iterations x 2 x 5 distinct DDIM steps",
        ),
        (
            "mededit",
            masks,
            dict(steps=20, jump_n_sample=3),
            19 * 3 + 1,
            "19 steps x 3 repeats + the last step once",
        ),
        ("repaint", masks, dict(preset="mededit-paper", steps=50), 50, "MedEdit's loop: one call per step"),
        (
            "repaint",
            masks,
            dict(steps=50, jump_length=10, jump_n_sample=2),
            50 + 4 * 10,
            "50 steps + 4 jumps x 10 steps redone",
        ),
        (
            "instruct",
            instruction,
            dict(prompt="remove the right pleural effusion", steps=10),
            3 * 10,
            "10 steps x 3 (text + image, image, neither): InstructPix2Pix's guidance",
        ),
        (
            "instruct",
            instruction,
            dict(prompt="remove the right pleural effusion", steps=10, text_guidance=1.0),
            10,
            "guidance off when s_T <= 1 (the pipeline's rule): one pass per step",
        ),
        (
            "instructx2x",
            instruction,
            dict(prompt="remove the right pleural effusion", steps=10),
            2 + 3 * 10,
            "the relevance map's 2 passes + 10 guided steps x 3",
        ),
        (
            "instructx2x",
            converted,
            dict(prompt="remove the right pleural effusion", steps=10),
            2 + 3 * 10,
            "a PNDM folder still runs the reference's 10 DDIM steps (PLMS would make 11)",
        ),
        ("sdedit", masks, dict(steps=10, strength=0.5), 5, "the last 5 of 10 steps, one call each"),
        (
            "diffedit",
            text,
            dict(prompt="pleural effusion", steps=10, strength=0.5),
            5 + 2 * 5,
            "5 unguided inversion steps + 5 guided steps x 2",
        ),
    ]
    lines = [
        "## Model evaluations against the algorithm's count",
        "",
        "One 64x64 image; evaluations = network forward passes per image (guidance counts two).",
        "",
        "| method | model (schedule) | parameters | evaluations | expected | why |",
        "|---|---|---|---:|---:|---|",
    ]
    for method, model, options, expected, why in jobs:
        image, region = sample_image()
        result = edit(method, image, model=model, **_masks(method, model, region), **options)
        evaluations = result.provenance["model_evaluations"]
        scheduler = result.provenance["scheduler"]
        schedule = scheduler["class"] + (
            f" from {scheduler['built_from']}" if "built_from" in scheduler else ""
        )
        described = ", ".join(f"{k}={v}" for k, v in options.items() if k != "prompt")
        lines.append(
            f"| {method} | {model.name} ({schedule}) | {described} | {evaluations} | {expected} | {why} |"
        )
        print(lines[-1], flush=True)
    return lines


def sections(device: torch.device) -> list[str]:
    """Markdown: wall against floor per method, then batched against one slice at a time."""
    torch.manual_seed(0)
    masks, text = demo_models(device)
    jobs = [
        ("radedit", text, dict(prompt="pleural effusion", steps=50, skip=18)),
        ("mededit", masks, dict(steps=100)),
        ("pie", text, dict(prompt="pleural effusion", iterations=3, steps=50)),
        ("sdedit", masks, dict(strength=0.5, steps=100)),
        ("repaint", masks, dict(steps=50, jump_length=10, jump_n_sample=2)),
        ("diffedit", text, dict(prompt="pleural effusion", steps=50, strength=0.5)),
    ]
    lines = [
        "## Wall time against the floor of model evaluations",
        "",
        f"One {RESOLUTION}x{RESOLUTION} image per method. Floor = sum over the run's network calls of one "
        "forward pass at that call's batch size (median of 15).",
        "",
        "| method | model | parameters | evaluations | network calls | wall s | floor s | wall / floor |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for method, model, options in jobs:
        evaluations, calls, wall, floor = run_method(method, model, options)
        described = ", ".join(f"{k}={v}" for k, v in options.items() if k != "prompt")
        lines.append(
            f"| {method} | {model.name} | {described} | {evaluations} | {calls} | {wall:.2f} | "
            f"{floor:.2f} | {wall / floor:.2f} |"
        )
        print(lines[-1], flush=True)
    batched, single = batched_against_single(masks)
    lines += [
        "",
        "## Batched slices against one slice at a time",
        "",
        "MedEdit on demo-brain, 8 slices of 64x64, 25 steps:",
        "",
        "| batched (8 per call) s | one slice at a time s | batched / single |",
        "|---:|---:|---:|",
        f"| {batched:.2f} | {single:.2f} | {batched / single:.2f} |",
    ]
    return lines


def machine(device: torch.device) -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or platform.machine(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor() or platform.machine()
    )
    memory = ""
    if Path("/proc/meminfo").exists():
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}{gpu}; {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--counts-only", action="store_true", help="only the model-evaluation counts (fast)")
    args = parser.parse_args()
    device = torch.device(args.device)
    command = f"python benchmarks/engine.py --device {args.device}" + (
        " --counts-only" if args.counts_only else ""
    )
    body = [] if args.counts_only else [*sections(device), ""]
    lines = [
        f"# Editing engine benchmark ({device.type})",
        "",
        f"Machine: {machine(device)}",
        f"Command: `{command}`",
        "",
        *body,
        *evaluation_counts(device),
    ]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Reduced precision for the denoising network: speed and fidelity, measured side by side in one run.

    python benchmarks/precision.py [--steps 20] [--out benchmarks/results/precision-cpu.md]

1. One forward pass of each UNet kind (median of repeats) in float32 and under bfloat16 autocast,
   each in the default and the channels_last memory layout: the demo models at their batch
   sizes, and a Stable Diffusion 1.x-size UNet (random weights: the timing does not depend on them).
2. Every method on the demo models and the bundled samples, float32 against bfloat16 with the same
   seed and steps: seconds and their ratio; PSNR of the bfloat16 result against the float32 one
   inside the region the method edits (the window of the source as the peak); the voxels outside
   that region that differ from the source (0 in any precision: compositing is exact); and for
   RadEdit, the reconstruction error of its inversion (no edit) against the source.

What the machine computes natively decides ``precision=auto`` (napari_medit.editing.run.network_precision);
the report starts with what torch says this CPU has.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_report

from napari_medit.backends import load_model
from napari_medit.editing import edit
from napari_medit.editing.run import network_precision
from napari_medit.sample_data import load_brain, load_cxr

PRECISIONS = ("float32", "bfloat16")


def forward_seconds(network, inputs: dict, dtype: torch.dtype, channels_last: bool, repeats: int) -> float:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    network.to(memory_format=layout)
    inputs = {
        k: (v.to(memory_format=layout) if torch.is_tensor(v) and v.ndim == 4 else v)
        for k, v in inputs.items()
    }
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        network(**inputs)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            network(**inputs)
            times.append(time.perf_counter() - start)
    network.to(memory_format=torch.contiguous_format)
    return statistics.median(times)


def unet_kinds():
    """(label, network, keyword inputs of one forward pass)."""
    from diffusers import UNet2DConditionModel

    cxr, brain = load_model("demo-cxr"), load_model("demo-brain")
    side = cxr.resolution // cxr.latent_factor
    text = cxr.encode_text(["pleural effusion"] * 8)
    yield (
        f"demo-cxr (diffusers, text), 8 x 1 x {side}^2",
        cxr.unet,
        dict(
            sample=torch.randn(8, cxr.unet.config.in_channels, side, side),
            timestep=torch.full((8,), 500),
            encoder_hidden_states=text,
        ),
    )
    side = brain.resolution
    yield (
        f"demo-brain (MONAI), 4 x 3 x {side}^2",
        brain.model,
        dict(x=torch.randn(4, 3, side, side), timesteps=torch.full((4,), 500)),
    )
    torch.manual_seed(0)
    sd = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768
    ).eval()  # Stable Diffusion 1.x's (860 M)
    yield (
        "Stable Diffusion 1.x size (860 M), 2 x 4 x 32^2",
        sd,
        dict(
            sample=torch.randn(2, 4, 32, 32),
            timestep=torch.full((2,), 500),
            encoder_hidden_states=torch.randn(2, 77, 768),
        ),
    )


def forward_table(repeats: int, bf16_default_layout: bool) -> list[str]:
    lines = [
        "## One forward pass",
        "",
        "| UNet | float32 | bfloat16 | float32, channels_last | bfloat16, channels_last |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, network, inputs in unet_kinds():
        seconds = {}
        for channels_last in (False, True):
            for precision in PRECISIONS:
                if precision == "bfloat16" and not channels_last and not bf16_default_layout:
                    continue  # emulated bfloat16 without channels_last: minutes a pass, see the note above
                seconds[(precision, channels_last)] = forward_seconds(
                    network, inputs, getattr(torch, precision), channels_last, repeats
                )
        base = seconds[("float32", False)]
        cells = [
            f"{seconds[key]:.3f} s ({base / seconds[key]:.2f}x)" if key in seconds else "not measured"
            for key in ((p, cl) for cl in (False, True) for p in PRECISIONS)
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def method_jobs(steps: int):
    """(method, model name, source image, keyword arguments, region the method may change)."""
    cxr, brain = load_cxr(), load_brain()
    image, edit_mask, keep = cxr["cxr"], cxr["edit_mask"].array > 0, cxr["keep_mask"].array > 0
    lungs = cxr["lung_mask"].array > 0
    t1, lesion, brain_mask = brain["t1"], brain["lesion_mask"].array > 0, brain["brain_mask"].array > 0
    centre = int(np.argwhere(lesion)[:, 2].mean())
    volume = dict(axis="axial", slices=(centre - 1, centre + 2))
    text = "No findings"
    # RadEdit may change all but its keep mask
    yield (
        "radedit",
        "demo-cxr",
        image,
        dict(prompt=text, edit_mask=edit_mask, keep_mask=keep, steps=steps),
        ~keep,
    )
    yield (
        "pie",
        "demo-cxr",
        image,
        dict(prompt="Pleural effusion", roi_mask=edit_mask, steps=steps, iterations=2),
        edit_mask,
    )
    yield ("sdedit", "demo-cxr", image, dict(edit_mask=edit_mask, steps=steps), edit_mask)
    yield ("diffedit", "demo-cxr", image, dict(prompt=text, edit_mask=edit_mask, steps=steps), edit_mask)
    yield (
        "mededit",
        "demo-brain",
        t1,
        dict(pathology_mask=lesion, brain_mask=brain_mask, steps=steps, **volume),
        None,
    )
    yield (
        "repaint",
        "demo-brain",
        t1,
        dict(
            pathology_mask=lesion,
            brain_mask=brain_mask,
            steps=steps,
            jump_length=5,
            jump_n_sample=2,
            **volume,
        ),
        lesion,
    )
    yield (
        "instruct",
        "demo-cxr-instruct",
        image,
        dict(prompt="remove the right pleural effusion", steps=steps),
        np.ones_like(edit_mask),
    )
    yield (
        "instructx2x",
        "demo-cxr-instruct",
        image,
        dict(prompt="remove the right pleural effusion", lung_mask=lungs, steps=steps),
        None,
    )


RUNS = (("float32", False), ("float32", True), ("bfloat16", True))  # (precision, channels_last)


def method_table(steps: int) -> list[str]:
    lines = [
        f"## Every method ({steps} steps, seed 0, the bundled samples)",
        "",
        "Seconds per edit in float32 with the default layout, with channels_last (what napari-medit loads on "
        "CPU), and in bfloat16 with channels_last; then bfloat16 against float32: PSNR inside the region the "
        "method edits (the source's 0.5-99.5 % range as the peak), and voxels outside it that differ from "
        "the "
        "source in any run (0: compositing is exact).",
        "",
        "| method | model | float32 s | float32 channels_last s (speed-up) | bfloat16 channels_last s "
        "(speed-up) | "
        "PSNR bfloat16 vs float32 (dB) | voxels changed outside |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    models = {}
    for method, spec, image, options, region in method_jobs(steps):
        model = models.setdefault(spec, load_model(spec))
        results, seconds = {}, {}
        for precision, channels_last in RUNS:
            model.use_memory_format(torch.channels_last if channels_last else torch.contiguous_format)
            start = time.perf_counter()
            results[(precision, channels_last)] = edit(
                method, image, model=model, seed=0, precision=precision, **options
            )
            seconds[(precision, channels_last)] = time.perf_counter() - start
        full, half = results[("float32", True)].image.array, results[("bfloat16", True)].image.array
        source = image.array

        # the given region, or the one the run computed (MedEdit's, InstructX2X's map)
        def editable(result, region=region):
            return (
                region
                if region is not None
                else next(m for k, m in result.masks.items() if k in ("inpaint_mask", "guidance_mask"))
            )

        inside = editable(results[("float32", True)])
        peak = float(np.percentile(source, 99.5) - np.percentile(source, 0.5))
        outside = sum(
            int(np.count_nonzero(r.image.array[~editable(r)] != source[~editable(r)]))
            for r in results.values()
        )
        base = seconds[RUNS[0]]
        lines.append(
            f"| {method} | {spec} | {base:.1f} | "
            + " | ".join(f"{seconds[run]:.1f} ({base / seconds[run]:.2f}x)" for run in RUNS[1:])
            + f" | {psnr(full[inside], half[inside], peak):.1f} | {outside} |"
        )
        print(lines[-1], flush=True)
    return lines


def reconstruction_table(steps: int) -> list[str]:
    """RadEdit with guidance 1 and the inversion's own prompt reconstructs its input: the error is the
    inversion's numerical error, in source units."""
    cxr = load_cxr()
    image, mask = cxr["cxr"], cxr["edit_mask"].array > 0
    model = load_model("demo-cxr")
    lines = [
        "## RadEdit's inversion, reconstructed (guidance 1, the inversion's prompt)",
        "",
        "| precision | max abs error (8-bit levels) | mean abs error |",
        "|---|---:|---:|",
    ]
    for precision in PRECISIONS:
        result = edit(
            "radedit",
            image,
            model=model,
            prompt="",
            edit_mask=mask,
            steps=steps,
            skip=0,
            guidance=1.0,
            precision=precision,
            seed=0,
        )
        error = np.abs(result.image.array.astype(np.float64) - image.array.astype(np.float64))[mask]
        lines.append(f"| {precision} | {error.max():.0f} | {error.mean():.3f} |")
        print(lines[-1], flush=True)
    return lines


def machine() -> str:
    caps = torch.cpu.get_capabilities()
    native = [k for k in ("avx512_bf16", "amx_bf16", "avx512_f", "avx2") if caps.get(k)]
    return (
        f"{caps.get('cpu_name', platform.processor())}, {caps.get('num_logical_cores')} cores, "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}; CPU features: "
        f"{', '.join(native)}; "
        f"precision=auto here: {str(network_precision('auto', torch.device('cpu'))).removeprefix('torch.')}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps of every method (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="forward passes timed per cell (median)")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument(
        "--bf16-default-layout",
        action="store_true",
        help="also time bfloat16 in the default layout on a CPU that only emulates it (slow)",
    )
    args = parser.parse_args()
    command = f"python benchmarks/precision.py --steps {args.steps} --repeats {args.repeats}" + (
        " --bf16-default-layout" if args.bf16_default_layout else ""
    )
    native = network_precision("auto", torch.device("cpu")) is torch.bfloat16
    lines = [
        "# Reduced precision (CPU)",
        "",
        f"Machine: {machine()}",
        f"Command: `{command}`",
        "",
        *forward_table(args.repeats, native or args.bf16_default_layout),
        "",
        *method_table(args.steps),
        "",
        *reconstruction_table(args.steps),
    ]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Edit time against the exact default: feature reuse (cache_interval), torch.compile, and both.

    python benchmarks/speed.py [--mededit-steps 250] [--intervals 2 3 4] [--compile]
                               [--out benchmarks/results/speed-cpu.md]

Side by side in one process, on the demo models and samples, each edit at its method's defaults
(MedEdit at ``--mededit-steps``; its published 1000 take ~4x as long and change each step less, which
favours the cache): the exact default, then each lever. Every figure is from the second edit on:
each configuration runs once unmeasured first (model loading, first-pass costs, and with
``--compile`` the compile itself, reported apart), as a long-lived worker runs it.

Per row: the edit's time, the speed-up over exact, the PSNR against the exact result inside the
editable region (peak: the source's intensity range; "exact" where equal), and the voxels outside
the editable region that differ from the exact result (must be 0: compositing is untouched).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_report

from napari_medit.backends import load_model
from napari_medit.catalogue import method
from napari_medit.editing import edit
from napari_medit.sample_data import load_brain, load_cxr


def cases(mededit_steps: int) -> dict[str, tuple]:
    cxr, brain = load_cxr(), load_brain()
    lesion = brain["lesion_mask"].array
    axial = int(np.argmax(np.abs(brain["t1"].affine[2, :3])))
    touched = np.flatnonzero(lesion.any(axis=tuple(a for a in range(3) if a != axial)))
    middle = int(touched[len(touched) // 2])
    chest_masks = {"edit_mask": cxr["edit_mask"], "keep_mask": cxr["keep_mask"]}
    return {
        "radedit, demo-cxr, chest 512 px": ("radedit", cxr["cxr"], "demo-cxr", chest_masks),
        f"mededit, demo-brain, 4 axial slices, {mededit_steps} steps": (
            "mededit",
            brain["t1"],
            "demo-brain",
            {
                "pathology_mask": lesion,
                "brain_mask": brain["brain_mask"],
                "steps": mededit_steps,
                "slices": (middle - 2, middle + 2),
            },
        ),
        "pie, demo-cxr, chest 512 px": ("pie", cxr["cxr"], "demo-cxr", {"roi_mask": cxr["edit_mask"]}),
        "instruct, demo-cxr-instruct, chest 512 px": (
            "instruct",
            cxr["cxr"],
            "demo-cxr-instruct",
            {"prompt": "add a right pleural effusion"},
        ),
    }


def fidelity(result, exact, source) -> tuple[str, int]:
    """PSNR against ``exact`` inside the editable region, and voxels differing outside it."""
    editable = method(result.provenance["method"]).editable(result.masks)
    if editable is None:
        editable = np.ones(source.shape, bool)
    ours, theirs = result.image.array.astype(np.float64), exact.image.array.astype(np.float64)
    outside = int((ours != theirs)[~editable].sum())
    error = np.mean((ours - theirs)[editable] ** 2)
    if error == 0:
        return "exact", outside
    peak = float(source.max()) - float(source.min())
    return f"{10 * np.log10(peak**2 / error):.1f} dB", outside


def timed_edit(name, image, model, options, repeats: int, **run):
    """The edit's result and its fastest time over ``repeats`` runs after an unmeasured one (first-pass
    and compile costs); the fastest, because on a 2-core machine any other process only adds time."""
    edit(name, image, model=model, **options, **run)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = edit(name, image, model=model, **options, **run)
        times.append(time.perf_counter() - started)
    return result, min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mededit-steps", type=int, default=250)
    parser.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--compile", action="store_true", help="also the compiled rows (minutes of compile)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per row (the fastest is shown)")
    parser.add_argument(
        "--precision",
        default="float32",
        help="the network's arithmetic for every row: float32 (default) is what 'auto' picks on a CPU "
        "without native bfloat16; 'auto' measures this machine's own default",
    )
    parser.add_argument("--only", nargs="*", help="methods to run (default: all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    command = "python benchmarks/speed.py " + " ".join(
        [
            f"--mededit-steps {args.mededit_steps}",
            f"--repeats {args.repeats}",
            f"--precision {args.precision}",
        ]
        + ["--intervals"]
        + list(map(str, args.intervals))
        + (["--compile"] if args.compile else [])
    )
    lines = [
        "# Speed: feature reuse and compilation against the exact default",
        "",
        f"`{command}` on {platform.platform()}, {cpu()}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; the fastest of {args.repeats} edits after a first one.",
        "",
        "| edit | run | time, s | speed-up | PSNR in editable region | voxels moved outside "
        "| passes: whole / shallow |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    levers = [(f"cache_interval {n}", {"cache_interval": n}) for n in args.intervals]
    if args.compile:
        best = max(args.intervals)
        levers += [
            ("compiled", {"compile_network": True}),
            (f"compiled + cache_interval {best}", {"compile_network": True, "cache_interval": best}),
        ]
    for label, (name, image, model_name, options) in cases(args.mededit_steps).items():
        if args.only and name not in args.only:
            continue
        model = load_model(model_name)
        options = {**options, "precision": args.precision}
        exact, exact_seconds = timed_edit(name, image, model, options, args.repeats)
        lines.append(
            f"| {label} | exact ({exact.provenance['precision']}) | {exact_seconds:.1f} | 1.00x | exact "
            f"| 0 | {exact.provenance['model_evaluations']} / 0 |"
        )
        for lever, run in levers:
            result, seconds = timed_edit(name, image, model, options, args.repeats, **run)
            psnr, outside = fidelity(result, exact, image.array)
            exact_passes = {"whole_passes": "all", "shallow_passes": 0}
            passes = result.provenance["feature_cache"] or exact_passes
            lines.append(
                f"| {label} | {lever} | {seconds:.1f} | {exact_seconds / seconds:.2f}x | {psnr} "
                f"| {outside} | {passes['whole_passes']} / {passes['shallow_passes']} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "A shallow pass computes the input convolution, the final up block's last layer and the head on",
        "the deep features kept from the last whole pass (editing/feature_cache.py). Outside the editable",
        "region every voxel is the source's, whatever the lever: the last column counts any that moved.",
        "diffusers' own RePaint pipeline is not in the table: it takes an unconditional UNet2DModel, and",
        "the demo models are conditioned (text, mask channels), so it cannot run them.",
    ]
    write_report(lines, args.out)
    return 0


def cpu() -> str:
    """The CPU's name and whether it computes bfloat16 natively (the lever these figures do not use)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU"
    )
    native = "avx512_bf16" in info or "amx_bf16" in info
    return f"{name} ({'native' if native else 'no native'} bfloat16)"


if __name__ == "__main__":
    raise SystemExit(main())

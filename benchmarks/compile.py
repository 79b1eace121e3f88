"""torch.compile for the denoising network: its compile time against the time it saves per forward pass.

    python benchmarks/compile.py [--repeats 5] [--out benchmarks/results/compile-cpu.md]

For each demo UNet, as napari-medit loads it on this device (float32; channels_last on CPU), at
the batch a slice-wise edit gives it: the eager forward pass, the first compiled call (the
compile), and the compiled pass (medians). Break-even is compile time / time saved per pass: the
number of forward passes an edit must make before compiling pays. For scale: MedEdit's 1000
steps on one batch of slices are 1000 passes; RadEdit's 100 steps are 300 (inversion + guided).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch
from _report import write_report

from napari_medit.backends import load_model


def timed(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cases():
    cxr, brain = load_model("demo-cxr"), load_model("demo-brain")
    side = cxr.resolution // cxr.latent_factor
    x = torch.randn(8, cxr.unet.config.in_channels, side, side).contiguous(memory_format=cxr.memory_format)
    text = cxr.encode_text(["pleural effusion"] * 8)
    yield (
        f"demo-cxr (diffusers, text), 8 x 1 x {side}^2",
        cxr.unet,
        lambda net: net(x, torch.full((8,), 500), encoder_hidden_states=text).sample,
    )
    side = brain.resolution
    y = torch.randn(4, 3, side, side).contiguous(memory_format=brain.memory_format)
    yield (
        f"demo-brain (MONAI), 4 x 3 x {side}^2",
        brain.model,
        lambda net: net(y, timesteps=torch.full((4,), 500)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args()
    lines = [
        "# torch.compile (CPU)",
        "",
        f"Command: `python benchmarks/compile.py --repeats {args.repeats}`; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        "| UNet | eager pass | compile (first call) | compiled pass | speed-up | break-even (passes) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    with torch.no_grad():
        for label, network, forward in cases():
            forward(network)  # warm-up
            eager = timed(functools.partial(forward, network), args.repeats)
            compiled = torch.compile(network)
            start = time.perf_counter()
            forward(compiled)
            compile_seconds = time.perf_counter() - start
            fast = timed(functools.partial(forward, compiled), args.repeats)
            saved = eager - fast
            break_even = f"{compile_seconds / saved:.0f}" if saved > 0 else "never"
            lines.append(
                f"| {label} | {eager:.3f} s | {compile_seconds:.1f} s | {fast:.3f} s | {eager / fast:.2f}x | "
                f"{break_even} |"
            )
            print(lines[-1], flush=True)
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

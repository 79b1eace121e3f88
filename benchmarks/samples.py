"""What N samples of an edit cost against N single edits, side by side in one process, on the demo
models: RadEdit on the chest sample and MedEdit on four slices of the brain sample. With ``--figure``,
also draws the map a reader meets (docs/variability.md): the source, two samples and their spread.

    python benchmarks/samples.py [--counts 1 2 4 8] [--out benchmarks/results/samples-cpu.md]
                                 [--figure docs/images/variability.png]
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
from napari_medit.editing import edit
from napari_medit.sample_data import load_brain, load_cxr


def cases() -> dict[str, tuple]:
    cxr, brain = load_cxr(), load_brain()
    lesion = brain["lesion_mask"].array
    axial = int(np.argmax(np.abs(brain["t1"].affine[2, :3])))
    touched = np.flatnonzero(lesion.any(axis=tuple(a for a in range(3) if a != axial)))
    middle = int(touched[len(touched) // 2])
    return {
        "radedit, demo-cxr, chest 512 px, 20 steps": (
            "radedit",
            cxr["cxr"],
            load_model("demo-cxr"),
            {"edit_mask": cxr["edit_mask"], "keep_mask": cxr["keep_mask"], "steps": 20},
        ),
        "mededit, demo-brain, 4 axial slices, 50 steps": (
            "mededit",
            brain["t1"],
            load_model("demo-brain"),
            {
                "pathology_mask": lesion,
                "brain_mask": brain["brain_mask"],
                "steps": 50,
                "slices": (middle - 2, middle + 2),
            },
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    lines = [
        "# Samples of an edit: N samples against N single edits",
        "",
        f"`python benchmarks/samples.py --counts {' '.join(map(str, args.counts))}` on "
        f"{platform.platform()}, torch {torch.__version__} with {torch.get_num_threads()} threads; "
        "models loaded before timing.",
        "",
        "| edit | N | N samples, s | N single edits, s | ratio | spread (std) mean / p95 | change mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (method, image, model, options) in cases().items():
        edit(method, image, model=model, **{**options, "steps": 2})  # first-pass costs out of the figures
        for count in args.counts:
            started = time.perf_counter()
            many = edit(method, image, model=model, samples=count, **options)
            together = time.perf_counter() - started
            started = time.perf_counter()
            for seed in many.provenance.get("samples", [0]):
                edit(method, image, model=model, seed=seed, **options)
            apart = time.perf_counter() - started
            spread = many.provenance.get("variability")
            figures = (
                f"{spread['std_mean']:.3g} / {spread['std_p95']:.3g} | {spread['change_mean']:.3g}"
                if spread
                else "- | -"
            )
            lines.append(
                f"| {name} | {count} | {together:.1f} | {apart:.1f} | {together / apart:.2f} | {figures} |"
            )
            if args.figure and method == "radedit" and count == max(args.counts):
                draw(args.figure, image.array, many)
    lines += [
        "",
        "On a CPU the samples run one after another with a single edit's batches, so that each is that",
        "edit bit for bit: the ratio is 1 up to timing noise. The spread is in the image's own units.",
    ]
    write_report(lines, args.out)


def draw(path: Path, source: np.ndarray, result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("source", source, "gray"),
        ("sample 1", result.samples[0].array, "gray"),
        ("sample 2", result.samples[1].array, "gray"),
        (f"std over {len(result.samples)} samples", result.variability, "inferno"),
    ]
    figure, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for axis, (title, values, colours) in zip(axes, panels, strict=True):
        shown = axis.imshow(values, cmap=colours)
        axis.set_title(title)
        axis.axis("off")
    figure.colorbar(shown, ax=axes[-1], fraction=0.046, label="grey levels")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


if __name__ == "__main__":
    main()

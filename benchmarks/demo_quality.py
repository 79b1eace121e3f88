"""Demo-model quality: do edited regions carry the texture of their surroundings, and do the edits
still happen? The same edits with each set of demo models, side by side.

    python benchmarks/demo_quality.py \
        --brain "64 px (bundled)=demo-brain" --brain "128 px=.training/demo-brain-128" \
        --cxr "64 px (bundled)=demo-cxr" --out benchmarks/results/demo_quality.md

Texture: the mean squared intensity gradient (image in window units, 0..1) inside the edited
region of the result, divided by the same measure on comparable anatomy elsewhere in the same
result: the cortex on the edited slices for the brain (the brain's outer 6 voxels), the
contralateral lower lung zone for the chest. 1 means the edit is as textured as the anatomy
around it; a blur gives far less.

The edit still happens: MedEdit's lesion mean against the source's mean there (below 1:
hypointense); RadEdit's 'No findings' removal, the effusion's mean before and after (it should
fall towards aerated lung); PIE's 'Pleural effusion' progression, the effusion region's mean at
each step (it should rise). Cost: wall time of each edit on this machine.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_medit.backends import load_model
from napari_medit.editing import edit
from napari_medit.editing.slicing import IntensityWindow
from napari_medit.sample_data import load_brain, load_cxr
from napari_medit.sample_data.cxr_phantom import generate_cxr_phantom, to_uint8

MEDEDIT_STEPS = 250  # as make demo
CORTEX_VOXELS = 6


def gradient_energy(image: np.ndarray, region: np.ndarray, window: IntensityWindow) -> float:
    """Mean squared in-plane gradient of ``image`` (window units) over ``region`` (2D or a slice stack)."""
    unit = window.to_unit(image.astype(np.float64))
    axes = (-2, -1)
    gradients = np.gradient(unit, axis=axes)
    energy = sum(g**2 for g in gradients)
    return float(energy[region].mean())


def brain_row(label: str, spec: str) -> dict:
    from scipy.ndimage import binary_erosion

    brain = load_brain()
    t1, lesion, mask = brain["t1"], brain["lesion_mask"].array > 0, brain["brain_mask"].array > 0
    centre = int(np.argwhere(lesion)[:, 2].mean())
    slices = (centre - 1, centre + 2)
    model = load_model(spec)
    start = time.perf_counter()
    result = edit("mededit", t1, model=model, pathology_mask=lesion, brain_mask=mask, axis="axial",
                  slices=slices, steps=MEDEDIT_STEPS, seed=0)
    seconds = time.perf_counter() - start
    out, source = result.image.array, t1.array
    edited = result.masks["inpaint_mask"] & (out != source)
    in_slices = np.zeros_like(lesion)
    in_slices[..., slices[0]:slices[1]] = True
    cortex = mask & ~binary_erosion(mask, iterations=CORTEX_VOXELS) & in_slices & ~result.masks["inpaint_mask"]
    window = IntensityWindow.of(source)
    texture = gradient_energy(out, edited, window) / gradient_energy(out, cortex, window)
    source_texture = gradient_energy(source, edited, window) / gradient_energy(source, cortex, window)
    hypo = float(out[lesion & edited].mean() / source[lesion & edited].mean())
    return {"models": label, "resolution": model.resolution, "texture": texture, "source texture": source_texture,
            "lesion / source": hypo, "seconds": seconds, "slices": slices[1] - slices[0]}


def cxr_rows(label: str, spec: str) -> dict:
    from napari_medit.instructions import Side, hemithorax

    sample = load_cxr()
    truth = generate_cxr_phantom(512, 0, effusion="right")
    effusion, lungs = truth.masks["effusion"], truth.masks["lungs"]
    rows = np.arange(512)[:, None] >= 256
    contralateral = hemithorax(lungs, Side.left) & rows  # the left lower zone: aerated lung
    model = load_model(spec)
    image = sample["cxr"]
    window = IntensityWindow.of(image.array)
    start = time.perf_counter()
    removal = edit("radedit", image, model=model, prompt="No findings", edit_mask=sample["edit_mask"],
                   keep_mask=sample["keep_mask"], seed=0)
    radedit_seconds = time.perf_counter() - start
    out = removal.image.array
    edited = (sample["edit_mask"].array > 0) & (out != image.array)
    healthy = image.with_array(to_uint8(generate_cxr_phantom(512, 0).image))
    start = time.perf_counter()
    pie = edit("pie", healthy, model=model, prompt="Pleural effusion", roi_mask=sample["edit_mask"], seed=0)
    pie_seconds = time.perf_counter() - start
    steps = [float(v.array[effusion].astype(float).mean()) for v in pie.progression]
    return {"models": label, "resolution": model.resolution,
            "texture": gradient_energy(out, edited, window) / gradient_energy(out, contralateral, window),
            "healthy texture": gradient_energy(healthy.array, edited, window)
            / gradient_energy(healthy.array, contralateral, window),
            "effusion before": float(image.array[effusion].astype(float).mean()),
            "effusion after": float(out[effusion].astype(float).mean()),
            "radedit seconds": radedit_seconds,
            "pie steps": [round(float(healthy.array[effusion].mean()), 1)] + [round(m, 1) for m in steps],
            "pie rises": sum(b > a for a, b in zip(steps, steps[1:])), "pie seconds": pie_seconds}


def table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brain", action="append", default=[], help="LABEL=MODEL (repeatable)")
    parser.add_argument("--cxr", action="append", default=[], help="LABEL=MODEL (repeatable)")
    parser.add_argument("--out", help="write the figures as markdown here")
    args = parser.parse_args()
    command = "python benchmarks/demo_quality.py " + " ".join(
        f'--{kind} "{spec}"' for kind in ("brain", "cxr") for spec in getattr(args, kind))
    lines = ["# Demo-model quality (CPU)", "",
             f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}", f"Command: `{command}`", "", __doc__.split("\n\n", 2)[2].strip(), ""]
    if args.brain:
        lines += ["## Brain: MedEdit on the sample's lesion (3 axial slices, 250 strided DDPM steps)", ""]
        lines += table([brain_row(*spec.split("=", 1)) for spec in args.brain]) + [""]
    if args.cxr:
        lines += ["## Chest: RadEdit removes the effusion (100 steps), PIE grows one (10 x 25 DDIM steps)", ""]
        lines += table([cxr_rows(*spec.split("=", 1)) for spec in args.cxr]) + [""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

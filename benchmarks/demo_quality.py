"""Demo-model quality: do edited regions carry the texture of their surroundings, and do the edits
still happen? The same edits with each set of demo models, side by side.

    python benchmarks/demo_quality.py \
        --brain "64 px (bundled)=demo-brain" --brain "128 px=.training/demo-brain-128" \
        --cxr "64 px (bundled)=demo-cxr" --instruct "64 px (bundled)=demo-cxr-instruct" \
        --out benchmarks/results/demo_quality.md [--mededit-steps 250 100] \
        [--radedit-steps 100 50 --pie-steps 50 20] [--instruct-steps 100 50] [--crops docs/images]

Texture: the mean squared intensity gradient (image in window units, 0..1) inside the edited
region of the result, divided by the same measure on comparable anatomy elsewhere in the same
result: the cortex on the edited slices for the brain (the brain's outer 6 voxels), the
contralateral lower lung zone for the chest. 1 means the edit is as textured as the anatomy
around it; a blur gives far less.

The edit still happens: MedEdit's lesion mean against the source's mean there (below 1:
hypointense); RadEdit's 'No findings' removal, the effusion's mean before and after (it should
fall towards aerated lung); PIE's 'Pleural effusion' progression, the effusion region's mean at
each step (it should rise); InstructX2X's 'remove the right pleural effusion' in the lung mask,
the effusion's mean before and after. Cost: wall time of each edit on this machine. RadEdit
skips its reference ratio of the steps (36 of 100), whatever their number.

Crops: the source and each model's result, around the lesion (brain, the lesion's centre slice)
and the effusion (chest, RadEdit's removal), side by side at the source's resolution.
"""

from __future__ import annotations

import argparse
import platform
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from nibabel.orientations import apply_orientation

from napari_medit.backends import load_model
from napari_medit.editing import edit
from napari_medit.io.image import PLANES, plane_transforms
from napari_medit.preprocessing import IntensityWindow
from napari_medit.sample_data import load_brain, load_cxr
from napari_medit.sample_data.cxr_phantom import generate_cxr_phantom, to_uint8

CORTEX_VOXELS = 6
CROP_MARGIN = 0.5  # of the region's extent, on each side


def gradient_energy(image: np.ndarray, region: np.ndarray, window: IntensityWindow) -> float:
    """Mean squared in-plane gradient of ``image`` (window units) over ``region`` (2D or a slice stack)."""
    unit = window.to_unit(image.astype(np.float64))
    axes = (-2, -1)
    gradients = np.gradient(unit, axis=axes)
    energy = sum(g**2 for g in gradients)
    return float(energy[region].mean())


def brain_row(label: str, spec: str, steps: int, crops: dict) -> dict:
    from scipy.ndimage import binary_erosion

    brain = load_brain()
    t1, lesion, mask = brain["t1"], brain["lesion_mask"].array > 0, brain["brain_mask"].array > 0
    centre = int(np.argwhere(lesion)[:, 2].mean())
    slices = (centre - 1, centre + 2)
    model = load_model(spec)
    start = time.perf_counter()
    result = edit(
        "mededit",
        t1,
        model=model,
        pathology_mask=lesion,
        brain_mask=mask,
        axis="axial",
        slices=slices,
        steps=steps,
        seed=0,
    )
    seconds = time.perf_counter() - start
    out, source = result.image.array, t1.array
    edited = result.masks["inpaint_mask"] & (out != source)
    in_slices = np.zeros_like(lesion)
    in_slices[..., slices[0] : slices[1]] = True
    cortex = (
        mask & ~binary_erosion(mask, iterations=CORTEX_VOXELS) & in_slices & ~result.masks["inpaint_mask"]
    )
    window = IntensityWindow.of(source)
    texture = gradient_energy(out, edited, window) / gradient_energy(out, cortex, window)
    source_texture = gradient_energy(source, edited, window) / gradient_energy(source, cortex, window)
    hypo = float(out[lesion & edited].mean() / source[lesion & edited].mean())
    # Shown as napari-medit shows it: the axial slice in radiological view.
    there, _ = plane_transforms(t1.affine, PLANES["axial"])

    def axial(volume):
        return apply_orientation(volume, there)

    index = int(np.argwhere(axial(lesion))[:, 0].mean())
    box = crop_box(axial(lesion)[index])
    crops.setdefault("source", axial(source)[index][box])
    crops[f"{label}, {steps} steps"] = axial(out)[index][box]
    return {
        "models": label,
        "resolution": model.resolution,
        "steps": steps,
        "texture": texture,
        "source texture": source_texture,
        "lesion / source": hypo,
        "seconds": seconds,
        "slices": slices[1] - slices[0],
    }


def cxr_rows(label: str, spec: str, radedit_steps: int, pie_steps: int, crops: dict) -> dict:
    sample, effusion, contralateral = chest_regions()
    model = load_model(spec)
    image = sample["cxr"]
    window = IntensityWindow.of(image.array)
    start = time.perf_counter()
    removal = edit(
        "radedit",
        image,
        model=model,
        prompt="No findings",
        edit_mask=sample["edit_mask"],
        keep_mask=sample["keep_mask"],
        steps=radedit_steps,
        seed=0,
    )
    radedit_seconds = time.perf_counter() - start
    out = removal.image.array
    edited = (sample["edit_mask"].array > 0) & (out != image.array)
    healthy = image.with_array(to_uint8(generate_cxr_phantom(512, 0).image))
    start = time.perf_counter()
    pie = edit(
        "pie",
        healthy,
        model=model,
        prompt="Pleural effusion",
        roi_mask=sample["edit_mask"],
        steps=pie_steps,
        seed=0,
    )
    pie_seconds = time.perf_counter() - start
    steps = [float(v.array[effusion].astype(float).mean()) for v in pie.progression]
    box = crop_box(effusion)
    crops.setdefault("source", image.array[box])
    crops[f"{label}, {radedit_steps} steps"] = out[box]
    return {
        "models": label,
        "resolution": model.resolution,
        "radedit steps": radedit_steps,
        "texture": gradient_energy(out, edited, window) / gradient_energy(out, contralateral, window),
        "healthy texture": gradient_energy(healthy.array, edited, window)
        / gradient_energy(healthy.array, contralateral, window),
        "effusion before": float(image.array[effusion].astype(float).mean()),
        "effusion after": float(out[effusion].astype(float).mean()),
        "radedit seconds": radedit_seconds,
        "pie DDIM steps": pie_steps,
        "pie steps": [round(float(healthy.array[effusion].mean()), 1)] + [round(m, 1) for m in steps],
        "pie rises": sum(b > a for a, b in pairwise(steps)),
        "pie seconds": pie_seconds,
    }


def instruct_row(label: str, spec: str, steps: int, crops: dict) -> dict:
    from napari_medit.findings import FindingsClassifier

    sample, effusion, contralateral = chest_regions()
    model = load_model(spec)
    image = sample["cxr"]
    window = IntensityWindow.of(image.array)
    start = time.perf_counter()
    result = edit(
        "instructx2x",
        image,
        model=model,
        prompt="remove the right pleural effusion",
        lung_mask=sample["lung_mask"],
        steps=steps,
        seed=0,
    )
    seconds = time.perf_counter() - start
    out = result.image.array
    edited = out != image.array
    box = crop_box(effusion)
    crops.setdefault("source", image.array[box])
    crops[f"{label}, {steps} steps"] = out[box]
    p_effusion = FindingsClassifier.load().probabilities
    return {
        "models": label,
        "resolution": model.resolution,
        "steps": steps,
        "texture": gradient_energy(out, edited & effusion, window)
        / gradient_energy(out, contralateral, window),
        "effusion before": float(image.array[effusion].astype(float).mean()),
        "effusion after": float(out[effusion].astype(float).mean()),
        "left lower zone change": float(
            np.abs(out[contralateral].astype(float) - image.array[contralateral].astype(float)).mean()
        ),
        "p(effusion) before": p_effusion(image.array)["effusion"],
        "p(effusion) after": p_effusion(out)["effusion"],
        "seconds": seconds,
    }


def chest_regions():
    """The chest sample, its right effusion (the phantom's truth) and the left lower lung zone (aerated)."""
    from napari_medit.instructions import Side, hemithorax

    truth = generate_cxr_phantom(512, 0, effusion="right")
    rows = np.arange(512)[:, None] >= 256
    return load_cxr(), truth.masks["effusion"], hemithorax(truth.masks["lungs"], Side.left) & rows


def crop_box(region: np.ndarray) -> tuple[slice, slice]:
    """The region's bounding box grown by CROP_MARGIN of its extent on each side, inside the image."""
    corners = np.argwhere(region)
    low, high = corners.min(0), corners.max(0) + 1
    pad = ((high - low) * CROP_MARGIN).astype(int)
    return tuple(
        slice(max(0, a - p), min(n, b + p)) for a, b, p, n in zip(low, high, pad, region.shape, strict=True)
    )


def save_crops(crops: dict, path: Path, title: str) -> None:
    """One row of grey crops, each titled, on a shared intensity window (the source's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = IntensityWindow.of(crops["source"])
    figure, axes = plt.subplots(1, len(crops), figsize=(2.6 * len(crops), 3.0), squeeze=False)
    for axis, (name, crop) in zip(axes[0], crops.items(), strict=True):
        axis.imshow(
            window.to_unit(crop.astype(np.float64)), cmap="gray", vmin=0, vmax=1, interpolation="nearest"
        )
        axis.set_title(name, fontsize=8)
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brain", action="append", default=[], help="LABEL=MODEL (repeatable)")
    parser.add_argument("--cxr", action="append", default=[], help="LABEL=MODEL (repeatable)")
    parser.add_argument(
        "--mededit-steps",
        type=int,
        nargs="+",
        default=[250],
        help="strided DDPM steps for each brain model (make demo: 250)",
    )
    parser.add_argument("--instruct", action="append", default=[], help="LABEL=MODEL (repeatable)")
    parser.add_argument(
        "--radedit-steps",
        type=int,
        nargs="+",
        default=[100],
        help="RadEdit steps for each chest model (the paper's 100), paired with --pie-steps",
    )
    parser.add_argument(
        "--pie-steps",
        type=int,
        nargs="+",
        default=[50],
        help="PIE's DDIM steps per iteration, of which strength 0.5 runs (PIE's 50)",
    )
    parser.add_argument(
        "--instruct-steps",
        type=int,
        nargs="+",
        default=[100],
        help="InstructX2X's DDIM steps for each instruction model (its 100)",
    )
    parser.add_argument("--out", help="write the figures as markdown here")
    parser.add_argument(
        "--crops",
        help="write quality_brain.png / quality_cxr.png / quality_instruct.png (before/after crops) here",
    )
    args = parser.parse_args()
    if len(args.radedit_steps) != len(args.pie_steps):
        parser.error("give as many --pie-steps as --radedit-steps: each pair is one chest row per model")
    command = "python benchmarks/demo_quality.py " + " ".join(
        f'--{kind} "{spec}"' for kind in ("brain", "cxr", "instruct") for spec in getattr(args, kind)
    )
    for flag, values, used in (
        ("mededit-steps", args.mededit_steps, args.brain),
        ("radedit-steps", args.radedit_steps, args.cxr),
        ("pie-steps", args.pie_steps, args.cxr),
        ("instruct-steps", args.instruct_steps, args.instruct),
    ):
        command += f" --{flag} " + " ".join(map(str, values)) if used else ""
    lines = [
        "# Demo-model quality (CPU)",
        "",
        (
            f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
            f"threads, "
            f"torch {torch.__version__}"
        ),
        f"Command: `{command}`",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
    ]
    brain_crops, cxr_crops, instruct_crops = {}, {}, {}
    if args.brain:
        lines += ["## Brain: MedEdit on the sample's lesion (3 axial slices, strided DDPM)", ""]
        lines += [
            *table(
                [
                    brain_row(*spec.split("=", 1), steps, brain_crops)
                    for spec in args.brain
                    for steps in args.mededit_steps
                ]
            ),
            "",
        ]
    if args.cxr:
        lines += ["## Chest: RadEdit removes the effusion, PIE grows one (10 iterations at strength 0.5)", ""]
        lines += [
            *table(
                [
                    cxr_rows(*spec.split("=", 1), radedit, pie, cxr_crops)
                    for spec in args.cxr
                    for radedit, pie in zip(args.radedit_steps, args.pie_steps, strict=True)
                ]
            ),
            "",
        ]
    if args.instruct:
        lines += ["## Chest: InstructX2X, 'remove the right pleural effusion' in the lung mask", ""]
        lines += [
            *table(
                [
                    instruct_row(*spec.split("=", 1), steps, instruct_crops)
                    for spec in args.instruct
                    for steps in args.instruct_steps
                ]
            ),
            "",
        ]
    if args.crops:
        Path(args.crops).mkdir(parents=True, exist_ok=True)
        if brain_crops:
            save_crops(
                brain_crops,
                Path(args.crops) / "quality_brain.png",
                "MedEdit: a lesion where the mask is (its centre slice)",
            )
        if cxr_crops:
            save_crops(
                cxr_crops,
                Path(args.crops) / "quality_cxr.png",
                "RadEdit 'No findings': the right effusion removed",
            )
        if instruct_crops:
            save_crops(
                instruct_crops,
                Path(args.crops) / "quality_instruct.png",
                "InstructX2X 'remove the right pleural effusion' in the lung mask",
            )
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

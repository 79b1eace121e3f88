"""Slice consistency of slice-wise volume edits: independent, shared and correlated slice noise,
and through-plane smoothing, measured side by side in one run.

    python benchmarks/slice_consistency.py --out benchmarks/results/slice_consistency.md \
        --figure docs/images/slice_noise_coronal.png

MedEdit with demo-brain (100 strided DDPM steps, seed 0) paints the sample lesion on axial
slices of three volumes. No second subject's brain MRI ships with any package we can install
offline, so the other volumes are the same MNI152 2009a anatomy at other slice spacings:
- brain sample: the bundled 1.5 mm volume;
- MNI 1 mm: nilearn's 1 mm template, skull-stripped and scaled like the sample (nilearn, the
  testing extra), with the sample's lesion and brain masks resampled onto it;
- 3 mm slices: the sample resampled to 3 mm axial slices, like a clinical 2D acquisition.
The correlation length is in mm, so the same L should act the same on all three.

Figures per run:
- slice consistency: the mean change between neighbouring edited slices, over the source's own
  (napari_medit.metrics.slice_consistency; 1 = as smooth across slices as the anatomy);
- lesion contrast: how much darker the lesion is than the tissue 3 mm around it, inside the
  brain, on the edited slices (the lesion must stay as visible as with independent noise);
- ring MAE: the mean |result - source| in the tissue MedEdit regenerates around the lesion
  (the dilated inpainting region minus the lesion), in source units of 0..1000;
- outside PSNR: fidelity outside the inpainting region ('inf': bit-identical, as it must be);
- wall: seconds, and relative to independent noise on the same volume.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_dilation

from napari_medit.backends import load_model
from napari_medit.editing import edit
from napari_medit.io import MedicalImage
from napari_medit.io.image import plane_axis
from napari_medit.metrics import relative_contrast
from napari_medit.sample_data import load_brain

STEPS = 100
CONFIGURATIONS = {  # name -> run options (the first is the yardstick for wall time)
    "independent": dict(slice_noise="independent"),
    "shared": dict(slice_noise="shared"),
    "correlated L=3 mm (default)": dict(slice_noise="correlated", noise_correlation_mm=3.0),
    "correlated L=6 mm": dict(slice_noise="correlated", noise_correlation_mm=6.0),
    "correlated L=12 mm": dict(slice_noise="correlated", noise_correlation_mm=12.0),
    "correlated L=24 mm": dict(slice_noise="correlated", noise_correlation_mm=24.0),
    "independent + smoothing 0.1": dict(slice_noise="independent", through_plane_smoothing=0.1),
    "independent + smoothing 0.25": dict(slice_noise="independent", through_plane_smoothing=0.25),
    "independent + smoothing 0.5": dict(slice_noise="independent", through_plane_smoothing=0.5),
    "correlated L=3 mm + smoothing 0.25": dict(
        slice_noise="correlated", noise_correlation_mm=3.0, through_plane_smoothing=0.25
    ),
}
FIGURE_RUNS = ("independent", "shared", "correlated L=3 mm (default)", "independent + smoothing 0.25")


def volumes() -> dict[str, dict[str, MedicalImage]]:
    sample = load_brain()
    return {
        "brain sample (1.5 mm)": sample,
        "MNI 1 mm": mni_1mm(sample),
        "3 mm slices": thick_slices(sample, 3.0),
    }


def _resampled(image: MedicalImage, shape, affine, order: int) -> np.ndarray:
    import nibabel as nib
    from nibabel.processing import resample_from_to

    source = nib.Nifti1Image(np.asarray(image.array, np.float32), image.affine)
    return resample_from_to(source, (shape, affine), order=order).get_fdata()


def mni_1mm(sample: dict[str, MedicalImage]) -> dict[str, MedicalImage]:
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=1)
    shape, affine = template.shape, template.affine
    brain = _resampled(sample["brain_mask"], shape, affine, 0) > 0.5
    values = np.clip(template.get_fdata(), 0, None) * brain
    t1 = np.round(1000.0 * values / values.max()).astype(np.int16)
    lesion = _resampled(sample["lesion_mask"], shape, affine, 0) > 0.5
    return {
        "t1": MedicalImage(t1, affine),
        "brain_mask": MedicalImage(brain.astype(np.uint8), affine),
        "lesion_mask": MedicalImage(lesion.astype(np.uint8), affine),
    }


def thick_slices(sample: dict[str, MedicalImage], thickness_mm: float) -> dict[str, MedicalImage]:
    affine = sample["t1"].affine.copy()
    factor = thickness_mm / np.linalg.norm(affine[:3, 2])
    affine[:3, 2] *= factor
    affine[:3, 3] += affine[:3, 2] / 2 - sample["t1"].affine[:3, 2] / 2  # slab centres
    shape = (*sample["t1"].array.shape[:2], int(sample["t1"].array.shape[2] / factor))
    t1 = np.round(_resampled(sample["t1"], shape, affine, 1)).astype(np.int16)
    brain = _resampled(sample["brain_mask"], shape, affine, 0) > 0.5
    lesion = (_resampled(sample["lesion_mask"], shape, affine, 0) > 0.5) & brain
    return {
        "t1": MedicalImage(t1, affine),
        "brain_mask": MedicalImage(brain.astype(np.uint8), affine),
        "lesion_mask": MedicalImage(lesion.astype(np.uint8), affine),
    }


def measure(model, volume: dict[str, MedicalImage], options: dict) -> dict:
    started = time.perf_counter()
    result = edit(
        "mededit",
        volume["t1"],
        model=model,
        pathology_mask=volume["lesion_mask"],
        brain_mask=volume["brain_mask"],
        axis="axial",
        steps=STEPS,
        seed=0,
        **options,
    )
    seconds = time.perf_counter() - started
    source, out = volume["t1"].array.astype(np.float64), result.image.array.astype(np.float64)
    lesion, brain = volume["lesion_mask"].array > 0, volume["brain_mask"].array > 0
    inpaint = result.masks["inpaint_mask"]
    axis, backwards = plane_axis(volume["t1"].affine, "axial")
    indices = [source.shape[axis] - 1 - i if backwards else i for i in result.edited_slices]
    edited = np.zeros(source.shape, bool)
    edited[(slice(None),) * axis + (indices,)] = True
    structure = _ball(3.0 / np.array(volume["t1"].spacing))
    around = binary_dilation(lesion, structure) & brain & ~lesion & edited
    ring = inpaint & ~lesion
    return {
        "consistency": result.metrics["slice_consistency"]["ratio"],
        "contrast": relative_contrast(out, lesion & edited, around),
        "ring_mae": float(np.abs(out - source)[ring].mean()),
        "outside_psnr": result.metrics["outside"]["psnr"],
        "seconds": seconds,
        "slices": len(result.edited_slices),
        "result": out,
    }


def _ball(radii_vox) -> np.ndarray:
    r = np.ceil(radii_vox).astype(int)
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((g / max(rad, 1e-6)) ** 2 for g, rad in zip(grid, radii_vox, strict=True)) <= 1.0


def coronal_figure(volume: dict[str, MedicalImage], results: dict[str, np.ndarray], path: Path) -> None:
    """Coronal reslices through the lesion centre (the edits are axial), one panel per run."""
    from PIL import Image, ImageDraw

    lesion = volume["lesion_mask"].array > 0
    centre = [int(np.mean(np.nonzero(lesion)[a])) for a in range(3)]
    half = 26  # voxels around the centre: 78 mm at 1.5 mm

    def panel(array):
        plane = array[:, centre[1], :]  # RAS: axis 1 is posterior-anterior, so this is a coronal plane
        crop = plane[centre[0] - half : centre[0] + half, centre[2] - half : centre[2] + half]
        unit = np.clip(crop / 1000.0, 0, 1)
        picture = np.rot90(unit)[:, ::-1]  # superior up, patient's right on the left (radiological)
        return np.kron(picture, np.ones((4, 4)))

    names = ["source", *results]
    panels = [panel(volume["t1"].array.astype(np.float64))] + [panel(results[n]) for n in results]
    side, label = panels[0].shape[0], 22
    canvas = Image.new("L", (side * len(panels) + 4 * (len(panels) - 1), side + label), 0)
    draw = ImageDraw.Draw(canvas)
    for k, (name, picture) in enumerate(zip(names, panels, strict=True)):
        x = k * (side + 4)
        canvas.paste(Image.fromarray(np.uint8(np.round(picture * 255))), (x, label))
        draw.text((x + 4, 4), name, fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    parser.add_argument("--figure", type=Path, help="coronal reslices of the brain sample's results (PNG)")
    parser.add_argument("--only", nargs="*", help="configuration names to run (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model("demo-brain")
    sample = load_brain()  # warm-up: the first edit of a process pays one-off costs
    edit(
        "mededit",
        sample["t1"],
        model=model,
        pathology_mask=sample["lesion_mask"],
        brain_mask=sample["brain_mask"],
        axis="axial",
        steps=2,
        seed=0,
    )
    lines = [
        "# Slice consistency of slice-wise edits",
        "",
        f"MedEdit, demo-brain, {STEPS} steps, seed 0, axial slices. Command: `python "
        f"benchmarks/slice_consistency.py "
        "--out benchmarks/results/slice_consistency.md --figure docs/images/slice_noise_coronal.png`.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, "
        f"{torch.get_num_threads()} threads.",
        "",
        "consistency: neighbouring-slice change of the result / of the source (1 = as smooth as the "
        "anatomy); "
        "contrast: lesion darker than the tissue 3 mm around it (relative); ring MAE: change of the "
        "regenerated "
        "tissue around the lesion (units of 0..1000); outside PSNR: outside the inpainting region ('inf' = "
        "bit-identical); wall: relative to independent noise on the same volume.",
        "",
    ]
    for volume_name, volume in volumes().items():
        spacing = volume["t1"].spacing[2]
        rows, figure_results = [], {}
        print(f"{volume_name}: {volume['t1'].array.shape}, {spacing:.1f} mm slices", flush=True)
        for name, options in CONFIGURATIONS.items():
            if args.only and name not in args.only and name != "independent":
                continue
            figures = measure(model, volume, options)
            rows.append((name, figures))
            if name in FIGURE_RUNS:
                figure_results[name] = figures["result"]
            print(
                f"  {name}: consistency {figures['consistency']:.2f}, contrast {figures['contrast']:.3f}, "
                f"{figures['seconds']:.1f} s",
                flush=True,
            )
        base = rows[0][1]["seconds"]
        lines += [
            f"## {volume_name}: {volume['t1'].array.shape}, {spacing:.1f} mm slices, "
            f"{rows[0][1]['slices']} edited",
            "",
            "| slice noise / smoothing | consistency | lesion contrast | ring MAE | outside PSNR | wall s | "
            "wall / independent |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, f in rows:
            lines.append(
                f"| {name} | {f['consistency']:.2f} | {f['contrast']:.3f} | {f['ring_mae']:.1f} | "
                f"{f['outside_psnr']} | {f['seconds']:.1f} | {f['seconds'] / base:.2f} |"
            )
        lines.append("")
        if args.figure and volume_name.startswith("brain sample"):
            coronal_figure(volume, figure_results, args.figure)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

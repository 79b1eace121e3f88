"""`make demo`: real edits with the bundled demo models on the bundled samples, shown in napari.

    python -m napari_medit.demo                      # interactive napari
    python -m napari_medit.demo --headless --out DIR # under Xvfb: files + screenshots, then quit

Four edits run (on the CPU in about three minutes):

- MedEdit on the brain sample: a lesion where the lesion mask is (demo-brain, axial slices);
- RadEdit on the chest phantom: its right pleural effusion removed inside the edit mask,
  the keep mask untouched (demo-cxr, prompt 'No findings');
- PIE on the chest phantom without findings: an effusion growing step by step in the ROI;
- InstructX2X on the chest phantom: 'remove the right pleural effusion' (demo-cxr-instruct),
  editing only where its guidance map (relevance x the effusion's template cut to the lungs) says.

Each result appears as a layer aligned with its source, with a difference map. Headless,
DIR gets the sample files, the results (NIfTI/PNG with their provenance JSON) and one
screenshot per edit (napari_mededit.png, napari_radedit.png, napari_pie.png,
napari_instructx2x.png) and InstructX2X's guidance map (instructx2x_guidance.png).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PLUGIN = "napari-medit"
MEDEDIT_STEPS = 100  # strided DDPM, a tenth of the published 1000: see benchmarks/results/demo_quality.md
# The 128 px chest models cost about 4x the 64 px ones per step; half RadEdit's 100 steps (skip 18),
# PIE at 20 DDIM steps per iteration and InstructX2X at 50 measured the same as the full counts
# (demo_quality.md).
# and the paper's defaults: skip 36 of 100 (scaled), guidance 15
RADEDIT = dict(prompt="No findings", steps=50)
PIE = dict(prompt="Pleural effusion", steps=20)  # and PIE's defaults: 10 steps of strength 0.5, guidance 7.5
INSTRUCTX2X = dict(prompt="remove the right pleural effusion", steps=50)  # and InstructX2X's guidance 7.5/1.5


def run_edits(out: Path | None = None, progress=print) -> dict:
    """The three demo edits (no napari needed): name -> (source, masks, EditResult)."""
    from scipy.ndimage import binary_dilation

    from .backends import load_model
    from .editing import edit
    from .io import MedicalImage
    from .sample_data import load_brain, load_cxr
    from .sample_data.cxr_phantom import generate_cxr_phantom, to_uint8

    runs = {}
    brain = load_brain()
    progress(f"MedEdit on the brain sample ({MEDEDIT_STEPS} steps, axial slices through the lesion)...")
    runs["mededit"] = (
        brain["t1"],
        {"lesion_mask": brain["lesion_mask"]},
        edit(
            "mededit",
            brain["t1"],
            model=load_model("demo-brain"),
            pathology_mask=brain["lesion_mask"],
            brain_mask=brain["brain_mask"],
            axis="axial",
            steps=MEDEDIT_STEPS,
            seed=0,
        ),
    )
    cxr = load_cxr()
    progress("RadEdit on the chest phantom: removing the effusion...")
    model = load_model("demo-cxr")
    runs["radedit"] = (
        cxr["cxr"],
        {"edit_mask": cxr["edit_mask"], "keep_mask": cxr["keep_mask"]},
        edit(
            "radedit",
            cxr["cxr"],
            model=model,
            edit_mask=cxr["edit_mask"],
            keep_mask=cxr["keep_mask"],
            seed=0,
            **RADEDIT,
        ),
    )
    progress("PIE on a phantom without findings: an effusion progressing in the right lower zone...")
    normal = generate_cxr_phantom(512, 0)
    healthy = MedicalImage(
        to_uint8(normal.image),
        cxr["cxr"].affine,
        {"format": "phantom", "modality": "DX", "phantom": normal.findings, "path": "phantom, no findings"},
    )
    roi = cxr["cxr"].with_array(binary_dilation(cxr["edit_mask"].array > 0, iterations=4).astype(np.uint8))
    runs["pie"] = (healthy, {"roi_mask": roi}, edit("pie", healthy, model=model, roi_mask=roi, seed=0, **PIE))
    progress("InstructX2X on the chest phantom: 'remove the right pleural effusion'...")
    runs["instructx2x"] = (
        cxr["cxr"],
        {"lung_mask": cxr["lung_mask"]},
        edit(
            "instructx2x",
            cxr["cxr"],
            model=load_model("demo-cxr-instruct"),
            lung_mask=cxr["lung_mask"],
            seed=0,
            **INSTRUCTX2X,
        ),
    )
    if out is not None:
        _write(out, runs)
    return runs


def _write(out: Path, runs: dict) -> None:
    from .io import write_image
    from .jobs import write_map

    for name, (source, _, result) in runs.items():
        suffix = ".png" if source.array.ndim == 2 else ".nii.gz"
        versions = result.progression or [result.image]
        for index, version in enumerate(versions, start=1):
            tail = f"_step{index:02d}" if len(versions) > 1 else ""
            write_image(out / f"{name}_result{tail}{suffix}", version)
        (out / f"{name}_provenance.json").write_text(json.dumps(result.provenance, indent=2))
        for map_name, values in result.maps.items():
            write_map(out / f"{name}.png", map_name, values, result.image)


def show(viewer, name: str, source, masks: dict, result, beside: bool = False) -> None:
    """Source, masks, result and difference as aligned layers (``beside``: the result and the
    difference shifted one image-width to the right, for a side-by-side screenshot)."""
    from .io.layers import to_layer_data

    def add(data, kwargs, kind):
        if beside and kwargs["name"].startswith(name):
            shift = np.zeros(len(kwargs["translate"]))
            shift[-1] = 1.05 * data.shape[-1] * kwargs["scale"][-1]
            kwargs = {**kwargs, "translate": tuple(np.asarray(kwargs["translate"]) + shift)}
        return getattr(viewer, f"add_{kind}")(data, **kwargs)

    add(*to_layer_data(source, "source", "image"))
    for mask_name, mask in masks.items():
        layer = add(*to_layer_data(mask, mask_name, "labels"))
        layer.opacity = 0.25 if mask_name == "keep_mask" else 0.4
    if result.progression:  # PIE: one plane per step, on a slider
        _, kwargs, _ = to_layer_data(result.image, f"{name} progression", "image")
        stack = np.stack([to_layer_data(v, "", "image")[0] for v in result.progression])
        kwargs.update(scale=(1, *kwargs["scale"]), translate=(0, *kwargs["translate"]), metadata={})
        add(stack, kwargs, "image")
    else:
        add(*to_layer_data(result.image, f"{name} result", "image"))
    difference = source.with_array(result.difference)
    data, kwargs, _ = to_layer_data(difference, f"{name} difference", "image")
    limit = float(np.abs(result.difference).max()) or 1.0
    kwargs.update(colormap="PiYG", contrast_limits=(-limit, limit), visible=False)
    add(data, kwargs, "image")
    for map_name, values in result.maps.items():  # InstructX2X's guidance map over its result
        _, kwargs, _ = to_layer_data(
            result.image.with_array(values), f"{name} {map_name.replace('_', ' ')}", "image"
        )
        kwargs.update(colormap="inferno", blending="additive", opacity=0.5, contrast_limits=(0.0, 1.0))
        add(values, kwargs, "image")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headless", action="store_true", help="write files and screenshots, then quit")
    parser.add_argument("--out", default="demo_output", help="folder for the headless run")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from .sample_data import write_sample

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = run_edits(out if args.headless else None)
    if not args.headless:
        viewer = napari.Viewer(title="napari-medit demo")
        viewer.window.add_plugin_dock_widget(PLUGIN, "Image info")
        for name, run in runs.items():
            show(viewer, name, *run)
        napari.run()
        return 0

    written = [p for name in ("brain", "cxr") for p in write_sample(name, out / name)]
    for name, run in runs.items():
        viewer = napari.Viewer(title=f"napari-medit demo: {name}")
        viewer.window.resize(1400, 900)
        viewer.window.add_plugin_dock_widget(PLUGIN, "Image info")
        show(viewer, name, *run, beside=True)
        if result_steps := len(run[2].progression or []):
            viewer.dims.set_point(0, result_steps - 1)  # PIE: show its last step
        if name == "mededit":  # the axial slice through the lesion
            lesion = viewer.layers["lesion_mask"]
            viewer.dims.set_point(0, lesion.data_to_world(np.argwhere(lesion.data).mean(axis=0))[0])
        viewer.layers.selection.active = viewer.layers[0]
        QApplication.processEvents()  # let the dock widget lay itself out, then fit the view
        viewer.reset_view()
        QApplication.processEvents()
        shot = out / f"napari_{name}.png"
        viewer.screenshot(str(shot), canvas_only=False)
        written.append(shot)
        viewer.close()
    written += (
        sorted(out.glob("*_result*"))
        + sorted(out.glob("*_guidance*"))
        + sorted(out.glob("*_provenance.json"))
    )
    print(f"napari-medit demo wrote {len(written)} files to {out}/:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What an edit's progress costs on the wire: bytes per step and per preview, and wall time, with no
previews (the CLI), previews of every slice in work, and previews of the slice on screen (the Edit
widget on a volume shown in the edit's plane). Each step is pickled as dask sends it through the
scheduler's Queue; the edits run in this process (``compute.compute_edit``), side by side.

    python benchmarks/previews.py [--steps 10] [--out benchmarks/results/previews-cpu.md]
"""

from __future__ import annotations

import argparse
import pickle
import platform
import time
from pathlib import Path

from _report import write_report

from napari_medit.compute import EditRequest, compute_edit
from napari_medit.sample_data import load_brain, load_cxr


def cases(steps: int) -> dict[str, EditRequest]:
    cxr, brain = load_cxr(), load_brain()
    chest = EditRequest(
        "radedit",
        cxr["cxr"],
        "demo-cxr",
        {"edit_mask": cxr["edit_mask"].array, "keep_mask": cxr["keep_mask"].array, "steps": steps, "skip": 0},
    )
    volume = EditRequest(
        "mededit",
        brain["t1"],
        "demo-brain",
        {
            "pathology_mask": brain["lesion_mask"].array,
            "brain_mask": brain["brain_mask"].array,
            "steps": steps,
            "batch_size": 4,
        },
    )
    return {"radedit, chest 512 px (1 slice)": chest, "mededit, brain volume (4 slices a chunk)": volume}


def measure(request: EditRequest) -> dict[str, float]:
    sizes, previews = [], []

    def report(progress):
        size = len(pickle.dumps(progress))
        sizes.append(size)
        if progress.estimate is not None:
            previews.append(size)

    started = time.perf_counter()
    result = compute_edit(request, report=report)
    return {
        "seconds": time.perf_counter() - started,
        "steps": len(sizes),
        "step_bytes": min(sizes),
        "previews": len(previews),
        "preview_bytes": max(previews) if previews else 0,
        "total_bytes": sum(sizes),
        "slices": result.edited_slices,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = [
        "# Progress on the wire: bytes per step and per preview",
        "",
        f"`python benchmarks/previews.py --steps {args.steps}` on {platform.platform()}; "
        "the model loads before the first timed edit.",
        "",
        "| edit | previews | steps | bytes / plain step | previews sent | bytes / preview | total MiB | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, request in cases(args.steps).items():
        compute_edit(request)  # loads the model; not timed
        middle = None
        for label, previews, wanted in (
            ("none (CLI)", False, None),
            ("every slice in work", True, None),
            ("the slice on screen", True, "middle"),
        ):
            request.previews = previews
            request.preview_slices = None if wanted is None else [middle]
            figures = measure(request)
            middle = figures["slices"][len(figures["slices"]) // 2]
            counts = f"{figures['steps']} | {figures['step_bytes']} | {figures['previews']}"
            sizes = f"{figures['preview_bytes']:,} | {figures['total_bytes'] / 2**20:.2f}"
            lines.append(f"| {name} | {label} | {counts} | {sizes} | {figures['seconds']:.1f} |")
    lines += [
        "",
        "A plain step is the step number, the total and the slice indices. A preview is float32 in source",
        "units, one array per slice sent; for a latent model it also costs a VAE decode where it is made.",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()

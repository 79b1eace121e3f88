"""How often demo-cxr-instruct adds an effusion where it was asked: the population stress test's edit
("add a right/left pleural effusion", InstructX2X inside the eroded lungs) on its phantom cases, one
seed per case, both sides.

    python benchmarks/instruct_sides.py [--cases 20] [--model demo-cxr-instruct] [--steps 100]
                                        [--out benchmarks/results/instruct-sides-cpu.md]

An edit succeeds when (1) the judge the stress test filters with (demo-cxr-findings) raises its
effusion probability by 0.2 or more, and (2) the change lies at the base of the lung on the side
asked: the centroid of |edit - source| is in that side's half of the image (a PA film: the
patient's right on the image's left) and below the middle of the lungs' height.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from _report import write_report

from napari_medit.backends import load_model
from napari_medit.findings import FindingsClassifier
from napari_medit.stress.demo import demo_addition
from napari_medit.stress.scenarios import ADDITION_RISE, SIDE_ON_IMAGE, where_it_changed

SIDES = ("right", "left")


def judge_edit(classifier, source, edited, lungs, side: str) -> dict:
    before, after = (classifier.probabilities(image)["effusion"] for image in (source, edited))
    half, base = where_it_changed(source, edited, lungs)
    side_ok = half == SIDE_ON_IMAGE[side]
    return {
        "rise": after - before,
        "side_ok": side_ok,
        "base": base,
        "success": bool(after - before >= ADDITION_RISE and side_ok and base),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--model", default="demo-cxr-instruct")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="the run's seed; each case's is derived from it")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model, classifier = load_model(args.model), FindingsClassifier.load("demo-cxr-findings")
    rows, started = [], time.perf_counter()
    for index in range(args.cases):
        for side in SIDES:
            case = f"population-{index:03d}-{side}"
            image, edited, masks = demo_addition(model, index, side, seed=args.seed, steps=args.steps)
            verdict = judge_edit(classifier, image, edited, masks["lung_mask"], side)
            rows.append({"case": case, "side": side, **verdict})
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in verdict.items()}
            print(case, shown, flush=True)
    seconds = time.perf_counter() - started

    def rate(chosen, key="success") -> str:
        hits = sum(row[key] for row in chosen)
        return f"{hits}/{len(chosen)} ({100 * hits / len(chosen):.0f}%)"

    lines = [
        f"# {args.model}: an effusion added where it was asked",
        "",
        f"`python benchmarks/instruct_sides.py --cases {args.cases} --model {args.model} "
        f"--steps {args.steps}` on {platform.platform()}, torch {torch.__version__}; {seconds / 60:.1f} min.",
        "",
        "| side asked | success | probability +0.2 | change on the side asked | at the lung base |",
        "|---|---|---|---|---|",
    ]
    for side in (*SIDES, None):
        chosen = [row for row in rows if side is None or row["side"] == side]
        rises = [dict(row, rose=row["rise"] >= ADDITION_RISE) for row in chosen]
        lines.append(
            f"| {side or 'both'} | {rate(chosen)} | {rate(rises, 'rose')} | {rate(chosen, 'side_ok')} | "
            f"{rate(chosen, 'base')} |"
        )
    lines += [
        "",
        "Each case's seed is the stress test's own (`stress.run.case_seed` of the run's seed and the",
        "case id), so a row here is the edit `napari-medit stress-test population --demo` makes.",
    ]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

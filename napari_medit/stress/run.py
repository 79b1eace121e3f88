"""A stress test end to end: edit every case as the scenario says (napari-medit's batch on dask,
resumable), keep the edits that did what was asked, and measure the model under test on the
images the scenario starts from and on the kept counterfactuals.

    DIR/masks/ID_edit_mask.png, ID_keep_mask.png   the scenario's RadEdit masks per case
    DIR/edits/manifest.csv, ID.png, ID.json         the batch: its manifest, edits and provenance
    DIR/report.json, DIR/report.html                the result
"""

from __future__ import annotations

import csv
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..metrics import EDITING_SCORE_THRESHOLD, jsonable
from .filters import ClassifierFilter, EditingScoreFilter, load_encoder
from .models import ModelUnderTest
from .scenarios import (
    POSITIVE,
    EditMethod,
    ScenarioSpec,
    Task,
    average_hausdorff,
    dice,
    positive_rate,
    scenario,
)


class StressTestError(ValueError):
    """A stress test that cannot run; the message names the problem and the fix. Nothing was written."""


@dataclass(frozen=True)
class Case:
    id: str
    image: Path
    masks: dict[str, Path]


def read_cases(data: str | Path, needs: tuple[str, ...]) -> list[Case]:
    """Cases from a CSV (columns id, image and the mask roles, paths relative to it) or a folder
    holding cases.csv; StressTestError when a case lacks a mask the scenario needs."""
    data = Path(data).expanduser()
    table = data / "cases.csv" if data.is_dir() else data
    if not table.is_file():
        raise StressTestError(
            f"{data}: no cases; give a CSV (id,image,{','.join(needs)}) or a folder with cases.csv"
        )
    with table.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise StressTestError(f"{table}: no cases in it")
    missing = [c for c in ("id", "image", *needs) if c not in rows[0]]
    if missing:
        raise StressTestError(
            f"{table}: the scenario needs a {missing[0]!r} column ({', '.join(needs)} per case); "
            "add the masks and list them there"
        )
    cases = []
    for line, row in enumerate(rows, start=2):
        empty = [c for c in ("id", "image", *needs) if not (row.get(c) or "").strip()]
        if empty:
            raise StressTestError(f"{table}, line {line}: no {empty[0]}; every case needs {', '.join(needs)}")
        paths = {c: table.parent / row[c].strip() for c in ("image", *needs)}
        absent = [p for p in paths.values() if not p.exists()]
        if absent:
            raise StressTestError(f"{table}, line {line}: {absent[0]} does not exist")
        cases.append(Case(row["id"].strip(), paths.pop("image"), paths))
    return cases


def stress_test(
    name: str,
    *,
    model_under_test: str,
    data: str | Path,
    editor: str,
    out: str | Path,
    method: EditMethod | str = EditMethod.radedit,
    n: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    filter_classifier: str = "demo-cxr-findings",
    filter_encoder: str | None = None,
    filter_threshold: float | None = None,
    input_size: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    device: str | None = None,
    download: bool = False,
    trust_remote_code: bool = False,
    show_progress: bool = True,
) -> dict:
    """Run scenario ``name`` (acquisition, manifestation, population) and return the report.

    Args:
        model_under_test: a TorchScript file or ``module:function`` (``napari_medit.stress.models``).
        data: a cases CSV or a folder with cases.csv (id, image and the masks the scenario needs).
        editor: the diffusion model that edits (a name or folder, as ``load_model`` takes).
        method: 'radedit' (the paper's), or 'instructx2x' with an instruction model, for scenarios that
            add a finding (the scenario's edit region becomes its region).
        out: the output folder; a second run resumes the edits already made.
        n: the first ``n`` cases only.
        workers, scheduler: the batch's dask settings (``napari_medit.batch.run_batch``).
        filter_classifier: a findings classifier independent of the model under test; a removal
            is kept when its probability of the scenario's finding is below ``filter_threshold``
            (None: 0.5), an addition when it raised that probability by ``filter_threshold`` or more
            (None: 0.2); ``ScenarioSpec.kept`` says why.
        filter_encoder: ``module:function`` returning an image-text encoder (``metrics.ImageTextEncoder``,
            e.g. ``napari_medit.stress.biovil:biovil_t``): when given, the filter is RadEdit's editing
            score instead, kept at ``filter_threshold`` or above (None: the paper's 0.2).
        input_size: the model under test's input side when it has no ``input_size`` attribute.
        seed, steps: the run's seed, from which each case's own is drawn (``case_seed``: recorded per
            case in the report), and RadEdit's steps (None: the paper's 100).
        device, download, trust_remote_code: how the editor loads (``napari_medit.backends.load_model``).
    """
    from ..batch import run_batch

    spec = scenario(name)
    method = _edit_method(spec, method)
    if n is not None and n < 1:
        raise StressTestError(f"--n must be at least 1, got {n}")
    if filter_threshold is None:
        filter_threshold = EDITING_SCORE_THRESHOLD if filter_encoder else spec.filter_threshold
    if not 0 < filter_threshold < 1:
        raise StressTestError(f"the filter threshold must be in (0, 1), got {filter_threshold}")
    # Everything that can be refused is refused before anything is written.
    tested = ModelUnderTest.load(model_under_test, spec.task, input_size)
    cases = read_cases(data, spec.needs)[:n]
    judge = _edit_filter(spec, filter_classifier, filter_encoder, filter_threshold)

    out = Path(out)
    manifest = _write_edit_jobs(spec, method, cases, out, editor, seed, steps)
    summary = run_batch(
        manifest,
        out / "edits",
        workers=workers,
        scheduler=scheduler,
        device=device,
        download=download,
        trust_remote_code=trust_remote_code,
        show_progress=show_progress,
    )
    rows = _judged(cases, {r["id"]: r for r in summary.records}, judge, seed)
    report = _measure(spec, tested, cases, rows)
    report.update(
        {
            "scenario": spec.scenario.value,
            "says": spec.says,
            "reference": spec.reference,
            "model_under_test": model_under_test,
            "editor": editor,
            "method": method.value,
            "prompt": spec.prompt if method is EditMethod.radedit else spec.instruction,
            "filter": judge.describe(),
            "seed": seed,  # each case edits with its own seed, drawn from this one (case_seed; cases' "seed")
            "n_generated": sum(r["status"] != "failed" for r in rows),
            "n_failed": sum(r["status"] == "failed" for r in rows),
            "n_kept": sum(r["kept"] for r in rows),
        }
    )
    from ..jobs import write_text_atomically
    from .report import write_html

    cases_out = [
        {k: v for k, v in r.items() if k not in ("source", "edited_array") and not k.endswith("_prediction")}
        for r in rows
    ]
    final = {**report, "cases": cases_out}
    write_html(out / "report.html", final, rows, cases, spec)
    # last: the run is complete
    write_text_atomically(out / "report.json", json.dumps(jsonable(final), indent=2))
    return final


def _edit_method(spec, method: EditMethod | str) -> EditMethod:
    """The edit method, refused where the scenario cannot use it."""
    try:
        method = EditMethod(method)
    except ValueError:
        raise StressTestError(
            f"unknown edit method {method!r}; choose one of: {', '.join(m.value for m in EditMethod)}"
        ) from None
    if method is EditMethod.instructx2x and spec.instruction is None:
        raise StressTestError(
            f"the {spec.scenario.value} scenario removes a finding whose side the data does not "
            "state, which an instruction needs; use --method radedit"
        )
    return method


def _edit_filter(spec, filter_classifier: str, filter_encoder: str | None, threshold: float):
    """The filter that decides which edits are kept: RadEdit's editing score when an encoder is
    given, else the independent findings classifier; refused with one message when it cannot run."""
    from ..backends import ModelLoadError
    from ..findings import FindingsClassifier

    if filter_encoder:
        return EditingScoreFilter(load_encoder(filter_encoder), filter_encoder, spec, threshold)
    try:
        classifier = FindingsClassifier.load(filter_classifier)
    except ModelLoadError as exc:
        raise StressTestError(str(exc)) from None
    if spec.finding not in classifier.findings:
        raise StressTestError(
            f"the filter classifier {classifier.name} does not detect {spec.finding!r} "
            f"(it detects {', '.join(classifier.findings)})"
        )
    return ClassifierFilter(classifier, spec, threshold)


def case_seed(seed: int, case_id: str) -> int:
    """A case's own seed, drawn from the run's seed and the case's id: a set of counterfactuals then
    samples the edit's distribution (one bad draw cannot sink every case), and a case keeps its seed in
    any subset or order of the cases."""
    return int(np.random.SeedSequence([seed, zlib.crc32(case_id.encode())]).generate_state(1)[0])


def _judged(cases, records: dict, judge, seed: int) -> list[dict]:
    """One row per case: its seed, its edit (or why it failed) and what the filter said of it."""
    from ..io import read_image

    rows = []
    for case in cases:
        record = records[case.id]
        source = read_image(case.image).array
        row = {
            "id": case.id,
            "image": str(case.image),
            "seed": case_seed(seed, case.id),
            "status": record["status"],
            "source": source,
        }
        if record["status"] == "failed":
            rows.append({**row, "kept": False, "error": record.get("error")})
            continue
        edited_path = Path(record["outputs"][0])
        edited = read_image(edited_path).array
        judged = {**judge.judge(source, edited), "provenance": record["provenance"], "edited_array": edited}
        rows.append({**row, "edited": str(edited_path), **judged})
    return rows


def _write_edit_jobs(
    spec: ScenarioSpec,
    method: EditMethod,
    cases: list[Case],
    out: Path,
    editor: str,
    seed: int,
    steps: int | None,
) -> Path:
    """The scenario's masks per case, and the batch manifest that edits them."""
    from PIL import Image

    from ..io import read_image
    from ..jobs import write_text_atomically

    (out / "masks").mkdir(parents=True, exist_ok=True)
    roles = ["edit_mask", "keep_mask"] if method is EditMethod.radedit else ["roi_mask"]
    lines = [["id", "image", "method", "model", *roles, "prompt", "seed"] + (["steps"] if steps else [])]
    for index, case in enumerate(cases):
        masks = {role: read_image(path).array > 0 for role, path in case.masks.items()}
        prompt, regions = spec.edit_job(method, index, masks)
        paths = {}
        for role, mask in regions.items():
            paths[role] = out / "masks" / f"{case.id}_{role}.png"
            if not paths[role].is_file():
                Image.fromarray(mask.astype(np.uint8) * 255).save(paths[role])
        lines.append(
            [
                case.id,
                str(case.image.resolve()),
                method.value,
                editor,
                *(str(paths[role].resolve()) for role in roles),
                prompt,
                str(case_seed(seed, case.id)),
            ]
            + ([str(steps)] if steps else [])
        )
    text = "\n".join(",".join(f'"{cell}"' for cell in line) for line in lines) + "\n"
    return write_text_atomically(out / "edits" / "manifest.csv", text)


def _measure(spec: ScenarioSpec, tested: ModelUnderTest, cases: list[Case], rows: list[dict]) -> dict:
    """The model under test on the originals (every case) and on the kept counterfactuals."""
    from ..io import read_image

    originals = [r["source"] for r in rows]  # one row per case, in order
    kept = [r for r in rows if r["kept"]]
    if spec.task is Task.classifier:
        before = tested.predict(originals)
        after = tested.predict([r["edited_array"] for r in kept])
        for row, value in zip(rows, before, strict=True):
            row["original_probability"] = round(value, 4)
        for row, value in zip(kept, after, strict=True):
            row["edited_probability"] = round(value, 4)

        def measure(values, truth_positive: bool):
            rate = positive_rate(values)
            # accuracy against the truth, as the paper's tables: originals have the finding, the edits do not
            return {
                "accuracy": rate if truth_positive else 1 - rate,
                "positive rate": rate,
                "mean probability": float(np.mean(values)) if values else float("nan"),
            }

        return {
            "metric": spec.metric,
            "positive_at": POSITIVE,
            "original": measure(before, True),
            "edited": measure(after, False),
            "truth": f"originals have the {spec.finding}; the kept edits do not",
        }
    truths = {c.id: read_image(c.masks["lung_mask"]).array > 0 for c in cases}
    before = tested.predict(originals)
    after = tested.predict([r["edited_array"] for r in kept])
    for row, prediction in zip(rows, before, strict=True):
        row["original_dice"] = round(dice(prediction, truths[row["id"]]), 4)
        row["original_ahd"] = round(average_hausdorff(prediction, truths[row["id"]]), 3)
        row["original_prediction"] = prediction
    for row, prediction in zip(kept, after, strict=True):
        row["edited_dice"] = round(dice(prediction, truths[row["id"]]), 4)
        row["edited_ahd"] = round(average_hausdorff(prediction, truths[row["id"]]), 3)
        row["edited_prediction"] = prediction

    def measure(prefix, chosen):
        return {
            "dice": float(np.mean([r[f"{prefix}_dice"] for r in chosen])) if chosen else float("nan"),
            "ahd_px": float(np.mean([r[f"{prefix}_ahd"] for r in chosen])) if chosen else float("nan"),
        }

    return {
        "metric": spec.metric,
        "original": measure("original", rows),
        "edited": measure("edited", kept),
        "original_of_kept": measure("original", kept),  # the same cases before and after: a paired view
        "truth": "the original lung masks: the edits kept the lung border",
    }

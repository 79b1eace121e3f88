"""Many edits from a manifest, on a dask cluster: stress-test sets and counterfactual benchmarks.

    napari-medit batch MANIFEST.csv --out DIR [--workers N | --scheduler ADDRESS]

Each manifest row is one edit (columns: ``id``, ``image``, ``method`` and the `edit`
command's options with underscores). Item ``ID`` writes ``DIR/ID.nii.gz`` (or ``.png`` for
PNG/JPEG inputs) and ``DIR/ID.json`` (provenance and metrics) — the sidecar last, so an
item is finished exactly when its sidecar is there. Re-running a batch skips finished
items, and a failing item is recorded in the summary while the others go on.

Every worker loads each model once and keeps it (``compute.cached_model``). A worker that dies
mid-item loses nothing: dask gives the item to another worker, and the half-written
file, under a temporary name, is never mistaken for a result.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalogue
from .catalogue import LOCAL_WORKER, MASK_ROLES, ComputeOptions, RunOptions
from .io import PARTIAL_PREFIX
from .io.formats import BY_KIND, OutputFormat, own_output_ending
from .jobs import EditJob, is_finished
from .metrics import jsonable

REQUIRED_COLUMNS = ("id", "image", "method")
# Every mask role, every method's parameters and the run options, as the catalogue names them.
OPTIONAL_COLUMNS = (
    "model",
    "preset",
    *MASK_ROLES,
    *catalogue.parameter_names(),
    *(item.name for item in catalogue.fields(RunOptions)),
)
SUMMARY_NAME = "summary"  # DIR/summary.csv and DIR/summary.json
# An id names files in --out: no folders, no leading dot, short enough for a file name with its endings.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class ManifestError(ValueError):
    """A manifest that cannot run; the message names the row and column."""


@dataclass
class BatchItem:
    id: str
    model: str
    job: EditJob


@dataclass
class BatchSummary:
    out: Path
    records: list[dict[str, Any]] = field(default_factory=list)  # one per manifest row, in manifest order

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "failed"]

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)


# ---------------------------------------------------------------- manifest


def read_manifest(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    default_model: str | None = None,
    output_format: OutputFormat | None = None,
) -> list[BatchItem]:
    """Parse and check every row before anything runs; paths are relative to the manifest.
    ``output_format`` None writes each result in its source's kind of file where napari-medit
    writes it (.png for PNG/JPEG, .mgz for MGH, else .nii.gz); ``dicom`` writes ID.dcm for a DICOM
    file and a derived series in the folder ID for a DICOM series."""
    manifest, out = Path(manifest), Path(out)
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            columns = [c.strip() for c in (rows[0].keys() if rows else [])]
    except OSError as exc:
        raise ManifestError(f"{manifest}: cannot read the manifest ({exc.strerror or exc})") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ManifestError(f"{manifest}: not a CSV file ({exc})") from None
    if not rows:
        raise ManifestError(f"{manifest}: no rows; the first line names the columns (id,image,method,...)")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        problem = f"lacks the column {missing[0]!r}" if missing else f"has an unknown column {unknown[0]!r}"
        raise ManifestError(
            f"{manifest}: {problem}; columns are {', '.join(REQUIRED_COLUMNS)} and optionally "
            f"{', '.join(OPTIONAL_COLUMNS)}"
        )
    items, seen = [], set()
    for line, row in enumerate(rows, start=2):
        try:
            items.append(_item(row, manifest.parent, out, default_model, output_format))
        except ValueError as exc:
            raise ManifestError(f"{manifest}, line {line}: {exc}") from None
        if items[-1].id in seen:
            raise ManifestError(
                f"{manifest}, line {line}: the id {items[-1].id!r} is used twice; ids name outputs"
            )
        seen.add(items[-1].id)
    return items


def _item(
    row: dict[str, str | None],
    base: Path,
    out: Path,
    default_model: str | None,
    output_format: OutputFormat | None,
) -> BatchItem:
    cells = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
    item_id = cells["id"]
    if not _SAFE_ID.match(item_id) or item_id == SUMMARY_NAME:
        raise ValueError(
            f"id {item_id[:60]!r}{'...' if len(item_id) > 60 else ''} must be up to 200 letters, "
            f"digits, '.', '_' or '-' (and not {SUMMARY_NAME!r})"
        )
    for column in REQUIRED_COLUMNS:
        if not cells[column]:
            raise ValueError(f"the {column!r} cell is empty")
    model = cells.get("model") or default_model
    if not model:
        raise ValueError("no model: fill the 'model' column or pass --model")

    spec = catalogue.method(cells["method"])
    given = {name: text for name, text in cells.items() if name in catalogue.parameter_names() and text}
    unknown = sorted(set(given) - {item.name for item in catalogue.fields(spec.params)})
    if unknown:
        raise ValueError(f"{spec.name} has no parameter {unknown[0]!r} (leave that cell empty on its rows)")
    image = _resolve(base, cells["image"])
    kind = OutputFormat(output_format) if output_format is not None else None
    if kind is OutputFormat.dicom:
        ending = "" if image.is_dir() else ".dcm"  # a series becomes a folder of derived instances
    elif kind is not None:
        ending = BY_KIND[kind].written_suffixes[0]
    else:  # the source's own kind of file, where napari-medit writes it
        ending = own_output_ending(image)
    run = {
        item.name: catalogue.parse_value(RunOptions, item.name, cells[item.name])
        for item in catalogue.fields(RunOptions)
        if cells.get(item.name)
    }
    job = EditJob(
        method=spec.name,
        image=image,
        out=out / f"{item_id}{ending}",
        masks={name: _resolve(base, cells[name]) for name in MASK_ROLES if cells.get(name)},
        parameters={name: catalogue.parse_value(spec.params, name, text) for name, text in given.items()},
        run=RunOptions(**run),
        preset=cells.get("preset") or None,
        format=kind,
        overwrite=True,  # the batch owns its output folder; finished items are skipped before they run
    )
    job.check()
    model_path = _resolve(base, model)
    return BatchItem(item_id, str(model_path) if model_path.exists() else model, job)


def _resolve(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


# ---------------------------------------------------------------- running


def run_batch(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    device: str | None = None,
    download: bool = False,
    trust_remote_code: bool = False,
    show_progress: bool = True,
    output_format: OutputFormat | None = None,
) -> BatchSummary:
    """Run every unfinished item of ``manifest`` and write ``out/summary.{csv,json}``.

    ``scheduler`` is the address of a running dask scheduler (None: $NAPARI_MEDIT_SCHEDULER unless
    ``workers`` is given; 'local': as None); otherwise a LocalCluster of
    ``workers`` processes (default: one per two CPU cores) with one thread each is started
    and stopped. ``workers=0`` runs the items in this process, one after the other.
    ``output_format`` as in ``read_manifest``.
    """
    from tqdm.auto import tqdm

    if workers is None:
        scheduler = ComputeOptions(scheduler).resolved_scheduler()
    if scheduler == LOCAL_WORKER:
        scheduler = None
    out = Path(out)
    items = read_manifest(manifest, out, model, output_format)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(PARTIAL_PREFIX + "*"):  # from a run that was killed mid-write
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    records = {
        item.id: {"id": item.id, "status": "skipped", **_finished_record(item)}
        for item in items
        if is_finished(item.job)
    }
    pending = [item for item in items if item.id not in records]
    options = {"device": device, "download": download, "trust_remote_code": trust_remote_code}
    bar = tqdm(
        total=len(items),
        initial=len(records),
        desc="napari-medit batch",
        unit="edit",
        disable=not show_progress,
    )
    try:
        if pending and workers == 0 and scheduler is None:
            for item in pending:
                records[item.id] = run_item(item, threads=None, **options)
                bar.update()
        elif pending:
            for record in _on_dask(pending, scheduler, workers, options):
                records[record["id"]] = record
                bar.update()
    finally:
        bar.close()
    summary = BatchSummary(out, [records[item.id] for item in items])
    write_summary(summary)
    return summary


def _on_dask(pending: list[BatchItem], scheduler: str | None, workers: int | None, options: dict):
    import dask
    from distributed import Client, LocalCluster, as_completed

    from .compute import TORCH_WORKER_ENVIRON

    cores = os.cpu_count() or 1
    if scheduler is None:
        workers = workers or max(1, cores // 2)
        threads = max(1, cores // workers)  # torch threads per worker: share the cores, do not oversubscribe
        with dask.config.set(TORCH_WORKER_ENVIRON):
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
    else:
        cluster, threads = None, None
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            futures = {
                client.submit(
                    run_item, item, threads=threads, pure=False, key=f"napari-medit-{item.id}", **options
                ): item
                for item in pending
            }
            for future in as_completed(futures):
                item = futures[future]
                try:
                    yield future.result()
                except Exception as exc:  # noqa: BLE001 - the item killed its worker too often (KilledWorker) or similar
                    yield _failed(item, f"{type(exc).__name__}: {exc}", None)
    finally:
        if cluster is not None:
            cluster.close()


def run_item(
    item: BatchItem, *, threads: int | None, device: str | None, download: bool, trust_remote_code: bool
) -> dict[str, Any]:
    """One item on a worker: never raises, a failure becomes the item's record."""
    import torch

    from .compute import cached_model
    from .compute.worker import torch_threads
    from .jobs import run_job

    started = time.perf_counter()
    try:
        torch.set_num_threads(threads or torch_threads())  # not a nanny's OMP_NUM_THREADS=1
        model, loaded_now = cached_model(
            item.model, ComputeOptions(device=device, download=download, trust_remote_code=trust_remote_code)
        )
        record = run_job(item.job, model)
    except Exception as exc:  # noqa: BLE001 - one item's failure is its row in the summary, not the batch's end
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _failed(item, message, traceback.format_exc(limit=3))
    return {
        "id": item.id,
        "status": "done",
        "worker_pid": os.getpid(),
        "model_loaded": loaded_now,
        "wall_seconds": round(time.perf_counter() - started, 3),
        **_summary_fields(record),
    }


def _failed(item: BatchItem, message: str, details: str | None) -> dict[str, Any]:
    return {
        "id": item.id,
        "status": "failed",
        "error": message,
        "details": details,
        "image": str(item.job.image),
        "method": item.job.method,
    }


def _finished_record(item: BatchItem) -> dict[str, Any]:
    return _summary_fields(json.loads(item.job.sidecar.read_text()))


def _summary_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "outputs": record["outputs"],
        "method": record["method"],
        "source": record.get("source"),
        "provenance": {k: v for k, v in record.items() if k not in ("outputs", "metrics")},
        "metrics": record.get("metrics", {}),
    }


# ---------------------------------------------------------------- report


def write_summary(summary: BatchSummary) -> tuple[Path, Path]:
    """summary.json: every record in full; summary.csv: one row per item with its metrics flattened."""
    from .jobs import write_text_atomically

    as_json = write_text_atomically(
        summary.out / f"{SUMMARY_NAME}.json", json.dumps(jsonable(summary.records), indent=2)
    )
    rows = [_csv_row(r) for r in summary.records]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = _csv_text(columns, rows)
    as_csv = write_text_atomically(summary.out / f"{SUMMARY_NAME}.csv", lines)
    return as_csv, as_json


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {
        "id": record["id"],
        "status": record["status"],
        "error": record.get("error", ""),
        "method": record.get("method", ""),
        "output": (record.get("provenance", {}).get("result_files") or record.get("outputs") or [""])[0],
    }
    provenance = record.get("provenance", {})
    for key in ("seed", "seconds", "model_evaluations"):
        row[key] = provenance.get(key, "")
    row["samples"] = len(provenance.get("samples") or [None]) if provenance else ""
    row.update(_flatten(provenance.get("variability") or {}, "variability_"))
    row["model"] = provenance.get("model", {}).get("name", "") if provenance else ""
    row.update(_flatten(jsonable(record.get("metrics", {}))))
    return row


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = "" if value is None else value
    return flat


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

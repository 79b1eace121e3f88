"""One edit from files to files: what `napari-medit edit` and every batch item do.

Outputs are written under a temporary name and renamed, the JSON sidecar last: a result
whose sidecar exists is complete, and an interrupted run never leaves a file that looks
finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import read_image, write_image

MASK_OPTIONS = ("edit_mask", "keep_mask", "pathology_mask", "brain_mask", "roi_mask")
# The method parameters `edit` accepts, with their types (None means: the paper's default).
PARAMETER_TYPES: dict[str, type] = {
    "prompt": str, "inversion_prompt": str, "steps": int, "guidance": float, "skip": int, "strength": float,
    "iterations": int, "dilation": int, "jump_length": int, "jump_n_sample": int,
}
OUTPUT_ENDINGS = (".nii.gz", ".nii", ".png")
PARTIAL_PREFIX = ".partial-"


@dataclass
class EditJob:
    method: str
    image: Path
    out: Path  # .nii.gz / .nii (any input) or .png (2D inputs); the sidecar is the same name with .json
    masks: dict[str, Path] = field(default_factory=dict)  # edit_mask=..., keep_mask=...
    parameters: dict[str, Any] = field(default_factory=dict)  # method parameters (PARAMETER_TYPES)
    seed: int = 0
    axis: int | str = "axial"
    slices: tuple[int, int] | None = None
    batch_size: int | None = None

    @property
    def sidecar(self) -> Path:
        return suffixed(self.out, "", ".json")

    def check(self) -> None:
        """Problems that need no file reading, so a manifest can be refused before anything runs."""
        if not self.out.name.lower().endswith(OUTPUT_ENDINGS):
            raise ValueError(f"{self.out}: the output must end in .nii.gz, .nii or .png")
        unknown = sorted(set(self.masks) - set(MASK_OPTIONS)) + sorted(set(self.parameters) - set(PARAMETER_TYPES))
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}")


def run_job(job: EditJob, model) -> dict[str, Any]:
    """Read, edit with ``model`` (a loaded Denoiser), write; returns the sidecar's content."""
    from .editing import edit

    job.check()
    image = read_image(job.image)
    if job.out.suffix.lower() == ".png" and image.array.ndim != 2:
        raise ValueError(f"{job.out}: PNG holds 2D images and the input has shape {image.array.shape}; use .nii.gz")
    masks = {name: read_image(path) for name, path in job.masks.items()}
    result = edit(job.method, image, model=model, seed=job.seed, axis=job.axis, slices=job.slices,
                  batch_size=job.batch_size, **masks, **job.parameters)
    versions = result.progression or [result.image]
    written = [write_atomically(suffixed(job.out, f"_step{index:02d}"), version)
               for index, version in enumerate(versions[:-1], start=1)]
    written.append(write_atomically(job.out, result.image))
    record = {"outputs": [str(p) for p in written], **result.provenance}
    write_text_atomically(job.sidecar, json.dumps(record, indent=2))
    return record


def is_finished(job: EditJob) -> bool:
    """True when the sidecar exists, parses, and every output it lists is there."""
    try:
        record = json.loads(job.sidecar.read_text())
    except (OSError, ValueError):
        return False
    outputs = record.get("outputs") if isinstance(record, dict) else None
    return bool(outputs) and all(Path(p).is_file() for p in outputs)


def parse_axis(text: str | int) -> int | str:
    text = str(text).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def parse_slices(text: str | None) -> tuple[int, int] | None:
    if text is None or not str(text).strip():
        return None
    try:
        start, stop = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"slices must look like 10:20, got {text!r}") from None
    return start, stop


def suffixed(path: Path, suffix: str, ending: str | None = None) -> Path:
    """result.nii.gz + '_step01' -> result_step01.nii.gz; with ``ending`` '.json' -> result.json."""
    name = path.name
    for known in OUTPUT_ENDINGS:
        if name.lower().endswith(known):
            return path.with_name(name[: -len(known)] + suffix + (ending or name[-len(known):]))
    return path.with_name(name + suffix + (ending or ""))


def write_atomically(path: Path, image) -> Path:
    """Write beside the target, then rename: a failed run never leaves a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(PARTIAL_PREFIX + path.name)
    try:
        write_image(temporary, image)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(PARTIAL_PREFIX + path.name)
    try:
        temporary.write_text(text)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return path

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

from . import catalogue
from .catalogue import MASK_ROLES, RunOptions
from .io import read_image, write_image

OUTPUT_ENDINGS = (".nii.gz", ".nii", ".mgz", ".mgh", ".png")
PARTIAL_PREFIX = ".partial-"


@dataclass
class EditJob:
    """One edit as the CLI and a manifest row state it: files in, files out, options as the catalogue names them."""

    method: str
    image: Path
    out: Path  # .nii.gz/.nii/.mgz/.mgh (any input) or .png (2D inputs); the sidecar is the same name with .json
    masks: dict[str, Path] = field(default_factory=dict)  # edit_mask=..., keep_mask=... (catalogue.MASK_ROLES)
    parameters: dict[str, Any] = field(default_factory=dict)  # the method's parameters that were given
    run: RunOptions = field(default_factory=RunOptions)

    @property
    def sidecar(self) -> Path:
        return suffixed(self.out, "", ".json")

    def check(self):
        """Problems that need no file reading, so a manifest can be refused before anything runs;
        returns the method's parameters with every default resolved."""
        if not self.out.name.lower().endswith(OUTPUT_ENDINGS):
            raise ValueError(f"{self.out}: the output must end in {', '.join(OUTPUT_ENDINGS)}")
        spec = catalogue.method(self.method)
        unknown = sorted(set(self.masks) - set(MASK_ROLES))
        if unknown:
            raise ValueError(f"unknown mask {unknown[0]!r}; masks are {', '.join(MASK_ROLES)}")
        problem = spec.unused_mask_problem(self.masks)
        if problem:
            raise ValueError(problem)
        self.run.validate()
        return spec.make_params(self.parameters)


def run_job(job: EditJob, model, callback=None) -> dict[str, Any]:
    """Read, edit with ``model`` (a loaded Denoiser), write; returns the sidecar's content.
    ``callback`` gets the edit's ``EditProgress`` after every denoising step."""
    from .editing import edit

    job.check()
    image = read_image(job.image)
    if job.out.suffix.lower() == ".png" and image.array.ndim != 2:
        raise ValueError(f"{job.out}: PNG holds 2D images and the input has shape {image.array.shape}; use .nii.gz")
    masks = {name: read_image(path) for name, path in job.masks.items()}
    result = edit(job.method, image, model=model, callback=callback, **job.run.edit_arguments(), **masks,
                  **job.parameters)
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

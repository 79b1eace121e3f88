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
from .catalogue import MASK_ROLES, ComputeOptions, RunOptions
from .io import read_image, replacing, write_image
from .io.formats import BY_KIND, NIFTI, OUTPUT_ENDINGS, OutputFormat, output_kind


@dataclass
class EditJob:
    """One edit as the CLI and a manifest row state it: files in, files out, options as the catalogue names
    them."""

    method: str
    image: Path
    # .nii.gz/.nii/.mgz/.mgh (any input), .png or .dcm (2D), a folder (DICOM); sidecar: .json beside it
    out: Path
    # edit_mask=..., keep_mask=... (catalogue.MASK_ROLES)
    masks: dict[str, Path] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)  # the method's parameters that were given
    run: RunOptions = field(default_factory=RunOptions)
    preset: str | None = None  # a name from the method's presets: its values replace the defaults
    format: OutputFormat | None = None  # None: from the name of ``out``
    overwrite: bool = False  # replace a DICOM output folder that already holds files

    @property
    def output_format(self) -> OutputFormat:
        named = output_kind(self.out)
        if self.format is None:
            if named is None:
                raise ValueError(
                    f"{self.out}: the output must end in {', '.join(OUTPUT_ENDINGS)}, "
                    "or be a folder with --format dicom"
                )
            return named
        kind = OutputFormat(self.format)
        if named is not None and named is not kind:
            raise ValueError(
                f"{self.out}: the name says {named.value} but the format asked for is {kind.value}"
            )
        if named is None and kind is not OutputFormat.dicom:
            raise ValueError(
                f"{self.out}: a {kind.value} output is a file; give it a name ending in "
                f"{', '.join(BY_KIND[kind].written_suffixes)}"
            )
        return kind

    @property
    def sidecar(self) -> Path:
        return suffixed(self.out, "", ".json")

    def check(self):
        """Problems that need no file reading, so a manifest can be refused before anything runs;
        returns the method's parameters with every default resolved."""
        self.output_format  # noqa: B018 (raises on a name and format that disagree)
        spec = catalogue.method(self.method)
        unknown = sorted(set(self.masks) - set(MASK_ROLES))
        if unknown:
            raise ValueError(f"unknown mask {unknown[0]!r}; masks are {', '.join(MASK_ROLES)}")
        problem = spec.unused_mask_problem(self.masks)
        if problem:
            raise ValueError(problem)
        self.run.validate()
        return spec.make_params(self.parameters, self.preset)


def run_job(job: EditJob, model, callback=None, compute: ComputeOptions | None = None) -> dict[str, Any]:
    """Read here, edit where ``compute.scheduler`` says (already resolved by the front end: None is this
    process; ``napari_medit.compute.edit_at``), write here; returns the sidecar's content. ``model``: a
    loaded Denoiser (this process), or a name the computing side loads. ``callback`` gets the edit's
    progress after every denoising step."""
    from .compute import edit_at

    job.check()
    image = read_image(job.image)
    check_output(job.out, job.output_format, image, job.overwrite)  # before the edit, not after
    masks = {name: read_mask(name, path, image) for name, path in job.masks.items()}
    compute = compute or ComputeOptions()
    result = edit_at(
        compute.scheduler,
        job.method,
        image,
        model=model,
        compute=compute,
        callback=callback,
        **job.run.edit_arguments(),
        **masks,
        **job.parameters,
        preset=job.preset,
    )
    versions = result.progression or [result.image]
    written = []
    for index, version in enumerate(versions, start=1):
        path = job.out if index == len(versions) else suffixed(job.out, f"_step{index:02d}")
        written += (files := write_output(path, version, job.output_format, job.overwrite))
    result_files = [str(p) for p in files]
    for index, sample in enumerate(result.samples or [], start=1):
        if index > 1:  # sample 1 is the result itself
            path = suffixed(job.out, f"_sample{index:02d}")
            written += write_output(path, sample, job.output_format, job.overwrite)
    map_files = {name: write_map(job.out, name, values, result.image) for name, values in result.maps.items()}
    if result.variability is not None:
        map_files["std"] = write_variability(job, result)
    record = {
        "outputs": [str(p) for p in [*written, *map_files.values()]],
        "result_files": result_files,  # the edit's result itself (sample 1; PIE's last step)
        **result.provenance,
        "maps": {name: str(path) for name, path in map_files.items()},
    }
    write_text_atomically(job.sidecar, json.dumps(record, indent=2))
    return record


def write_variability(job: EditJob, result) -> Path:
    """The samples' per-voxel standard deviation beside the result, as ``<out>_std``: float32 where the
    format holds it (NIfTI, MGZ); a derived DICOM series in the source's stored units for DICOM; and
    ``<out>_std.nii.gz`` for a PNG result, whose whole numbers would round the spread away."""
    import numpy as np

    image = result.image.with_array(result.variability.astype(np.float32), map="std")
    kind = job.output_format
    if kind is OutputFormat.png:
        return write_image(suffixed(job.out, "_std", NIFTI.written_suffixes[0]), image)
    if kind is OutputFormat.dicom:
        return write_output(suffixed(job.out, "_std"), image, kind, job.overwrite)[0]
    return write_image(suffixed(job.out, "_std"), image)


def write_map(out: Path, name: str, values, image) -> Path:
    """A map the method computed (InstructX2X's guidance map, in [0, 1]) beside the result:
    ``<out>_guidance.png`` (8-bit, 255 = 1) for a 2D image, ``<out>_guidance.nii.gz`` (float) otherwise."""
    import numpy as np

    planar = values.ndim == 2
    stem = suffixed(out, "_" + name.removesuffix("_map"), ".png" if planar else NIFTI.written_suffixes[0])
    array = np.round(np.clip(values, 0, 1) * 255).astype(np.uint8) if planar else values.astype(np.float32)
    return write_image(stem, image.with_array(array, map=name))


def read_mask(role: str, path: Path, image):
    """A mask file for ``role``: any image file on ``image``'s grid, or a DICOM SEG of ``image`` (its segment
    labelled like the role, or its only segment), placed through the instances it references."""
    from .io.dicom_seg import is_seg, read_seg, segment_label

    if not is_seg(path):
        return read_image(path)
    segments = read_seg(path, image)
    if role in segments:
        return segments[role]
    if len(segments) == 1:
        return next(iter(segments.values()))
    raise ValueError(
        f"{path}: no segment labelled {segment_label(role)!r} among "
        f"{', '.join(segment_label(n) for n in segments)}"
    )


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
            return path.with_name(name[: -len(known)] + suffix + (ending or name[-len(known) :]))
    return path.with_name(name + suffix + (ending or ""))


def check_output(out: Path, kind: OutputFormat, image, overwrite: bool = False) -> None:
    """Refuse, before anything runs, an output ``image`` cannot be written as."""
    entry = BY_KIND[kind]
    if not entry.holds(image.array.ndim):
        raise ValueError(
            f"{out}: {entry.label} holds {' or '.join(f'{n}D' for n in entry.dimensions)} images and the "
            f"input has shape {image.array.shape}; use {NIFTI.written_suffixes[0]}"
        )
    if kind is OutputFormat.dicom:
        from .io.dicom_derived import check_dicom_output

        check_dicom_output(out, image, overwrite)


def write_output(path: Path, image, kind: OutputFormat, overwrite: bool = False) -> list[Path]:
    """Write one result in ``kind``; every writer leaves nothing partial behind on failure."""
    if kind is OutputFormat.dicom:
        from .io.dicom_derived import write_dicom

        return write_dicom(path, image, overwrite=overwrite)
    return [write_image(path, image)]  # written beside the target and renamed


def write_text_atomically(path: Path, text: str) -> Path:
    with replacing(path) as temporary:
        temporary.write_text(text)
    return path

"""Every file format napari-medit reads and writes, stated once.

``read_image``, ``write_image``, the napari reader and writers (``napari.yaml``, which a test checks
against ``FORMATS``), the CLI's help, the output endings of ``edit`` and ``batch`` and the widgets'
file dialogs all derive from this table. Adding a format is one entry here (and its reader and
writer in their own module).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .dicom import has_dicom_preamble, read_dicom_file
from .image import MedicalImage
from .mgh import read_mgh, write_mgh
from .nifti import read_nifti, write_nifti
from .raster import read_raster, write_png


class OutputFormat(str, enum.Enum):
    """What a result is written as (the CLI's and a batch's ``--format``)."""

    nifti = "nifti"
    mgz = "mgz"
    png = "png"
    dicom = "dicom"


@dataclass(frozen=True)
class FileFormat:
    kind: OutputFormat
    label: str  # as a file dialog and a message name it
    suffixes: tuple[str, ...]  # the endings it is read from, lower case
    read: Callable[[Path], MedicalImage]
    # None: not written by ``write_image`` (DICOM is derived from its source: io.dicom_derived)
    write: Callable[[Path, MedicalImage], object] | None
    written_suffixes: tuple[str, ...]  # the endings a result may have; the first is the one chosen
    dimensions: tuple[int, ...] | None = None  # the image dimensions it holds (None: any)
    written_label: str | None = None  # the file dialog's name for its results (default: label)
    sniff: Callable[[Path], bool] | None = None  # recognises a file by content whatever its name

    def named_in(self, path: Path) -> bool:
        """Whether ``path``'s name ends in one of this format's suffixes (any case)."""
        return path.name.lower().endswith(self.suffixes)

    def holds(self, ndim: int) -> bool:
        return self.dimensions is None or ndim in self.dimensions

    def save_filter(self) -> str:
        """A Save dialog's filter for its results; Qt adds the first ending to a name without one."""
        return f"{self.written_label or self.label} ({' '.join(f'*{s}' for s in self.written_suffixes)})"


FORMATS: tuple[FileFormat, ...] = (
    FileFormat(
        OutputFormat.nifti, "NIfTI", (".nii.gz", ".nii"), read_nifti, write_nifti, (".nii.gz", ".nii")
    ),
    FileFormat(
        OutputFormat.mgz, "FreeSurfer MGH", (".mgz", ".mgh"), read_mgh, write_mgh, (".mgz", ".mgh"), (3, 4)
    ),
    FileFormat(
        OutputFormat.png,
        "PNG/JPEG",
        (".png", ".jpg", ".jpeg"),
        read_raster,
        write_png,
        (".png",),
        (2,),
        written_label="PNG, 2D images",
    ),
    FileFormat(
        OutputFormat.dicom,
        "DICOM",
        (".dcm", ".dicom", ".ima"),
        read_dicom_file,
        None,
        (".dcm",),  # a 2D result; a series is written as a folder of derived instances
        written_label="DICOM, derived from the source",
        sniff=has_dicom_preamble,
    ),
)
BY_KIND = {entry.kind: entry for entry in FORMATS}
NIFTI = BY_KIND[OutputFormat.nifti]  # what any image can be written as

# The endings of results and the format each writes; the first of a format is the one chosen.
OUTPUT_ENDINGS = {suffix: entry.kind for entry in FORMATS for suffix in entry.written_suffixes}
READ_SUFFIXES = tuple(suffix for entry in FORMATS for suffix in entry.suffixes)
SUPPORTED = ", ".join(f"{entry.label} ({', '.join(entry.suffixes)})" for entry in FORMATS) + (
    ", or a folder holding a DICOM series"
)


def format_of(path: str | os.PathLike) -> FileFormat | None:
    """The format ``path`` is read as: by its name, else by its content (DICOM's preamble); None
    when neither says (never raises)."""
    path = Path(path)
    named = next((entry for entry in FORMATS if entry.named_in(path)), None)
    if named is not None:
        return named
    try:
        return next((entry for entry in FORMATS if entry.sniff is not None and entry.sniff(path)), None)
    except OSError:
        return None


def writer_for(path: Path) -> FileFormat:
    """The format a result named ``path`` is written as by ``write_image``; ValueError naming the
    endings it takes."""
    kind = output_kind(path)
    entry = next((entry for entry in FORMATS if entry.kind is kind), None)
    if entry is None or entry.write is None:
        writable = [e for e in FORMATS if e.write is not None]
        raise ValueError(
            f"{path}: cannot write this file type; use "
            + ", ".join(f"{e.written_suffixes[0]} ({_holds_text(e)})" for e in writable)
        )
    return entry


def output_kind(path: Path) -> OutputFormat | None:
    """The format a result's name ends in (None: no known ending, e.g. a folder)."""
    name = path.name.lower()
    return next((kind for ending, kind in OUTPUT_ENDINGS.items() if name.endswith(ending)), None)


def own_output_ending(source: Path) -> str:
    """The ending of a result written as its source's own kind of file, where napari-medit writes
    that kind (PNG for PNG/JPEG, .mgz for MGH), else NIfTI."""
    entry = next((entry for entry in FORMATS if entry.named_in(source)), None)
    return (entry if entry is not None and entry.write is not None else NIFTI).written_suffixes[0]


def strip_suffix(name: str) -> str:
    """A file name without the ending of a format it is read as (t1.nii.gz -> t1)."""
    for suffix in sorted(READ_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def open_dialog_filter() -> str:
    """The Open dialogs' filter: every ending read, in both cases (scanners write .IMA, Windows
    .DCM), then any file (DICOM files often have no ending)."""
    patterns = [f"*{s}" for s in READ_SUFFIXES] + [f"*{s.upper()}" for s in READ_SUFFIXES]
    return f"Medical images ({' '.join(patterns)});;All files (*)"


def save_dialog_filter(*, dicom: bool = False) -> str:
    """The Save dialog's filter: the formats ``write_image`` writes, led by DICOM for a DICOM source."""
    entries = [e for e in FORMATS if e.write is not None or (dicom and e.kind is OutputFormat.dicom)]
    entries.sort(key=lambda e: e.kind is not OutputFormat.dicom)
    return ";;".join(entry.save_filter() for entry in entries)


def napari_reader_patterns() -> list[str]:
    """napari.yaml's reader ``filename_patterns``: every suffix, and any file (DICOM has none)."""
    return [f"*{suffix}" for suffix in READ_SUFFIXES] + ["*"]


def napari_writer_extensions() -> list[str]:
    """napari.yaml's writers' ``filename_extensions``: what ``write_image`` writes."""
    return [suffix for entry in FORMATS if entry.write is not None for suffix in entry.written_suffixes]


def _holds_text(entry: FileFormat) -> str:
    if entry.dimensions is None:
        return "any image"
    return "2D images" if entry.dimensions == (2,) else "volumes"

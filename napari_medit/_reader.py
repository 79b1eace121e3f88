"""npe2 reader contribution: NIfTI, FreeSurfer MGH/MGZ, DICOM files and series folders, PNG/JPEG."""

from __future__ import annotations

from pathlib import Path

from .io import can_read, read_image
from .io.layers import to_layer_data


def get_reader(path):
    """Return a reader for paths we handle, None for the rest (napari tries other plugins)."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(isinstance(p, (str, Path)) and can_read(p) for p in paths):
        return None
    return read_layers


def read_layers(path) -> list[tuple]:
    """Each path becomes one layer; errors carry the file name and what is wrong with it."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    return [to_layer_data(read_image(p), layer_name(p)) for p in paths]


def layer_name(path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".mgz", ".mgh", ".dcm", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name

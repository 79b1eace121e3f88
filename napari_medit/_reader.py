"""npe2 reader contribution: NIfTI, FreeSurfer MGH/MGZ, DICOM files and series folders, DICOM SEG,
PNG/JPEG."""

from __future__ import annotations

from pathlib import Path

from .io import can_read, read_image
from .io.formats import strip_suffix
from .io.layers import to_layer_data


def get_reader(path):
    """Return a reader for paths we handle, None for the rest (napari tries other plugins)."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(isinstance(p, (str, Path)) and can_read(p) for p in paths):
        return None
    return read_layers


def read_layers(path) -> list[tuple]:
    """Each path becomes one layer, a DICOM SEG one Labels layer per segment (on the SEG's own geometry);
    errors carry the file name and what is wrong with it."""
    from .io.dicom_seg import is_seg, read_seg

    paths = path if isinstance(path, (list, tuple)) else [path]
    layers = []
    for p in paths:
        if Path(p).is_file() and is_seg(p):
            layers += [to_layer_data(mask, name, "labels") for name, mask in read_seg(p).items()]
        else:
            layers.append(to_layer_data(read_image(p), layer_name(p)))
    return layers


def layer_name(path) -> str:
    return strip_suffix(Path(path).name)

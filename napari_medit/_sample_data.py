"""npe2 sample-data contributions (File > Open Sample > napari-medit)."""

from __future__ import annotations

from .io.layers import to_layer_data
from .sample_data import load_brain, load_cxr


def brain_sample() -> list[tuple]:
    return [to_layer_data(image, name) for name, image in load_brain().items()]


def cxr_sample() -> list[tuple]:
    return [to_layer_data(image, name) for name, image in load_cxr().items()]

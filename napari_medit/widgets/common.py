"""What every napari-medit dock widget shares: the "(none)" choice, a status line, layer helpers
and the one way a failure is shown."""

from __future__ import annotations

import gc
import threading

from magicgui.widgets import Label

from ..io.layers import from_layer

NONE = "(none)"


def viewer_identity(viewer) -> int:
    """One number per napari viewer: napari hands each plugin widget its own proxy of the viewer (a
    ``PublicOnlyProxy``), so widgets of one viewer compare what the proxies wrap."""
    while hasattr(type(viewer), "__wrapped__"):
        viewer = viewer.__wrapped__
    return id(viewer)


class QuietCollector:
    """Keeps Python's full garbage collections short while the GUI thread must stay quick: while
    edits run and while a widget connects to its engine. napari's process holds some 300,000 objects;
    a full (oldest-generation) collection scans them all, ~200 ms on the GUI thread at whatever
    allocation sets it off (adding the preview layer, in benchmarks/gui_stall.py). While any hold
    lasts, the objects that existed when the first began are frozen (``gc.freeze``: left out of every
    collection, not freed); when the last hold ends they are handed back, so nothing that became
    garbage meanwhile is kept for good."""

    _lock = threading.Lock()
    _holds = 0

    @classmethod
    def hold(cls) -> None:
        with cls._lock:
            cls._holds += 1
            if cls._holds == 1:
                gc.freeze()

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            if cls._holds == 0:
                return
            cls._holds -= 1
            if cls._holds == 0:
                gc.unfreeze()


def status_label(text: str = "") -> Label:
    """A status line whose text never resizes the dock: a long message (a file name, a metric) would
    otherwise widen the dock and squeeze the canvas."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value=text)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    label.native.setWordWrap(False)
    return label


def grey_images(viewer) -> list[tuple[str, object]]:
    """The Image layers napari-medit edits (grey: the methods do not edit colour), as picker choices that
    hold the layers themselves, so a renamed or moved layer stays picked."""
    from napari.layers import Image

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image) and not layer.rgb]


def layer_image(layer):
    """The MedicalImage behind an image layer, in the layer's own orientation (axial slices along axis 0
    for volumes napari-medit read), so masks painted on the layers line up and results go back as shown."""
    return from_layer(layer.data, layer.metadata, layer.scale, layer.translate, file_order=False)


def show_failure(status: Label, message: str) -> None:
    """One error notification saying what is wrong and how to fix it; the widget's status says 'failed'."""
    from napari.utils import notifications

    notifications.show_error(message)
    status.value = "failed"

"""A dock widget showing what napari-medit knows of the selected layer's geometry."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QLabel, QPlainTextEdit, QVBoxLayout, QWidget

from ..io import MedicalImage

if TYPE_CHECKING:
    import napari


class ImageInfoWidget(QWidget):
    """Shape, spacing, orientation, affine and source of the active layer."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.title = QLabel()
        self.details = QPlainTextEdit(readOnly=True)
        self.details.setMinimumWidth(320)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.details)
        self.viewer.layers.selection.events.active.connect(self._refresh)
        self._refresh()

    def _refresh(self, event=None) -> None:
        layer = self.viewer.layers.selection.active
        if layer is None:
            self.title.setText("Select a layer")
            self.details.setPlainText("")
            return
        self.title.setText(f"<b>{layer.name}</b> ({layer.__class__.__name__})")
        self.details.setPlainText(format_description(describe_layer(layer)))


def format_description(description: dict) -> str:
    """One line per field; matrices one row per line."""
    lines = []
    for key, value in description.items():
        if key in ("file_affine", "affine"):
            lines.append(f"{key}:")
            lines.extend("  " + "  ".join(f"{v:9.3f}" for v in row) for row in value)
        elif isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {json.dumps(v)}" for k, v in value.items())
        else:
            lines.append(f"{key}: {value if isinstance(value, str) else json.dumps(value)}")
    return "\n".join(lines)


def describe_layer(layer) -> dict:
    """Geometry as the file gave it (for layers napari-medit read) or as napari holds it."""
    metadata = getattr(layer, "metadata", {}) or {}
    data = np.asarray(layer.data) if hasattr(layer, "data") else None
    if data is None or data.ndim < 2:
        return {"note": "not an image layer"}
    if "affine" not in metadata:
        return {
            "shape": list(data.shape),
            "dtype": str(data.dtype),
            "scale": [float(s) for s in layer.scale],
            "translate": [float(t) for t in layer.translate],
            "note": "not read by napari-medit: geometry is napari's scale and translate only",
        }
    extra_axes = metadata.get("_extra_axes_first", 0)
    spatial = np.moveaxis(data, tuple(range(extra_axes)), tuple(range(data.ndim - extra_axes, data.ndim)))
    summary = MedicalImage(spatial, metadata["affine"], metadata).summary()
    source = metadata.get("_source_affine")
    if source is not None:
        summary.pop("affine")  # the display affine; the file's own is what users compare
        summary["file_affine"] = np.asarray(source).round(6).tolist()
    return summary

"""Screenshots of the dock widgets in use, for the README (run under Xvfb on a headless machine).

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/widget_screenshots.py
"""

from __future__ import annotations

import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

IMAGES = Path(__file__).parent / "images"
SAMPLES = Path(__file__).parents[1] / "napari_medit" / "sample_data"


def spin(seconds: float, until=lambda: False):
    app = QApplication.instance()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        app.processEvents()
        time.sleep(0.01)


def brain() -> None:
    """Data, Masks, Edit and Compare on the brain sample: one MedEdit run, then its comparison."""
    viewer = napari.Viewer()
    viewer.window.resize(1500, 950)
    data_dock, data = viewer.window.add_plugin_dock_widget("napari-medit", "Data")
    data.open(SAMPLES / "brain_t1.nii.gz")
    data.contrast.value = "MRI tissue"
    for name in ("brain_mask", "lesion_mask"):
        viewer.open(str(SAMPLES / f"{name}.nii.gz"), plugin="napari-medit")
    viewer.dims.set_current_step(0, 62)
    _, masks = viewer.window.add_plugin_dock_widget("napari-medit", "Masks", tabify=True)
    masks.image.value, masks.method.value = masks.viewer.layers["brain_t1"], "mededit"
    masks.show_inpainting_mask()
    masks.check()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medit", "Edit", tabify=True)
    widget.method.value, widget.model.value, widget.image.value = (
        "mededit",
        "demo-brain",
        widget.viewer.layers["brain_t1"],
    )
    spin(120, lambda: widget.ready)
    widget.parameter("steps").value = 100
    widget.run()
    spin(600, lambda: "brain_t1 mededit difference" in viewer.layers and widget.run_button.enabled)
    viewer.layers["brain_t1 inpainting_mask"].visible = False
    spin(1)
    viewer.screenshot(str(IMAGES / "napari_widgets_brain.png"), canvas_only=False)
    _, compare = viewer.window.add_plugin_dock_widget("napari-medit", "Compare", tabify=True)
    compare.result.value = "brain_t1 mededit"
    compare.side_by_side.value = True
    spin(1)
    viewer.screenshot(str(IMAGES / "napari_compare_widget.png"), canvas_only=False)
    compare.side_by_side.value = False
    data_dock.raise_()
    data.radiological.value = False  # the neurological view, for the Data widget's picture
    spin(1)
    viewer.screenshot(str(IMAGES / "napari_data_widget.png"), canvas_only=False)
    viewer.close()


def cxr_masks() -> None:
    viewer = napari.Viewer()
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-medit", "cxr")
    _, masks = viewer.window.add_plugin_dock_widget("napari-medit", "Masks")
    masks.image.value, masks.method.value = masks.viewer.layers["cxr"], "radedit"
    masks.check()
    spin(1)
    viewer.screenshot(str(IMAGES / "napari_masks_widget.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    brain()
    cxr_masks()

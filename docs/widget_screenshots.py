"""Screenshots of the dock widgets in use, for the README (run under Xvfb on a headless machine).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/widget_screenshots.py
"""

from __future__ import annotations

import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

IMAGES = Path(__file__).parent / "images"


def spin(seconds: float, until=lambda: False):
    app = QApplication.instance()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        app.processEvents()
        time.sleep(0.01)


def brain() -> None:
    viewer = napari.Viewer()
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-medit", "brain")
    viewer.dims.set_current_step(0, 62)
    _, masks = viewer.window.add_plugin_dock_widget("napari-medit", "Masks")
    masks.image.value, masks.method.value = "t1", "mededit"
    masks.show_inpainting_mask()
    masks.check()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medit", "Edit", tabify=True)
    widget.method.value, widget.model.value, widget.image.value = "mededit", "demo-brain", "t1"
    spin(120, lambda: widget.ready)
    widget.parameter("steps").value = 100
    widget.run()
    spin(600, lambda: "t1 mededit difference" in viewer.layers and widget.run_button.enabled)
    viewer.layers["t1 inpainting_mask"].visible = False
    spin(1)
    viewer.screenshot(str(IMAGES / "napari_widgets_brain.png"), canvas_only=False)
    viewer.close()


def cxr_masks() -> None:
    viewer = napari.Viewer()
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-medit", "cxr")
    _, masks = viewer.window.add_plugin_dock_widget("napari-medit", "Masks")
    masks.image.value, masks.method.value = "cxr", "radedit"
    masks.check()
    spin(1)
    viewer.screenshot(str(IMAGES / "napari_masks_widget.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    brain()
    cxr_masks()

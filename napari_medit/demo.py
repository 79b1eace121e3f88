"""`make demo`: napari on the bundled samples with the plugin's widgets.

    python -m napari_medit.demo                      # interactive
    python -m napari_medit.demo --headless --out DIR # under Xvfb: sample files + screenshots

Headless, it writes the samples' files to DIR/brain and DIR/cxr and screenshots of
napari with each sample to DIR/napari_brain.png and DIR/napari_cxr.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

PLUGIN = "napari-medit"


def open_sample(viewer, name: str) -> None:
    layers = viewer.open_sample(PLUGIN, name)
    masks = [layer for layer in layers if type(layer).__name__ == "Labels"]
    for layer in masks:
        layer.opacity = 0.5
    if "keep_mask" in viewer.layers:
        viewer.layers["keep_mask"].opacity = 0.25  # it covers most of the image
    if name == "brain":
        viewer.layers["brain_mask"].visible = False
        lesion = viewer.layers["lesion_mask"]
        centre = np.argwhere(lesion.data).mean(axis=0)
        viewer.dims.set_point(0, lesion.data_to_world(centre)[0])  # the axial slice through the lesion
    if name == "cxr":
        viewer.layers["lung_mask"].visible = False
    viewer.reset_view()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headless", action="store_true", help="write files and screenshots, then quit")
    parser.add_argument("--out", default="demo_output", help="folder for the headless run")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from .sample_data import write_sample

    if not args.headless:
        viewer = napari.Viewer(title="napari-medit demo")
        viewer.window.add_plugin_dock_widget(PLUGIN, "Image info")
        open_sample(viewer, "brain")
        napari.run()
        return 0

    out = Path(args.out)
    written = [p for name in ("brain", "cxr") for p in write_sample(name, out / name)]
    for name in ("brain", "cxr"):
        viewer = napari.Viewer(title=f"napari-medit demo: {name}")
        viewer.window.resize(1400, 900)
        viewer.window.add_plugin_dock_widget(PLUGIN, "Image info")
        open_sample(viewer, name)
        viewer.layers.selection.active = viewer.layers[0]
        QApplication.processEvents()  # let the dock widget lay itself out, then fit the image
        viewer.reset_view()
        QApplication.processEvents()
        shot = out / f"napari_{name}.png"
        viewer.screenshot(str(shot), canvas_only=False)
        written.append(shot)
        viewer.close()
    print(f"napari-medit demo wrote {len(written)} files to {out}/:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Event-loop stall while the Edit widget runs: does the GUI stay responsive?

    xvfb-run -a python benchmarks/gui_stall.py [--steps 60]

A 10 ms QTimer probes napari's Qt event loop; the stall is how much later than
scheduled a tick arrives (the longest gap minus 10 ms). Measured side by side in one
run: idle with the sample brain open, then during a MedEdit run on demo-brain through
the Edit widget (live preview on). Target: no stall over 100 ms while editing.
"""

from __future__ import annotations

import argparse
import json
import math
import time

PROBE_MS = 10
TARGET_MS = 100


class StallProbe:
    """Records (time the tick arrived, gap since the previous tick) for every tick."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.ticks: list[tuple[float, float]] = []
        self._last = None
        self._timer = QTimer()
        self._timer.setInterval(PROBE_MS)
        self._timer.timeout.connect(self._tick)

    def _tick(self):
        now = time.perf_counter()
        if self._last is not None:
            self.ticks.append((now, (now - self._last) * 1000))
        self._last = now

    def start(self):
        self.ticks, self._last = [], None
        self._timer.start()

    def stop(self):
        self._timer.stop()

    def stalls(self, start: float = -math.inf, end: float = math.inf) -> dict[str, float]:
        """Stall figures for the ticks that arrived in [start, end)."""
        gaps = sorted(gap for at, gap in self.ticks if start <= at < end) or [PROBE_MS]
        return {"ticks": len(gaps), "max_stall_ms": max(0.0, gaps[-1] - PROBE_MS),
                "p99_stall_ms": max(0.0, gaps[int(0.99 * (len(gaps) - 1))] - PROBE_MS)}


def measure(steps: int = 60, idle_seconds: float = 3.0) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    try:
        viewer.open_sample("napari-medit", "brain")
        opening = time.perf_counter()
        _, widget = viewer.window.add_plugin_dock_widget("napari-medit", "Edit")
        open_ms = (time.perf_counter() - opening) * 1000  # the GUI thread is busy for all of it
        widget.method.value, widget.model.value, widget.image.value = "mededit", "demo-brain", "t1"
        app = QApplication.instance()
        probe = StallProbe()

        def spin_until(condition, timeout):
            deadline = time.monotonic() + timeout
            while not condition() and time.monotonic() < deadline:
                app.processEvents()
                time.sleep(0.001)

        probe.start()  # opening the widget started the engine's imports in the background
        warm_start = time.perf_counter()
        spin_until(lambda: widget.ready, 120)  # engine imported, model loaded, parameter forms built
        spin_until(lambda: False, 0.5)
        widget.parameter("steps").value = steps
        warmup = probe.stalls() | {"seconds": time.perf_counter() - warm_start}
        probe.stop()

        probe.start()
        spin_until(lambda: False, idle_seconds)
        idle = probe.stalls()
        probe.stop()

        returned = []
        widget_result = widget._on_result
        widget._on_result = lambda *a: (returned.append(time.perf_counter()), widget_result(*a))
        probe.start()
        clicked = time.perf_counter()
        widget.run()  # the click: the run starts and the preview layer is added
        click_ms = (time.perf_counter() - clicked) * 1000
        spin_until(lambda: widget.status.value.startswith("step"), 600)
        first_step = time.perf_counter()
        spin_until(lambda: "t1 mededit difference" in viewer.layers and widget.run_button.enabled, 600)
        probe.stop()
        # Start-up: the preview layer's first paint and the worker preparing the slices (model cached).
        starting = probe.stalls(clicked + click_ms / 1000, first_step)
        starting["seconds"] = first_step - clicked
        editing = probe.stalls(first_step, returned[0])
        editing["seconds"] = returned[0] - first_step
        results = probe.stalls(returned[0])
        return {"open_ms": open_ms, "warmup": warmup, "idle": idle, "click_ms": click_ms, "starting": starting, "editing": editing,
                "results": results,
                "steps": steps, "slices": len(viewer.layers["t1 mededit"].metadata["edit"]["slices"]),
                "add_layer_ms": _add_layer_ms(viewer, app), "target_ms": TARGET_MS}
    finally:
        viewer.close()


def _add_layer_ms(viewer, app) -> float:
    """napari's own cost of adding one volume layer to this viewer, idle, for comparison."""
    data = viewer.layers["t1"].data
    start = time.perf_counter()
    layer = viewer.add_image(data, name="probe", contrast_limits=(0, 1))
    app.processEvents()
    seconds = time.perf_counter() - start
    viewer.layers.remove(layer)
    return seconds * 1000


def report(figures: dict) -> str:
    editing = figures["editing"]
    verdict = "meets" if editing["max_stall_ms"] <= TARGET_MS else "MISSES"
    rows = [
        ("widget open: engine imports + model load in the background", figures["warmup"]),
        ("idle", figures["idle"]),
        (f"start-up: click to first step ({figures['starting']['seconds']:.1f} s; preview layer drawn)",
         figures["starting"]),
        (f"denoising ({editing['seconds']:.1f} s, preview every 5 steps)", editing),
        ("results: the preview layer becomes the result, difference layer added", figures["results"]),
    ]
    return "\n".join([
        f"MedEdit on demo-brain through the Edit widget ({figures['slices']} slices, {figures['steps']} steps), "
        f"{PROBE_MS} ms QTimer probe; stall = tick gap - {PROBE_MS} ms:",
        "",
        "| phase | ticks | max stall ms | p99 stall ms |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {f['ticks']} | {f['max_stall_ms']:.0f} | {f['p99_stall_ms']:.0f} |" for name, f in rows),
        "",
        f"Opening the widget (building it and its forms, on the GUI thread): {figures['open_ms']:.0f} ms. "
        f"Run click handler (starts the worker, adds the preview layer): {figures['click_ms']:.0f} ms. "
        f"napari adding one volume layer to an idle viewer here: {figures['add_layer_ms']:.0f} ms.",
        f"Editing max stall / idle max stall: "
        f"{editing['max_stall_ms'] / max(figures['idle']['max_stall_ms'], 1.0):.1f}x; "
        f"target <= {TARGET_MS} ms while denoising: {verdict}.",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = measure(args.steps)
    print(json.dumps(figures) if args.json else report(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

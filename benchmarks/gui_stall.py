"""Event-loop stall while the Edit widget runs, per phase, and what the compute boundary costs.

    xvfb-run -a python benchmarks/gui_stall.py [--steps 60] [--boundary-steps 10]

A 10 ms QTimer probes napari's Qt event loop; the stall is how much later than
scheduled a tick arrives (the longest gap minus 10 ms). Measured side by side in one
run: MedEdit on demo-brain through the Edit widget (live preview on) with the default
compute (a dask worker process) and then with 'this process' (the thread worker; it
imports torch into napari, so it runs second). Target: no phase stalls over 100 ms.

Then the boundary itself, through the API on the same edit: its wall time in this process
against the local worker process (both warm), and the bytes each way.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from contextlib import contextmanager

PROBE_MS = 10
TARGET_MS = 100
FIRST_PREVIEW_S = 1.0  # after the preview layer appears: its first draw falls in this window


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
        return {
            "ticks": len(gaps),
            "max_stall_ms": max(0.0, gaps[-1] - PROBE_MS),
            "p99_stall_ms": max(0.0, gaps[int(0.99 * (len(gaps) - 1))] - PROBE_MS),
        }


HEAVY = ("torch", "diffusers", "monai", "transformers")


def watch_first_paint(native):
    """Records when ``native`` is first painted (``.at``, perf_counter seconds)."""
    from qtpy.QtCore import QEvent, QObject

    class Filter(QObject):
        at = None

        def eventFilter(self, watched, event):
            if event.type() == QEvent.Type.Paint and self.at is None:
                self.at = time.perf_counter()
            return False

    watcher = Filter(native)
    native.installEventFilter(watcher)
    return watcher


def measure(compute, steps: int = 60, idle_seconds: float = 3.0) -> dict:
    import sys

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    try:
        viewer.open_sample("napari-medit", "brain")
        opening = time.perf_counter()
        with _timed_construction() as built_ms:
            _, widget = viewer.window.add_plugin_dock_widget("napari-medit", "Edit")
        widget.compute.value = compute
        app = QApplication.instance()
        painted = watch_first_paint(widget.run_button.native)  # the foot of the form: all of it laid out
        while painted.at is None and time.perf_counter() - opening < 30:
            app.processEvents()  # until the dock is first painted the user sees nothing
        if painted.at is None:
            raise RuntimeError("the Edit widget was not painted within 30 s: is the viewer shown?")
        open_ms = (painted.at - opening) * 1000
        probe = StallProbe()

        def spin_until(condition, timeout):
            deadline = time.monotonic() + timeout
            while not condition() and time.monotonic() < deadline:
                app.processEvents()
                time.sleep(0.001)

        probe.start()  # opening the widget started connecting in the background
        warm_start = time.perf_counter()
        spin_until(lambda: widget.ready, 120)  # connected, the worker's models listed
        widget.method.value, widget.model.value, widget.image.value = (
            "mededit",
            "demo-brain",
            widget.viewer.layers["t1"],
        )
        spin_until(lambda: False, 8.0)  # the chosen model loads where edits run
        widget.parameter("steps").value = steps
        warmup = probe.stalls() | {"seconds": time.perf_counter() - warm_start}
        probe.stop()

        probe.start()
        spin_until(lambda: False, idle_seconds)
        idle = probe.stalls()
        probe.stop()

        returned = []  # when the outcome reached the GUI thread, before the widget handles it
        widget.client.relay.outcome.disconnect(widget._on_outcome)
        widget.client.relay.outcome.connect(
            lambda outcome: (returned.append(time.perf_counter()), widget._on_outcome(outcome))
        )
        probe.start()
        clicked = time.perf_counter()
        widget.run()  # the click: the run starts and the preview layer is added
        click_ms = (time.perf_counter() - clicked) * 1000
        spin_until(lambda: widget.status.value.startswith("step"), 600)
        first_step = time.perf_counter()
        spin_until(lambda: "preview" in viewer.layers, 600)
        preview_added = time.perf_counter()
        spin_until(lambda: "t1 mededit difference" in viewer.layers and widget.run_button.enabled, 600)
        probe.stop()
        # Start-up: the worker preparing the slices (model cached) until the first step arrives.
        starting = probe.stalls(clicked + click_ms / 1000, first_step)
        starting["seconds"] = first_step - clicked
        # The first preview: its layer added and first drawn (the second after it is counted here).
        drawn = preview_added + FIRST_PREVIEW_S
        first_preview = probe.stalls(first_step, drawn)
        editing = probe.stalls(drawn, returned[0])
        editing["seconds"] = returned[0] - first_step
        results = probe.stalls(returned[0])
        add_layer_ms = _add_layer_ms(viewer, app)
        edit = viewer.layers["t1 mededit"].metadata["edit"]
        # Closing napari mid-edit: the GUI thread's share (the worker stops behind it).
        widget.run()
        spin_until(lambda: widget.status.value.startswith("step"), 600)
        layers_at_close = len(viewer.layers)
        closing = time.perf_counter()
        viewer.close()
        close_ms = (time.perf_counter() - closing) * 1000
        viewer = None
        return {
            "compute": compute.value,
            "heavy": sorted(name for name in HEAVY if name in sys.modules),
            "seconds": edit["seconds"],
            "open_ms": open_ms,
            "built_ms": built_ms[0],
            "warmup": warmup,
            "idle": idle,
            "click_ms": click_ms,
            "starting": starting,
            "first_preview": first_preview,
            "editing": editing,
            "close_ms": close_ms,
            "napari_close_ms": _napari_close_ms(layers_at_close),
            "results": results,
            "steps": steps,
            "slices": len(edit["slices"]),
            "add_layer_ms": add_layer_ms,
            "target_ms": TARGET_MS,
        }
    finally:
        if viewer is not None:
            viewer.close()


def boundary(steps: int) -> dict:
    """One MedEdit through the API in this process and on the local worker process (both warm: the
    model loaded, the worker started), and the bytes the request and the result take on the wire."""
    import pickle

    import cloudpickle

    from napari_medit.catalogue import LOCAL_WORKER
    from napari_medit.compute import EditRequest, compute_edit, connect, edit
    from napari_medit.compute.wire import Box
    from napari_medit.sample_data import load_brain

    sample = load_brain()
    image = sample["t1"]
    masks = {"pathology_mask": sample["lesion_mask"].array, "brain_mask": sample["brain_mask"].array}
    cluster = connect(LOCAL_WORKER)
    cluster.warm_up("demo-brain")
    timings = {}
    for where in (LOCAL_WORKER, None, LOCAL_WORKER, None):  # interleaved, best of two each
        started = time.perf_counter()
        result = edit("mededit", image, model="demo-brain", scheduler=where, steps=steps, **masks)
        timings.setdefault(where or "here", []).append(time.perf_counter() - started)
    request = EditRequest("mededit", image, "demo-brain", {"steps": steps, **masks})
    packed = Box.pack(compute_edit(request), image.array)
    return {
        "steps": steps,
        "here_s": min(timings["here"]),
        "worker_s": min(timings[LOCAL_WORKER]),
        "edit_s": result.provenance["seconds"],
        "sent_bytes": len(cloudpickle.dumps(request)),
        "received_bytes": len(pickle.dumps(packed)),
        "whole_result_bytes": len(pickle.dumps(result)),
        "source_bytes": image.array.nbytes,
    }


@contextmanager
def _timed_construction():
    """The Edit widget's own construction (its ``__init__``): our share of opening it, the rest being
    napari's docking and Qt's first layout and paint."""
    from napari_medit.widgets.edit import EditWidget

    built_ms, construct = [], EditWidget.__init__

    @functools.wraps(construct)  # napari reads the signature for the viewer argument
    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        construct(self, *args, **kwargs)
        built_ms.append((time.perf_counter() - started) * 1000)

    EditWidget.__init__ = timed
    try:
        yield built_ms
    finally:
        EditWidget.__init__ = construct


def _add_layer_ms(viewer, app) -> float:
    """napari's own cost of adding one volume layer to this viewer, idle, for comparison."""
    data = viewer.layers["t1"].data
    start = time.perf_counter()
    layer = viewer.add_image(data, name="probe", contrast_limits=(0, 1))
    app.processEvents()
    seconds = time.perf_counter() - start
    viewer.layers.remove(layer)
    return seconds * 1000


def _napari_close_ms(layer_count: int) -> float:
    """napari's own cost of closing a viewer holding as many layers (the brain sample and copies), with no
    napari-medit widget, for comparison with closing mid-edit."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-medit", "brain")
    data = viewer.layers["t1"].data
    while len(viewer.layers) < layer_count:
        viewer.add_image(data, name=f"copy {len(viewer.layers)}", contrast_limits=(0, 1))
    for _ in range(20):
        QApplication.instance().processEvents()
        time.sleep(0.01)
    start = time.perf_counter()
    viewer.close()
    return (time.perf_counter() - start) * 1000


PHASES = (
    ("open", "widget open (building, docking and first painting it; GUI thread)"),
    ("warmup", "warm-up: connect, list the models, load the model where edits run"),
    ("idle", "idle"),
    ("click", "click: Run handler (request sent, preview layer added)"),
    ("starting", "start-up: click to the first step"),
    ("first_preview", f"first preview: its layer added and drawn (the {FIRST_PREVIEW_S:.0f} s after)"),
    ("editing", "denoising, preview every 5 steps"),
    ("results", "results: the preview layer becomes the result, difference layer added"),
    ("close", "closing napari mid-edit (GUI thread; the worker stops behind it)"),
)


def _phase_ms(figures: dict, phase: str) -> float:
    if phase in ("open", "click", "close"):
        return figures[f"{phase}_ms"]  # the GUI thread is busy for all of it: one stall
    return figures[phase]["max_stall_ms"]


def report(runs: list[dict], crossing: dict) -> str:
    first = runs[0]
    header = " | ".join(f"{run['compute']} max stall ms" for run in runs)
    lines = [
        f"MedEdit on demo-brain through the Edit widget ({first['slices']} slices, {first['steps']} steps), "
        f"{PROBE_MS} ms QTimer probe; stall = tick gap - {PROBE_MS} ms (open, click and close: the handler's "
        f"own time):",
        "",
        f"| phase | {header} |",
        "|---|" + "---:|" * len(runs),
        *(
            f"| {label} | " + " | ".join(f"{_phase_ms(run, phase):.0f}" for run in runs) + " |"
            for phase, label in PHASES
        ),
        "",
        *(
            f"- {run['compute']}: the edit took {run['seconds']:.1f} s; torch-family modules in napari's "
            f"process: "
            f"{', '.join(run['heavy']) or 'none'}; worst phase "
            f"{max(_phase_ms(run, p) for p, _ in PHASES if p != 'open'):.0f} ms (target {TARGET_MS} ms, "
            f"open excluded)"
            for run in runs
        ),
        f"- opening: the widget's own construction {first['built_ms']:.0f} ms of {first['open_ms']:.0f} ms "
        "(the rest: napari docking it, Qt's first layout and paint); its parameter forms and connecting "
        "follow in the next event-loop turns, counted in the warm-up.",
        f"- napari adding one volume layer to an idle viewer here: {first['add_layer_ms']:.0f} ms; closing a "
        f"viewer with as many layers and no napari-medit widget: {first['napari_close_ms']:.0f} ms.",
        "",
        f"The boundary, MedEdit {crossing['steps']} steps on the brain sample through the API (warm, best of "
        f"two):",
        "",
        "| | seconds |",
        "|---|---:|",
        f"| this process | {crossing['here_s']:.2f} |",
        f"| local worker process | {crossing['worker_s']:.2f} |",
        f"| ratio | {crossing['worker_s'] / crossing['here_s']:.3f} |",
        "",
        f"Bytes sent (the request: source, masks, options): {crossing['sent_bytes'] / 1e6:.2f} MB "
        f"(source array {crossing['source_bytes'] / 1e6:.2f} MB); received (the box that changed): "
        f"{crossing['received_bytes'] / 1e6:.2f} MB, against {crossing['whole_result_bytes'] / 1e6:.2f} MB "
        f"for the whole result.",
    ]
    return "\n".join(lines)


def main() -> int:
    from napari_medit.widgets.edit import Compute

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--boundary-steps", type=int, default=10, help="MedEdit steps of the boundary's edit")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    runs = [measure(Compute.worker_process, args.steps), measure(Compute.this_process, args.steps)]
    crossing = boundary(args.boundary_steps)
    print(json.dumps({"runs": runs, "boundary": crossing}) if args.json else report(runs, crossing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

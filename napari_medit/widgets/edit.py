"""The Edit dock widget: pick a method, a model, the image and its masks; Run, watch, Cancel.

All maths lives in ``napari_medit.editing``: this widget gathers parameters, runs
``edit()`` in a napari thread worker (the GUI stays responsive), shows the current
estimate as a preview layer, and adds the result and a difference map as layers aligned
with the source. Errors become notifications; a cancelled or failed run leaves no layer.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, LineEdit, PushButton, SpinBox
from qtpy.QtCore import QObject, Signal

from ..io.layers import display_range, from_layer

if TYPE_CHECKING:
    import napari

# Masks each method reads, in the order they are asked for.
METHOD_MASKS = {
    "radedit": ("edit_mask", "keep_mask"),
    "mededit": ("pathology_mask", "brain_mask"),
    "pie": ("roi_mask",),
    "sdedit": ("edit_mask", "pathology_mask", "brain_mask"),
    "repaint": ("pathology_mask", "brain_mask"),
    "diffedit": ("edit_mask",),
}
TEXT_METHODS = ("radedit", "pie", "diffedit")
NONE = "(none)"
GUI_TASK_GAP_MS = 20  # between layer insertions: long enough for queued input and paint events to run


MASK_NAME_HINTS = {"pathology_mask": ("pathology", "lesion"), "brain_mask": ("brain",), "edit_mask": ("edit",),
                   "keep_mask": ("keep",), "roi_mask": ("roi",)}


def name_like(role: str, names) -> str | None:
    """The first of ``names`` that says it is a ``role`` mask ('lesion_mask' for pathology_mask)."""
    return next((n for n in names if any(hint in n.lower() for hint in MASK_NAME_HINTS[role])), None)


class _Failed:
    """An expected failure (cancel, bad request, missing model) handed back by the worker."""

    def __init__(self, error: Exception):
        self.error = error


class _Relay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued Qt signal)."""

    step = Signal(object)


class EditWidget(Container):
    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.method = ComboBox(label="method", choices=list(METHOD_MASKS), value="mededit")
        self.model = ComboBox(label="model", choices=self._models)
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.masks = {name: ComboBox(label=name.replace("_", " "), choices=self._label_layers)
                      for name in ("edit_mask", "keep_mask", "pathology_mask", "brain_mask", "roi_mask")}
        self.prompt = LineEdit(label="prompt", value="")
        self.steps = SpinBox(label="steps", min=1, max=1000, value=100,
                             tooltip="denoising steps (the papers: RadEdit 100, MedEdit 1000, PIE 50 per step)")
        self.guidance = FloatSpinBox(label="guidance", min=1.0, max=50.0, step=0.5, value=15.0,
                                     tooltip="classifier-free guidance (RadEdit paper: 15; PIE: 7.5)")
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.extend([self.method, self.model, self.image, *self.masks.values(), self.prompt, self.steps,
                     self.guidance, self.seed, self.run_button, self.cancel_button, self.status])
        self.method.changed.connect(self._show_relevant)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._refresh_choices)
        self.viewer.layers.events.removed.connect(self._refresh_choices)
        self._relay = _Relay()
        self._relay.step.connect(self._on_step)
        self._cancel = threading.Event()
        self._preview = None
        self._models_loaded: dict[str, object] = {}  # kept between runs: a second Run starts at once
        self._models_lock = threading.Lock()
        self._gui_tasks: list = []
        self.worker = None
        self._show_relevant()
        self.warmup = self._warm_up()

    def _warm_up(self) -> threading.Event:
        """Import the engine and load the selected model in the background while the user sets up:
        imports hold Python's lock for up to ~0.4 s at a time, which would stall the GUI mid-run."""
        from napari.qt.threading import create_worker

        done = threading.Event()
        model_name = self.model.value

        def load():
            try:
                self._model(model_name)
            except Exception:  # noqa: BLE001 - a broken model is reported when the user runs it
                pass
            finally:
                done.set()

        create_worker(load).start()
        return done

    def _model(self, name: str):
        """The named model, loaded once and kept between runs."""
        from ..backends import load_model

        with self._models_lock:
            if name not in self._models_loaded:
                self._models_loaded[name] = load_model(name)
            return self._models_loaded[name]

    # ------------------------------------------------------------ choices

    def _models(self, _=None):
        from ..backends import model_folders

        return list(model_folders()) or [NONE]

    def _image_layers(self, _=None):
        return [layer.name for layer in self.viewer.layers if type(layer).__name__ == "Image"] or [NONE]

    def _label_layers(self, _=None):
        return [NONE] + [layer.name for layer in self.viewer.layers if type(layer).__name__ == "Labels"]

    def _refresh_choices(self, event=None):
        for box in (self.image, *self.masks.values()):
            box.reset_choices()
        self._guess_masks()

    def _guess_masks(self):
        """Pre-select layers whose names say what they are (lesion -> pathology, and so on)."""
        for name, box in self.masks.items():
            if box.value == NONE:
                match = name_like(name, box.choices)
                if match:
                    box.value = match

    def _show_relevant(self, _=None):
        wanted = METHOD_MASKS[self.method.value]
        for name, box in self.masks.items():
            box.visible = name in wanted
        self.prompt.visible = self.guidance.visible = self.method.value in TEXT_METHODS
        self._guess_masks()

    # ------------------------------------------------------------ running

    def request(self) -> dict:
        """What the current settings ask for, as ``edit()`` arguments (layers read, never modified)."""
        layer = self.viewer.layers[self.image.value] if self.image.value != NONE else None
        if layer is None:
            raise ValueError("open or select an image layer first")
        # The layer's own orientation (axial slices along axis 0 for volumes napari-medit read),
        # so masks painted on the layers line up and results go back without reorienting.
        source = from_layer(layer.data, layer.metadata, layer.scale, layer.translate, file_order=False)
        kwargs = {"image": source, "seed": self.seed.value, "steps": self.steps.value, "axis": 0}
        for name in METHOD_MASKS[self.method.value]:
            if self.masks[name].value != NONE:
                kwargs[name] = np.asarray(self.viewer.layers[self.masks[name].value].data)
        if self.method.value in TEXT_METHODS:
            kwargs["guidance"] = self.guidance.value
            if self.prompt.value:
                kwargs["prompt"] = self.prompt.value
        return kwargs

    def run(self, _=None):
        from napari.qt.threading import create_worker
        from napari.utils import notifications

        try:
            kwargs = self.request()
        except ValueError as exc:
            notifications.show_error(str(exc))
            return
        method, model_name, source_name = self.method.value, self.model.value, self.image.value
        self._cancel = threading.Event()

        def job():
            from ..backends import ModelLoadError
            from ..editing import EditCancelled, EditError, edit

            # Expected failures come back wrapped: napari re-raises a worker's exceptions,
            # and even treats a returned exception as one.
            try:
                model = self._model(model_name)
                if method == "radedit":  # keep the paper's skip / steps ratio (36 / 100) at any step count
                    from ..editing.radedit import RadEditParams

                    paper = RadEditParams()
                    kwargs["skip"] = round(kwargs["steps"] * paper.skip / paper.steps)
                return edit(method, kwargs.pop("image"), model=model, cancel=self._cancel,
                            callback=self._relay.step.emit, **kwargs)
            except (EditCancelled, EditError, ModelLoadError) as failure:
                return _Failed(failure)

        self.worker = create_worker(job)
        self.worker.returned.connect(lambda result: self._on_result(result, source_name, method))
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"{method}: loading {model_name}..."
        self.worker.start()
        self._add_preview(self.viewer.layers[source_name])

    def _add_preview(self, source):
        """The preview layer, added now (in answer to the click) rather than mid-run; it starts as the
        source slice in view and shows the current estimate as the run goes."""
        plane = np.asarray(source.data[self.viewer.dims.current_step[0]] if source.ndim == 3 else source.data)
        self._preview = self.viewer.add_image(plane.astype(np.float32), name="preview", colormap="gray",
                                              opacity=0.8, scale=source.scale[-2:], translate=source.translate[-2:],
                                              contrast_limits=tuple(source.contrast_limits))

    def cancel(self, _=None):
        self._cancel.set()
        self.status.value = "cancelling..."

    # ------------------------------------------------------------ results (GUI thread)

    def _on_step(self, progress):
        if self._cancel.is_set() or self.run_button.enabled:
            return  # a step queued before the run ended
        self.status.value = f"step {progress.step} / {progress.total}"
        if progress.step % 5 and progress.step != progress.total:
            return  # a preview every 5 steps keeps the GUI responsive
        estimate = progress.preview()
        if estimate.ndim == 3:  # the slice in view when it is being edited, else the batch's first
            in_view = self.viewer.dims.current_step[progress.axis] if len(self.viewer.dims.current_step) == 3 else -1
            estimate = estimate[progress.slices.index(in_view) if in_view in progress.slices else 0]
        if self._preview is not None and self._preview in self.viewer.layers:
            self._preview.data = estimate

    def _on_result(self, result, source_name, method):
        if isinstance(result, _Failed):
            self._on_error(result.error)
            return
        source = self.viewer.layers[source_name]
        placement = {"scale": source.scale, "translate": source.translate,
                     "metadata": {**source.metadata, "edit": result.provenance}}
        name = f"{source_name} {method}"
        limit = float(np.abs(result.difference).max()) or 1.0
        # napari takes ~0.1-0.3 s per layer added or removed: one per event-loop turn, so the GUI
        # keeps answering between them (benchmarks/gui_stall.py).
        tasks = [
            lambda: self.viewer.add_image(result.image.array, name=name, colormap="gray",
                                          contrast_limits=display_range(result.image), **placement),
            lambda: self.viewer.add_image(result.difference, name=f"{name} difference", colormap="PiYG",
                                          contrast_limits=(-limit, limit), visible=False, **placement),
        ]
        if result.progression:  # PIE: every step as one stack, its first axis a slider
            steps = np.stack([version.array for version in result.progression])
            tasks.append(lambda: self.viewer.add_image(
                steps, name=f"{name} progression", colormap="gray", contrast_limits=display_range(result.image),
                visible=False, scale=(1, *source.scale), translate=(0, *source.translate),
                metadata={"edit": result.provenance}))
        self._queue_gui(*tasks)
        ssim = result.metrics.get("outside", {}).get("ssim")
        fidelity = f"; SSIM outside the region {ssim:.3f}" if isinstance(ssim, float) and np.isfinite(ssim) else ""
        self.status.value = f"{method}: done in {result.provenance['seconds']:.1f} s{fidelity}"

    def _on_error(self, exc):
        from napari.utils import notifications

        from ..editing import EditCancelled

        if isinstance(exc, EditCancelled):
            notifications.show_info("edit cancelled: nothing was added")
            self.status.value = "cancelled"
        else:
            notifications.show_error(str(exc))
            self.status.value = "failed"

    def _on_finished(self):
        def remove_preview():
            if self._preview is not None and self._preview in self.viewer.layers:
                self.viewer.layers.remove(self._preview)
            self._preview = None

        def ready():
            self.run_button.enabled, self.cancel_button.enabled = True, False

        self._queue_gui(remove_preview, ready)

    def _queue_gui(self, *tasks):
        """Run ``tasks`` on the GUI thread one per event-loop turn, after what is already queued."""
        from qtpy.QtCore import QTimer

        self._gui_tasks.extend(tasks)

        def next_task():
            task = self._gui_tasks.pop(0)
            try:
                task()
            finally:
                if self._gui_tasks:
                    QTimer.singleShot(GUI_TASK_GAP_MS, next_task)

        if len(self._gui_tasks) == len(tasks):  # nothing was pending: start the chain
            QTimer.singleShot(GUI_TASK_GAP_MS, next_task)

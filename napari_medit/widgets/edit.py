"""The Edit dock widget: pick a method, a model, the image and its masks; Run, watch, Cancel.

All maths lives in ``napari_medit.editing``, and by default it runs outside napari's process:
this widget gathers parameters and hands the edit to ``napari_medit.compute`` (a dask worker
process it starts on 127.0.0.1, a cluster by address, or a thread here), shows the estimate it
reports as a preview layer, and adds the result and a difference map as layers aligned with the
source. Errors become notifications; a cancelled or failed run leaves no layer. With a worker,
napari's process never imports torch.
"""

from __future__ import annotations

import enum
import os
import weakref
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, LineEdit, PushButton, SpinBox
from napari.layers import Labels
from qtpy.QtCore import QTimer

from ..catalogue import LOCAL_WORKER, MASK_ROLES, METHODS, SCHEDULER_ENVIRON, RunOptions, name_like
from ..io.image import PLANES, plane_axis
from ..io.layers import display_range
from ._viewer_parts import plane_view
from .common import (
    NONE,
    QuietCollector,
    grey_images,
    layer_image,
    show_failure,
    status_label,
    viewer_identity,
)
from .engine_client import EngineClient
from .forms import form_values, method_form, parameter_form

if TYPE_CHECKING:
    import napari

GUI_TASK_GAP_MS = 20  # between layer insertions: long enough for queued input and paint events to run
# Run options the form holds (axis and slices: the scope widgets).
RUN_FORM_FIELDS = (
    "seed",
    "batch_size",
    "slice_noise",
    "noise_correlation_mm",
    "through_plane_smoothing",
    "precision",
    "samples",
    "cache_interval",
    "compile_network",
)


class Scope(str, enum.Enum):
    """Which slices of a volume the Edit widget edits."""

    touched = "slices the mask touches"
    current = "current slice"
    range = "slice range"


class Compute(str, enum.Enum):
    """Where the Edit widget's edits run."""

    worker_process = "worker process"  # a dask worker process on this machine, started with the widget
    scheduler = "scheduler address"  # a dask cluster the user started (a GPU machine, an SSH tunnel)
    this_process = "this process"  # a thread in napari's process (debugging): torch is imported here


_PREVIEW_PENDING = object()  # the preview layer is on its way (queued for the next event-loop turn)

# Each viewer's Edit widget, for the widgets that follow its choices (the Masks widget's preview).
_EDIT_WIDGETS: weakref.WeakValueDictionary[int, EditWidget] = weakref.WeakValueDictionary()


class EditWidget(Container):
    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        _EDIT_WIDGETS[viewer_identity(napari_viewer)] = self
        self.client = EngineClient(
            self.native,
            on_connected=self._connected,
            on_failure=self._connect_failed,
            on_step=self._on_step,
            on_outcome=self._on_outcome,
        )
        address = os.environ.get(SCHEDULER_ENVIRON, "")
        self.compute = ComboBox(
            label="compute",
            choices=[(c.value, c) for c in Compute],
            value=Compute.scheduler if address else Compute.worker_process,
            tooltip="where edits run: a worker process on this machine (napari stays light), "
            "a dask cluster by address (a GPU machine), or napari's own process",
        )
        self.address = LineEdit(
            label="scheduler",
            value=address,
            tooltip="tcp://host:8786, tls://host:8786 (dask's TLS configuration), or "
            "localhost:PORT through an SSH tunnel",
        )
        self.method = ComboBox(label="method", choices=list(METHODS), value="mededit")
        self.model = ComboBox(
            label="model", choices=self._models, tooltip="the models the computing side has"
        )
        # Pickers hold the layers themselves: a renamed or reordered layer stays picked. napari calls
        # reset_choices when layers come and go (add_dock_widget wires it).
        self.image = ComboBox(label="image", choices=lambda _: grey_images(self.viewer))
        self.masks = {
            role: ComboBox(
                label=role.replace("_", " "), choices=self._label_layers, tooltip=MASK_ROLES[role].says
            )
            for role in MASK_ROLES
        }
        # One form per method, built when the method is first chosen (all eight at open would hold the
        # GUI thread ~80 ms more), and one for the run options; from the catalogue (no torch needed).
        self._forms: dict[str, Container] = {}
        self.parameter_box = Container(labels=False, label="parameters")
        self.run_options_box = Container(labels=False, label="run options")
        self._run_options: Container | None = None
        self.axis = ComboBox(
            label="slice along",
            choices=self._axes,
            tooltip="the plane slices are edited in; named planes reach the model in the "
            "orientation it was trained on",
        )
        self.scope = ComboBox(
            label="slices",
            choices=[(scope.value, scope) for scope in Scope],
            value=Scope.touched,
            tooltip="which slices along that axis are edited",
        )
        self.first = SpinBox(label="first slice", min=0, max=0, value=0)
        self.last = SpinBox(label="last slice", min=0, max=0, value=0)
        self.view = plane_view(self.viewer, lambda text: setattr(self.status, "value", text))
        self.run_button = PushButton(text="Run", enabled=False)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = status_label()
        self.extend(
            [
                self.compute,
                self.address,
                self.method,
                self.model,
                self.image,
                *self.masks.values(),
                self.parameter_box,
                self.axis,
                self.scope,
                self.first,
                self.last,
                self.view,
                self.run_options_box,
                self.run_button,
                self.cancel_button,
                self.status,
            ]
        )
        self.method.changed.connect(self._show_relevant)
        self.image.changed.connect(self._image_changed)
        self.axis.changed.connect(self._scope_changed)
        self.scope.changed.connect(self._scope_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.compute.changed.connect(self._compute_changed)
        self.address.native.editingFinished.connect(self._compute_changed)
        self.model.changed.connect(self._warm_up)
        self._preview = None
        self._holds: set[str] = set()  # 'connect', 'run': full collections kept short (QuietCollector)
        self._gui_tasks: list = []
        self._run: tuple | None = None  # (source layer, method) of the edit under way
        self._show_masks()
        self._image_changed()
        # The two parameter forms (~10-15 ms each to build) are built in the event-loop turns after
        # napari docks the widget, one a turn; asking for either builds it at once. Connecting comes
        # last: its thread imports dask and starts the scheduler, and would otherwise compete for the
        # GIL with the docking (~2x longer). (Placing the masks and slice controls later too was tried:
        # each group placed after the first paint relayouts napari's window, 60-70 ms a turn.)
        self._later = [self._show_form, lambda: self.run_options, self._compute_changed]
        self._later_timer = QTimer(self.native)
        self._later_timer.setSingleShot(True)
        self._later_timer.timeout.connect(self._do_next_later)
        self._later_timer.start(0)
        # Closing the dock or the viewer mid-run (or mid-connect) cancels the edit and stops the worker.
        self.native.destroyed.connect(self._on_destroyed)

    def _do_next_later(self) -> None:
        self._later.pop(0)()
        if self._later:
            self._later_timer.start(0)

    @property
    def run_options(self) -> Container:
        """The run options' form (seed, batch size, precision, ...), built the first time it is asked for."""
        if self._run_options is None:
            self._run_options = parameter_form(RunOptions, only=RUN_FORM_FIELDS)
            self.run_options_box.append(self._run_options)
        return self._run_options

    @property
    def ready(self) -> bool:
        """True once the computing side is connected and its models listed (Run is enabled then)."""
        return self.client.ready

    def parameter(self, name: str):
        """The current method's widget for parameter ``name`` (tests and scripts set values through it)."""
        return self.form(self.method.value)[name]

    def form(self, method: str) -> Container:
        """``method``'s parameter form, built the first time it is asked for."""
        if method not in self._forms:
            self._forms[method] = form = method_form(METHODS[method])
            form.visible = method == self.method.value
            self.parameter_box.append(form)
        return self._forms[method]

    @classmethod
    def of(cls, viewer) -> EditWidget | None:
        """The Edit widget docked in ``viewer``, if one is."""
        return _EDIT_WIDGETS.get(viewer_identity(viewer))

    def mededit_sizing(self) -> tuple[dict, int, str]:
        """What MedEdit's inpainting mask is sized by in this widget: its MedEdit parameters (the form's
        values), the chosen model's resolution where edits run, and a description of both.
        ValueError when no model is chosen or it is not loaded there yet."""
        name = self.model.value
        if name in (None, NONE):
            raise ValueError("choose a MedEdit model in the Edit widget first")
        facts = self.client.facts.get(name)
        if facts is None:
            place = self.client.place or "this process"
            raise ValueError(
                f"the Edit widget's model {name} is still loading on {place}: try again in a moment"
            )
        return (
            form_values(self.form("mededit")),
            facts.resolution,
            f"{name} on {self.client.place or 'this process'}",
        )

    # ------------------------------------------------------------ where edits run

    def _compute_changed(self, _=None) -> None:
        """Connect to the chosen place (in the background: a worker process takes seconds to start, a
        scheduler may be slow to answer); Run is enabled once its models are listed."""
        self.address.visible = self.compute.value is Compute.scheduler
        place = {
            Compute.worker_process: LOCAL_WORKER,
            Compute.scheduler: self.address.value.strip(),
            Compute.this_process: None,
        }[self.compute.value]
        if place == "":
            self.status.value = "type the scheduler's address"
            return
        if self._run is not None:
            return  # the edit runs where it started (the compute widgets are disabled until it ends)
        # connected there or on the way (the address field also says so when it loses focus): nothing to do
        if self.client.connect(place):
            # the connecting thread imports dask and starts a scheduler here: its allocations would set off
            # full collections of napari's objects, holding the GIL for ~200 ms (benchmarks/gui_stall.py)
            self._hold_collector("connect")
            self.run_button.enabled = False
            self.status.value = f"connecting to {place or 'this process'}..."

    def _connect_failed(self, message: str) -> None:
        self._release_collector("connect")
        show_failure(self.status, message)

    def _connected(self, names: list[str]) -> None:
        self._release_collector("connect")
        self.model.reset_choices()
        self.run_button.enabled = self._run is None
        self.status.value = ""
        self._warm_up()

    def _warm_up(self, _=None) -> None:
        """Load the chosen model where edits run while the user sets up."""
        if self.model.value != NONE:
            self.client.warm_up(self.model.value)

    def _hold_collector(self, reason: str) -> None:
        if reason not in self._holds:
            self._holds.add(reason)
            QuietCollector.hold()

    def _release_collector(self, reason: str | None = None) -> None:
        """Hand back what ``reason`` held (None: everything this widget held)."""
        for held in [reason] if reason is not None else list(self._holds):
            if held in self._holds:
                self._holds.discard(held)
                QuietCollector.release()

    def _on_destroyed(self, _=None):
        self._gui_tasks.clear()
        self._release_collector()
        self.close_engine()

    def close_engine(self, timeout: float = 10.0) -> None:
        """Stop the background work before the widget goes (``EngineClient.close``)."""
        self.client.close(timeout)

    # ------------------------------------------------------------ choices

    def _models(self, _=None):
        return self.client.names or [NONE]

    def _label_layers(self, _=None):
        return [
            (NONE, None),
            *((layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)),
        ]

    def _source_layer(self):
        layer = self.image.value
        return layer if layer is not None and layer in self.viewer.layers else None

    def _axes(self, _=None):
        """Anatomical planes for volumes read with their affine, array axes for other volumes."""
        layer = self._source_layer()
        if layer is None or layer.ndim != 3:
            return [("in plane", 0)]
        if "affine" in layer.metadata:
            return [(plane, plane) for plane in PLANES]
        return [(f"axis {axis}", axis) for axis in range(3)]

    def reset_choices(self, event=None):
        """Every picker's choices anew (napari calls this when layers change), then the masks guessed."""
        super().reset_choices()
        self._guess_masks()

    def _guess_masks(self):
        """Pre-select layers whose names say what they are (lesion -> pathology, and so on)."""
        for role, box in self.masks.items():
            if box.value is None:
                layers = {layer.name: layer for layer in box.choices if layer is not None}
                match = name_like(role, layers)
                if match:
                    box.value = layers[match]

    def _show_relevant(self, _=None):
        self._show_masks()
        self._show_form()

    def _show_masks(self) -> None:
        wanted = METHODS[self.method.value].masks
        for name, box in self.masks.items():
            box.visible = name in wanted
        self._guess_masks()

    def _show_form(self) -> None:
        self.form(self.method.value)
        for name, form in self._forms.items():
            form.visible = name == self.method.value

    def _image_changed(self, _=None):
        self.axis.reset_choices()
        layer = self._source_layer()
        volume = layer is not None and layer.ndim == 3
        self.axis.visible = self.scope.visible = self.view.visible = volume
        self._scope_changed()

    def _scope_changed(self, _=None):
        layer = self._source_layer()
        volume = layer is not None and layer.ndim == 3
        ranged = volume and self.scope.value is Scope.range
        self.first.visible = self.last.visible = ranged
        if volume:
            array_axis, _ = self._array_axis(layer)
            count = layer.data.shape[array_axis]
            self.first.max = self.last.max = count - 1
            if ranged:
                self.first.value = self.last.value = self._current_index(layer, array_axis)

    def _array_axis(self, layer) -> tuple[int, bool]:
        """The layer's array axis the chosen plane slices along, and whether the plane counts backwards."""
        if isinstance(self.axis.value, int):
            return self.axis.value, False
        # planes: layers with an affine
        return plane_axis(np.asarray(layer.metadata["affine"]), self.axis.value)

    def _current_index(self, layer, array_axis: int) -> int:
        """The slice of ``layer`` in view along ``array_axis`` (napari's world point, through the layer's
        own scale and translate)."""
        point = layer.world_to_data(self.viewer.dims.point[-layer.ndim :])
        return int(np.clip(round(float(point[array_axis])), 0, layer.data.shape[array_axis] - 1))

    def _slices_on_screen(self, layer) -> list[int] | None:
        """The slice in view along the edit's axis, when the viewer shows that plane in 2D: the worker
        previews it alone. None (every slice in work): a 2D image, a 3D view, or another plane shown."""
        if layer.ndim != 3 or self.viewer.dims.ndisplay != 2:
            return None
        array_axis, _ = self._array_axis(layer)
        leading = self.viewer.dims.ndim - layer.ndim  # the viewer's dims before the layer's own
        if array_axis + leading in self.viewer.dims.displayed:
            return None
        return [self._current_index(layer, array_axis)]

    # ------------------------------------------------------------ running

    def request(self) -> dict:
        """What the current settings ask for, as ``edit()`` arguments (layers read, never modified)."""
        layer = self._source_layer()
        if layer is None:
            raise ValueError("open or select an image layer first")
        if not self.ready:
            raise ValueError("the editing engine is still loading: try again in a moment")
        kwargs = {"image": layer_image(layer), "axis": 0, **form_values(self.run_options)}
        if layer.ndim == 3:
            kwargs["axis"] = self.axis.value
            kwargs["slices"] = self._slice_range(layer)
        for name in METHODS[self.method.value].masks:
            mask = self.masks[name].value
            if mask is not None:
                if mask not in self.viewer.layers:
                    raise ValueError(f"the {name} layer {mask.name!r} was removed: pick another")
                kwargs[name] = np.asarray(mask.data)
        kwargs.update(form_values(self.form(self.method.value)))
        return kwargs

    def _slice_range(self, layer) -> tuple[int, int] | None:
        """[start, stop) along the plane, from array indices (None: the slices the method's mask touches)."""
        if self.scope.value is Scope.touched:
            return None
        array_axis, counts_backwards = self._array_axis(layer)
        if self.scope.value is Scope.current:
            first = last = self._current_index(layer, array_axis)
        else:
            first, last = self.first.value, self.last.value
            if first > last:
                raise ValueError(f"the first slice ({first}) is after the last ({last})")
        if counts_backwards:
            count = layer.data.shape[array_axis]
            first, last = count - 1 - last, count - 1 - first
        return first, last + 1

    def run(self, _=None):
        from napari.utils import notifications

        from ..compute import EditRequest

        if self._run is not None:
            notifications.show_info("an edit is running: cancel it first")
            return
        try:
            kwargs = self.request()
        except ValueError as exc:  # refused at the click: said in the status too, where the user looks
            show_failure(self.status, str(exc))
            return
        method, model_name, source = self.method.value, self.model.value, self.image.value
        self._run = (source, method)
        on_screen = self._slices_on_screen(source)
        request = EditRequest(
            method, kwargs.pop("image"), model_name, kwargs, previews=True, preview_slices=on_screen
        )
        self._hold_collector("run")  # until the outcome is shown: no full collection stalls the GUI
        self.client.start(request, f"{method} on {source.name}")
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.compute.enabled = self.address.enabled = False  # the edit runs there until it ends
        self.status.value = f"{method}: loading {model_name}..."

    def _add_pending_preview(self):
        run = self._run
        if run is None or self._preview is not _PREVIEW_PENDING:
            return  # the run ended before its turn came
        layer = self._add_preview(run[0])
        if self._run is run and self._preview is _PREVIEW_PENDING:
            self._preview = layer
        elif layer in self.viewer.layers:  # the run ended while napari added it (napari processes events)
            self.viewer.layers.remove(layer)

    def _add_preview(self, source):
        """The preview layer, added when the first estimate arrives (not at the click, which then
        answers at once): a float copy of the source on its grid, whose slices in work show the
        current estimate as the run goes; at the end it becomes the result layer."""
        return self.viewer.add_image(
            np.asarray(source.data, np.float32),
            name="preview",
            colormap="gray",
            opacity=0.8,
            scale=source.scale,
            translate=source.translate,
            contrast_limits=tuple(source.contrast_limits),
        )

    def cancel(self, _=None):
        self.client.cancel()
        self.status.value = "cancelling..."

    # ------------------------------------------------------------ results (GUI thread)

    def _on_step(self, progress):
        run = self._run
        if self.client.cancelled or run is None:
            return  # cancelling, or a step that arrived after the run's outcome
        text = self.client.step_text(progress)
        if self._run is not run:
            # napari's progress bar processes Qt events as it moves: the outcome (or more) was handled
            # meanwhile; this step must neither hide it nor write its estimate into the result
            return
        self.status.value = text
        estimate = progress.preview()  # every few steps (compute.PREVIEW_EVERY) and the last
        if estimate is not None and self._preview is None:
            # Adding and first drawing a layer are the longest stalls of a run: the preview layer comes
            # in an event-loop turn of its own, and shows the estimates from the next one on.
            self._preview = _PREVIEW_PENDING
            self._queue_gui(self._add_pending_preview)
            return
        if estimate is not None and self._preview in self.viewer.layers:
            planes = (
                np.moveaxis(self._preview.data, progress.axis, 0)
                if self._preview.ndim == 3
                else self._preview.data[None]
            )
            planes[progress.slices] = estimate  # a view: this writes into the preview layer's own array
            self._preview.refresh()

    def _on_outcome(self, outcome):
        (source, method), self._run = self._run, None
        try:
            if isinstance(outcome, Exception):
                self._on_error(outcome)
            elif source not in self.viewer.layers:  # the layer itself: renamed or moved, it is still there
                show_failure(
                    self.status, f"the layer {source.name!r} was removed during the edit: nothing was added"
                )
            else:
                self._on_result(outcome, source, method)
        finally:  # whatever showing it raised, the widget is ready for the next edit
            self._on_finished()

    def _on_result(self, result, source, method):
        source_name = source.name  # as it is called now
        name = f"{source_name} {method}"
        placement = {"scale": source.scale, "translate": source.translate}
        metadata = {**source.metadata, "edit": result.provenance}
        limit = float(np.abs(result.difference).max()) or 1.0
        # napari takes ~0.1-0.3 s per layer added or removed: one per event-loop turn, so the GUI
        # keeps answering between them (benchmarks/gui_stall.py).
        tasks = [
            lambda: self._show_result(
                result.image, name, {**metadata, "source_layer": source_name}, placement
            ),
            lambda: self.viewer.add_image(
                result.difference,
                name=f"{name} difference",
                colormap="PiYG",
                contrast_limits=(-limit, limit),
                visible=False,
                metadata={**metadata, "difference_of": name},
                **placement,
            ),
        ]
        if result.progression:  # PIE: every step as one stack, its first axis a slider
            tasks.append(self._stack_layer(result.progression, f"{name} progression", source, result))
        # InstructX2X: its guidance map, as a heatmap over the result
        for map_name, values in result.maps.items():
            tasks.append(
                lambda map_name=map_name, values=values: self.viewer.add_image(
                    values,
                    name=f"{name} {map_name.replace('_', ' ')}",
                    colormap="inferno",
                    blending="additive",
                    opacity=0.5,
                    contrast_limits=(0.0, 1.0),
                    metadata={"edit": result.provenance, "map_of": name},
                    **placement,
                )
            )
        if result.samples:  # every sample as one stack, its first axis a slider; their spread as a heatmap
            tasks += self._sample_layers(result, name, source)
        self._queue_gui(*tasks)
        ssim = result.metrics.get("outside", {}).get("ssim")
        fidelity = (
            f"; SSIM outside the region {ssim:.3f}" if isinstance(ssim, float) and np.isfinite(ssim) else ""
        )
        spread = result.provenance.get("variability")
        spread = (
            f"; {len(result.samples)} samples: spread (std) {spread['std_mean']:.3g} mean, "
            f"{spread['std_p95']:.3g} p95 against a change of {spread['change_mean']:.3g} mean"
            if spread
            else ""
        )
        self.status.value = f"{method}: done in {result.provenance['seconds']:.1f} s{fidelity}{spread}"

    def _stack_layer(self, versions, name: str, source, result, **metadata):
        """Versions of the result (PIE's steps, the samples) as one hidden layer, its first axis a slider."""
        stack = np.stack([version.array for version in versions])
        return lambda: self.viewer.add_image(
            stack,
            name=name,
            colormap="gray",
            contrast_limits=display_range(result.image),
            visible=False,
            scale=(1, *source.scale),
            translate=(0, *source.translate),
            metadata={"edit": result.provenance, **metadata},
        )

    def _sample_layers(self, result, name: str, source) -> list:
        """The samples as one layer (a slider over them, sample 1 first) and their per-voxel standard
        deviation as a hidden heat-coloured overlay beside the difference map."""
        high = float(result.variability.max()) or 1.0
        seeds = result.provenance["samples"]
        return [
            self._stack_layer(result.samples, f"{name} samples", source, result, seeds=seeds),
            lambda: self.viewer.add_image(
                result.variability,
                name=f"{name} std",
                colormap="inferno",
                blending="additive",
                opacity=0.6,
                contrast_limits=(0.0, high),
                visible=False,
                scale=source.scale,
                translate=source.translate,
                metadata={"edit": result.provenance, "variability_of": name},
            ),
        ]

    def _show_result(self, image, name: str, metadata: dict, placement: dict):
        """The result as a layer: the preview layer, already on the source's grid, becomes it. Swapping
        its data costs napari a fraction of adding one layer and removing another."""
        preview, self._preview = self._preview, None
        if preview is None or preview not in self.viewer.layers:
            return self.viewer.add_image(
                image.array,
                name=name,
                colormap="gray",
                contrast_limits=display_range(image),
                metadata=metadata,
                **placement,
            )
        preview.data = image.array
        preview.name, preview.metadata, preview.opacity = name, metadata, 1.0
        preview.contrast_limits = display_range(image)
        return preview

    def _on_error(self, exc):
        from napari.utils import notifications

        from ..results import EditCancelled

        if isinstance(exc, EditCancelled):
            notifications.show_info("edit cancelled: nothing was added")
            self.status.value = "cancelled"
        else:
            show_failure(self.status, str(exc))

    def _on_finished(self):
        def remove_preview():
            if self._preview is not None and self._preview in self.viewer.layers:
                self.viewer.layers.remove(self._preview)
            self._preview = None

        def ready():
            self.run_button.enabled, self.cancel_button.enabled = self.ready, False
            self.compute.enabled = self.address.enabled = True
            self._release_collector("run")

        self.client.finish()
        self._queue_gui(remove_preview, ready)

    def _queue_gui(self, *tasks):
        """Run ``tasks`` on the GUI thread one per event-loop turn, after what is already queued."""
        self._gui_tasks.extend(tasks)

        def next_task():
            if not self._gui_tasks:  # cleared: the widget closed
                return
            task = self._gui_tasks.pop(0)
            try:
                task()
            finally:
                if self._gui_tasks:
                    QTimer.singleShot(GUI_TASK_GAP_MS, next_task)

        if len(self._gui_tasks) == len(tasks):  # nothing was pending: start the chain
            QTimer.singleShot(GUI_TASK_GAP_MS, next_task)

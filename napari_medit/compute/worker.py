"""The computing side: what runs where the model is (a dask worker, or this process for 'this
process' and ``--workers 0``). Models are loaded once per process, kept up to a bound, and shared
read-only by every edit; whatever an edit changes is its own (``Denoiser.for_edit``)."""

from __future__ import annotations

import gc
import os
import socket
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np

from ..catalogue import ComputeOptions
from ..results import EditCancelled, EditError, EditProgress, EditResult, ModelLoadError
from .wire import Box, EditRequest, Failure, ModelFacts

PREVIEW_EVERY = 5  # steps between two previews of the current estimate (and the last step)
VERSIONED = ("napari-medit", "numpy", "torch", "dask", "distributed")  # must agree on both sides
MODELS_KEPT_ENVIRON = "NAPARI_MEDIT_MODELS_KEPT"  # loaded models kept per device (least recently used go)
DEFAULT_MODELS_KEPT = 1
DEFAULTS = ComputeOptions()


class ModelCache:
    """This process's loaded models, by name and how they load; at most ``limit`` per device (None:
    ``$NAPARI_MEDIT_MODELS_KEPT``, else one). Loading one more evicts the least recently used on its
    device first, so memory holds at most ``limit`` models plus any an edit under way still holds."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self._models: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()  # the table
        self._loading = threading.Lock()  # one load at a time: two threads asking for one model load it once

    def kept(self) -> int:
        if self.limit is not None:
            return self.limit
        text = os.environ.get(MODELS_KEPT_ENVIRON, "").strip()
        try:
            return max(1, int(text)) if text else DEFAULT_MODELS_KEPT
        except ValueError:
            raise EditError(
                f"${MODELS_KEPT_ENVIRON} must be a whole number of models, got {text!r}"
            ) from None

    def get(self, spec: str, compute: ComputeOptions = DEFAULTS) -> tuple[Any, bool]:
        """The model, loaded now if it is not kept; and whether it loaded now."""
        from ..backends import load_model

        key = (str(spec), *compute.load_arguments().values())
        with self._loading:
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key], False
            self._evict(device=compute.device, room_for=1)
            model = load_model(spec, **compute.load_arguments())
            with self._lock:
                self._models[key] = model
            return model, True

    def loaded(self) -> list[str]:
        with self._lock:
            return [key[0] for key in self._models]

    def clear(self) -> None:
        """Let every model go (the edits under way keep theirs until they end)."""
        self._evict(device=None, room_for=None)

    def _evict(self, device: str | None, room_for: int | None) -> None:
        with self._lock:
            on_device = [key for key in self._models if room_for is None or key[1] == device]
            excess = len(on_device) if room_for is None else len(on_device) + room_for - self.kept()
            gone = [self._models.pop(key) for key in on_device[: max(0, excess)]]
        if gone:
            del gone
            _release_memory()


def _release_memory() -> None:
    gc.collect()  # models hold reference cycles (modules and their hooks)
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the freed blocks back to the driver, not to torch's own pool


MODELS = ModelCache()


def cached_model(spec: str, compute: ComputeOptions = DEFAULTS) -> tuple[Any, bool]:
    """This process's copy of a model (``MODELS``), loaded on first use; and whether it loaded now."""
    return MODELS.get(spec, compute)


def torch_threads() -> int:
    """The threads every edit's torch computes with, wherever it runs: the cores this process may use.
    A dask worker started by hand inherits its nanny's OMP_NUM_THREADS=1, a laptop's process does not;
    the same count on both keeps a seed's result bit-identical (float sums depend on the split)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compute_edit(
    request: EditRequest, *, report: Callable[[EditProgress], None] | None = None, cancel=None
) -> EditResult:
    """Run ``request`` in this process with its (cached) model; ``report`` gets an ``EditProgress`` per
    step, with a preview where the request asks for them. A model that cannot be loaded is an
    ``EditError``, as any bad request (its message names the fix)."""
    import torch

    from ..editing import edit as edit_here

    torch.set_num_threads(torch_threads())
    try:
        model, _ = cached_model(request.model, request.compute)
    except ModelLoadError as exc:
        raise EditError(str(exc)) from None
    callback = None if report is None else reporting(report, request.previews, request.preview_slices)
    try:
        result = edit_here(
            request.method, request.image, model=model, cancel=cancel, callback=callback, **request.options
        )
    except ValueError as exc:  # a method's refusal: one line naming the fix, here as from a worker
        raise EditError(str(exc)) from exc
    result.provenance["computed_on"] = {"host": socket.gethostname(), "process": os.getpid()}
    return result


def reporting(
    report: Callable[[EditProgress], None], previews: bool, preview_slices: list[int] | None = None
) -> Callable[[EditProgress], None]:
    """The engine's steps as they travel: plain numbers, with the estimate of the wanted slices
    rendered every ``PREVIEW_EVERY`` steps and at the last when previews are asked for."""
    wanted = None if preview_slices is None else set(preview_slices)

    def on_step(progress: EditProgress) -> None:
        slices, estimate = list(progress.slices), None
        if previews and (progress.step % PREVIEW_EVERY == 0 or progress.step == progress.total):
            keep = [i for i, s in enumerate(slices) if wanted is None or s in wanted]
            if keep:
                estimate = np.asarray(progress.preview(), np.float32)[keep]
                slices = [slices[i] for i in keep]
        report(EditProgress(progress.step, progress.total, slices, progress.axis, estimate=estimate))

    return on_step


def load_task(model: str, compute: ComputeOptions) -> ModelFacts:
    """Load ``model`` into this process's cache (a task: the model itself stays on the worker); its
    facts go back to the client."""
    loaded, _ = cached_model(model, compute)
    return ModelFacts(name=loaded.name, resolution=int(loaded.resolution))


def available_models() -> list[str]:
    """The models this machine has: its model folders and the presets (``napari-medit models``)."""
    from ..backends import describe_presets, model_folders

    return [*model_folders(), *(preset["name"] for preset in describe_presets())]


def installed_versions() -> dict[str, str | None]:
    """The versions that must agree between a client and its workers (None: not installed)."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def failure(exc: Exception) -> Failure:
    return Failure(
        isinstance(exc, EditCancelled),
        isinstance(exc, EditError),
        str(exc) or type(exc).__name__,
        traceback.format_exc(limit=4),
    )


def edit_task(request: EditRequest, channel: str):
    """A dask task: the edit, its steps on the Queue ``channel``, stopped when the Event ``channel`` is
    set. Returns a ``Box`` or a ``Failure``, never raises: the client reads both without torch."""
    from distributed import Event, Queue

    try:
        updates, stop = Queue(channel), Event(channel)
        result = compute_edit(request, report=updates.put, cancel=_EventFlag(stop))
        return Box.pack(result, request.image.array)
    except Exception as exc:  # noqa: BLE001 - every failure goes back as text the client can read
        return failure(exc)


class _EventFlag:
    """A dask Event read as the engine reads a threading.Event (one scheduler round trip per step)."""

    def __init__(self, event):
        self.event = event

    def is_set(self) -> bool:
        return self.event.is_set()

"""The places an edit runs, behind one interface (``Place``): this process (``InProcess``) or a dask
cluster (``Cluster``: a local worker process, or a scheduler by address); and ``edit_at``, one edit at
a place the caller has already chosen."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..catalogue import ComputeOptions
from ..io import MedicalImage
from ..results import EditError, EditProgress, EditResult
from .cluster import Cluster
from .wire import EditRequest, ModelFacts
from .worker import DEFAULTS, MODELS, available_models, compute_edit, load_task


class RunningEdit(Protocol):
    """An edit under way: ``cancel()`` it, or wait for its ``result()``."""

    def cancel(self) -> None: ...

    def result(self) -> EditResult:
        """The result; raises EditCancelled, EditError (a bad request or model) or ComputeError."""
        ...


class Place(Protocol):
    """Where edits run, as the Edit widget, the CLI and the API use it."""

    address: str

    def models(self) -> list[str]:
        """The model names and folders the computing machine has."""
        ...

    def warm_up(self, model: str, compute: ComputeOptions = DEFAULTS) -> ModelFacts:
        """Load ``model`` there, so the first edit starts at once; what a client sizes things by."""
        ...

    def submit(
        self,
        request: EditRequest,
        on_step: Callable[[EditProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> RunningEdit:
        """Start ``request``; ``on_step`` gets its ``EditProgress``; setting ``cancel`` stops it."""
        ...

    def close(self) -> None:
        """Stop what this place started and let its models go."""
        ...


class InProcess:
    """Edits in a thread of this process (the Edit widget's 'this process'; debugging)."""

    address = "this process"

    def models(self) -> list[str]:
        return available_models()

    def warm_up(self, model: str, compute: ComputeOptions = DEFAULTS) -> ModelFacts:
        return load_task(model, compute)

    def submit(
        self,
        request: EditRequest,
        on_step: Callable[[EditProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> ThreadEdit:
        return ThreadEdit(request, on_step, cancel or threading.Event())

    def close(self) -> None:
        MODELS.clear()  # this process is napari's: its RAM and VRAM go back when the place is closed


class ThreadEdit:
    def __init__(self, request: EditRequest, on_step, cancel: threading.Event):
        self._stop, self._outcome = cancel, None
        self._thread = threading.Thread(
            target=self._run, args=(request, on_step), name="napari-medit edit", daemon=True
        )
        self._thread.start()

    def _run(self, request, on_step):
        try:
            self._outcome = compute_edit(request, report=on_step, cancel=self._stop)
        except Exception as exc:  # noqa: BLE001 - handed to whoever waits for the result
            self._outcome = exc

    def cancel(self) -> None:
        self._stop.set()

    def result(self) -> EditResult:
        try:
            self._thread.join()
        finally:
            self._stop.set()  # an interrupted wait (Ctrl-C) stops the edit too
        if isinstance(self._outcome, Exception):
            raise self._outcome
        return self._outcome


_CONNECTED: dict[str, Cluster] = {}
_CONNECT_LOCK = threading.Lock()


def connect(scheduler: str) -> Cluster:
    """A connection to ``scheduler`` (or a local worker process), made once and kept until exit."""
    with _CONNECT_LOCK:
        cluster = _CONNECTED.get(scheduler)
        if cluster is None or cluster.client is None:
            cluster = _CONNECTED[scheduler] = Cluster(scheduler)
        return cluster


@atexit.register
def _disconnect() -> None:
    for cluster in _CONNECTED.values():
        cluster.close()
    _CONNECTED.clear()


def edit_at(
    where: str | None,
    method: str,
    image: MedicalImage | np.ndarray,
    *,
    model,
    compute: ComputeOptions = DEFAULTS,
    callback: Callable[[EditProgress], None] | None = None,
    cancel: threading.Event | None = None,
    previews: bool = False,
    **options: Any,
) -> EditResult:
    """One edit at ``where``, already chosen by the front end: a scheduler's address or 'local', or
    None for this process. Nothing here reads ``$NAPARI_MEDIT_SCHEDULER``: code that runs on a worker
    can never redirect its own work."""
    if where is None and not isinstance(model, str | os.PathLike):
        from ..editing import edit as edit_here

        return edit_here(method, image, model=model, callback=callback, cancel=cancel, **options)
    if not isinstance(model, str | os.PathLike):
        raise EditError(
            f"a model loaded here cannot be sent to {where}: give its name or folder, which the "
            "worker loads itself"
        )
    source = image if isinstance(image, MedicalImage) else MedicalImage(np.asarray(image), np.eye(4))
    request = EditRequest(method, source, str(model), options, compute, previews=previews)
    place = InProcess() if where is None else connect(where)
    return place.submit(request, callback, cancel).result()

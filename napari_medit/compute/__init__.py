"""Where an edit is computed: in this process, in a dask worker process on this machine, or on a
dask cluster the user started (a GPU workstation, dask-cuda, dask-jobqueue), by its address.

One boundary serves the API, the CLI and the Edit widget: an ``EditRequest`` (the source, its
masks and options, the model *by name*) goes to where the model is, and an ``EditResult`` comes
back. dask.distributed carries it (and its TLS security); this package adds only what dask does
not do for an edit:

- ``wire``: what travels: the request, a failure as text, the result cut to the voxels that changed;
- ``worker``: the computing side: a bounded cache of loaded models shared read-only by every edit
  (each edit's mutable state is its own: ``Denoiser.for_edit``), the edit as a dask task, its steps
  on a dask ``Queue`` (previews only when asked for), stopped by a dask ``Event`` it checks every step;
- ``cluster``: the client side: connecting (each failure one line naming the fix), a local worker
  process with its log, an edit under way that is cancelled however its wait ends;
- ``places``: ``InProcess`` and ``Cluster`` behind one ``Place`` protocol, and ``edit_at``.

Placement is decided once, at the front end (``edit`` here, the CLI, the widget, ``run_batch``):
below it, None means "here". Nothing here imports torch at module level, and nothing the client
unpickles needs it (``napari_medit.results``): napari's process stays light.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..catalogue import ComputeOptions
from ..io import MedicalImage
from ..results import EditProgress, EditResult
from .cluster import TORCH_WORKER_ENVIRON, Cluster, worker_command
from .places import InProcess, Place, RunningEdit, connect, edit_at
from .wire import ComputeError, EditRequest, ModelFacts
from .worker import (
    MODELS,
    MODELS_KEPT_ENVIRON,
    PREVIEW_EVERY,
    ModelCache,
    available_models,
    cached_model,
    compute_edit,
    installed_versions,
)

__all__ = [
    "MODELS",
    "MODELS_KEPT_ENVIRON",
    "PREVIEW_EVERY",
    "TORCH_WORKER_ENVIRON",
    "Cluster",
    "ComputeError",
    "EditRequest",
    "InProcess",
    "ModelCache",
    "ModelFacts",
    "Place",
    "RunningEdit",
    "available_models",
    "cached_model",
    "compute_edit",
    "connect",
    "edit",
    "edit_at",
    "installed_versions",
    "worker_command",
]


def edit(
    method: str,
    image: MedicalImage | np.ndarray,
    *,
    model,
    scheduler: str | None = None,
    device: str | None = None,
    download: bool = False,
    trust_remote_code: bool = False,
    callback: Callable[[EditProgress], None] | None = None,
    cancel: threading.Event | None = None,
    previews: bool = False,
    **options: Any,
) -> EditResult:
    """``napari_medit.editing.edit``, computed where ``scheduler`` says (``napari_medit.edit``).

    Args:
        method, image, **options: as ``napari_medit.editing.edit`` takes them (masks, parameters,
            ``seed``, ``axis``, ``slices`` and the other run options); a run option left out takes
            the catalogue's default (``RunOptions``), as on the command line: ``axis`` is 'axial'.
        model: a loaded Denoiser (this process only), or a model name, folder or hub id, which the
            machine that computes resolves.
        scheduler: a dask scheduler's address (``tcp://host:8786``, ``tls://...``,
            ``localhost:PORT`` through an SSH tunnel) or ``'local'`` (a worker process on this
            machine); None: ``$NAPARI_MEDIT_SCHEDULER``, else this process. TLS: dask's own
            ``distributed.comm.tls`` configuration.
        device, download, trust_remote_code: how the model loads, on the machine that computes.
        callback: called with an ``EditProgress`` after every step.
        cancel: set it to stop the edit within one step (``EditCancelled`` is raised); Ctrl-C does too.
        previews: for a model given by name, send the estimate every few steps, for ``callback``'s
            ``progress.preview()`` (a loaded Denoiser renders it whenever it is asked).

    Raises ``EditError`` for bad requests or models, ``EditCancelled``, and ``ComputeError`` when the
    place to compute cannot (unreachable, other versions, no worker left).
    """
    compute = ComputeOptions(None, device, download, trust_remote_code)
    where = ComputeOptions(scheduler).resolved_scheduler()
    return edit_at(
        where,
        method,
        image,
        model=model,
        compute=compute,
        callback=callback,
        cancel=cancel,
        previews=previews,
        **options,
    )

"""Where an edit is computed: in this process, in a dask worker process on this machine, or on a
dask cluster the user started (a GPU workstation, dask-cuda, dask-jobqueue), by its address.

One boundary serves the API, the CLI and the Edit widget: an ``EditRequest`` (the source, its
masks and options, the model *by name*) goes to where the model is, and an ``EditResult`` comes
back. dask.distributed carries it (and its TLS security); this module adds only what dask does
not do for an edit:

- progress and previews travel back on a dask ``Queue`` named after the task, as ``StepUpdate``s;
- cancelling is cooperative: a dask ``Event`` of the same name, which the engine checks at every
  step (``future.cancel()`` cannot stop Python code that is running);
- only what changed comes back: the box of voxels the edit touched, filled in from the source here;
- a worker that dies is rerun by dask (its nanny restarts it; a seeded edit gives the same
  result), and a cluster with no worker left is reported within ``NO_WORKER_GRACE_S``;
- the client and the workers must run the same napari-medit, numpy, torch and dask: checked on connect.

Nothing here imports torch at module level, and nothing the client unpickles needs it
(``napari_medit.results``): napari's process stays light.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any

import numpy as np

from .catalogue import LOCAL_WORKER, ComputeOptions
from .io import MedicalImage
from .results import EditCancelled, EditError, EditResult, ModelLoadError

PREVIEW_EVERY = 5  # steps between two previews of the current estimate (and the last step)
CONNECT_TIMEOUT_S = 10.0
LOCAL_START_TIMEOUT_S = 120.0  # a local worker process imports dask and registers; slow disks take a while
LOCAL_STOP_TIMEOUT_S = 10.0
NO_WORKER_GRACE_S = 5.0  # a nanny restarts a killed worker within this; longer with none: report it
POLL_S = 0.1  # how often the client looks for progress, a finished task or a lost worker
VERSIONED = ("napari-medit", "numpy", "torch", "dask", "distributed")  # must agree on both sides

# Dask's worker defaults suit numpy tasks, not torch's: its MALLOC_TRIM_THRESHOLD_ of 64 KiB also fixes
# glibc's mmap threshold, so every activation buffer is mapped, faulted in and returned to the kernel;
# an edit spent ~40% of its CPU in the kernel and ran ~3x slower than in-process (128 px InstructX2X:
# 71 s against 25 s). Its OMP/MKL/OpenBLAS_NUM_THREADS=1 would hold torch to one thread, and the nanny
# writes them into the *caller's* environment too, where a torch imported later (an in-process edit in
# napari) would read them. None leaves a variable unset (one in the caller's environment is inherited).
TORCH_WORKER_ENVIRON = {
    f"distributed.nanny.pre-spawn-environ.{name}": None
    for name in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
}


DEFAULTS = ComputeOptions()  # the catalogue's defaults: this process, the automatic device, offline


class ComputeError(RuntimeError):
    """Where the edit should run cannot run it (unreachable, mismatched, no worker left); says what to do."""


@dataclass
class StepUpdate:
    """A denoising step done, wherever it ran; the slices in work, as they lie in the source array."""

    step: int
    total: int
    slices: list[int]
    axis: int
    estimate: np.ndarray | None = (
        None  # those slices' current estimate: every PREVIEW_EVERY steps and the last
    )

    def preview(self) -> np.ndarray | None:
        return self.estimate


@dataclass
class EditRequest:
    """One edit as it travels to where it runs."""

    method: str
    image: MedicalImage
    model: str  # a name, folder or hub id, as the computing machine resolves it
    options: dict[str, Any] = field(default_factory=dict)  # edit()'s masks, method parameters and run options
    compute: ComputeOptions = field(default_factory=ComputeOptions)


# ---------------------------------------------------------------- the computing side


_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(spec: str, compute: ComputeOptions = DEFAULTS) -> tuple[Any, bool]:
    """This process's copy of a model, loaded on first use and kept; and whether it loaded now."""
    from .backends import load_model

    key = (str(spec), *compute.load_arguments().values())
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key], False
        _MODELS[key] = load_model(spec, **compute.load_arguments())
        return _MODELS[key], True


def compute_edit(
    request: EditRequest, *, report: Callable[[StepUpdate], None] | None = None, cancel=None
) -> EditResult:
    """Run ``request`` in this process with its (cached) model; ``report`` gets a ``StepUpdate`` per step.
    A model that cannot be loaded is an ``EditError``, as any bad request (its message names the fix)."""
    from .editing import edit as edit_here

    try:
        model, _ = cached_model(request.model, request.compute)
    except ModelLoadError as exc:
        raise EditError(str(exc)) from None
    result = edit_here(
        request.method,
        request.image,
        model=model,
        cancel=cancel,
        callback=None if report is None else _reporting(report),
        **request.options,
    )
    result.provenance["computed_on"] = {"host": socket.gethostname(), "process": os.getpid()}
    return result


def _reporting(report: Callable[[StepUpdate], None]):
    def on_step(progress) -> None:
        previewed = progress.step % PREVIEW_EVERY == 0 or progress.step == progress.total
        estimate = np.asarray(progress.preview(), np.float32) if previewed else None
        report(StepUpdate(progress.step, progress.total, list(progress.slices), progress.axis, estimate))

    return on_step


def _load(model: str, compute: ComputeOptions) -> None:
    """Load ``model`` into this process's cache (a task: the model itself stays on the worker)."""
    cached_model(model, compute)


def available_models() -> list[str]:
    """The models this machine has: its model folders and the presets (``napari-medit models``)."""
    from .backends import describe_presets, model_folders

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


@dataclass
class _Failure:
    """An edit that failed on a worker, as plain text: its exception's type may need torch to unpickle."""

    cancelled: bool
    invalid: bool  # the request or the model is wrong: the message names the fix
    message: str
    details: str

    def exception(self) -> Exception:
        if self.cancelled:
            return EditCancelled(self.message)
        if self.invalid:
            return EditError(self.message)
        return ComputeError(f"the edit failed on the worker: {self.message}\n{self.details}")


def _edit_task(request: EditRequest, channel: str):
    """A dask task: the edit, its steps on the Queue ``channel``, stopped when the Event ``channel`` is
    set."""
    from distributed import Event, Queue

    try:
        updates, stop = Queue(channel), Event(channel)
        result = compute_edit(request, report=updates.put, cancel=_EventFlag(stop))
        return _Box.pack(result, request.image.array)
    except Exception as exc:  # noqa: BLE001 - every failure goes back as text the client can read
        return _Failure(
            isinstance(exc, EditCancelled),
            isinstance(exc, EditError),
            str(exc) or type(exc).__name__,
            traceback.format_exc(limit=4),
        )


class _EventFlag:
    """A dask Event read as the engine reads a threading.Event (one scheduler round trip per step)."""

    def __init__(self, event):
        self.event = event

    def is_set(self) -> bool:
        return self.event.is_set()


@dataclass
class _Box:
    """An EditResult whose full-size arrays are cut to the box of voxels that changed: outside it the
    result is the source, and the difference and maps are zero, exactly (``assemble`` composites so)."""

    result: EditResult
    box: tuple[slice, ...]
    masks: dict[str, tuple[np.ndarray, tuple[int, ...]]]  # the masks as used, one bit per voxel

    @classmethod
    def pack(cls, result: EditResult, source: np.ndarray) -> _Box:
        versions = result.progression or [result.image]
        changed = np.zeros(source.shape, bool)
        for version in versions:
            changed |= ~_same(version.array, source)
        for values in (result.difference, *result.maps.values()):
            changed |= values != 0
        found = np.nonzero(changed)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) if i.size else slice(0, 0) for i in found)
        cut = [replace(version, array=version.array[box]) for version in versions]
        trimmed = replace(
            result,
            image=cut[-1],
            difference=result.difference[box],
            progression=cut if result.progression else None,
            maps={k: v[box] for k, v in result.maps.items()},
            masks={},
        )
        masks = {k: (np.packbits(np.asarray(m, bool)), m.shape) for k, m in result.masks.items()}
        return cls(trimmed, box, masks)

    def unpack(self, source: MedicalImage) -> EditResult:
        def filled(part: np.ndarray, background: np.ndarray) -> np.ndarray:
            whole = background.astype(part.dtype, copy=True)
            whole[self.box] = part
            return whole

        result, zeros = self.result, np.zeros(source.array.shape, np.float32)
        versions = [
            replace(v, array=filled(v.array, source.array)) for v in (result.progression or [result.image])
        ]
        masks = {
            k: np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
            for k, (bits, shape) in self.masks.items()
        }
        return replace(
            result,
            image=versions[-1],
            difference=filled(result.difference, zeros),
            progression=versions if result.progression else None,
            maps={k: filled(v, zeros) for k, v in result.maps.items()},
            masks=masks,
        )


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b


# ---------------------------------------------------------------- the client side


class InProcess:
    """Edits in a thread of this process (the Edit widget's 'this process'; debugging)."""

    address = "this process"

    def models(self) -> list[str]:
        return available_models()

    def warm_up(self, model: str, compute: ComputeOptions = DEFAULTS) -> None:
        _load(model, compute)

    def submit(
        self,
        request: EditRequest,
        on_step: Callable[[StepUpdate], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> RunningEdit:
        return _ThreadEdit(request, on_step, cancel or threading.Event())

    def close(self) -> None:
        pass


class RunningEdit:
    """An edit under way: ``cancel()`` it, or wait for its ``result()``."""

    def cancel(self) -> None:
        raise NotImplementedError

    def result(self) -> EditResult:
        """The result; raises EditCancelled, EditError (a bad request or model) or ComputeError."""
        raise NotImplementedError


class _ThreadEdit(RunningEdit):
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
        self._thread.join()
        if isinstance(self._outcome, Exception):
            raise self._outcome
        return self._outcome


class Cluster:
    """A dask scheduler that edits run on: one the user started (by address), or, for ``LOCAL_WORKER``,
    a scheduler in this process and one ``dask worker`` with a nanny in a child process, both on
    127.0.0.1. The worker is a command of its own, not a multiprocessing child of this process: a
    spawned child would re-run the main script of whoever started napari; and it stops itself when
    this process dies (``--death-timeout``), so a crash of napari leaves no worker behind."""

    def __init__(self, scheduler: str, *, timeout: float | None = None):
        from distributed import Client

        self.address, self._scheduler, self._worker = scheduler, None, None
        timeout = timeout or CONNECT_TIMEOUT_S
        try:
            if scheduler == LOCAL_WORKER:
                self._start_local(timeout)
            self.client = Client(self._scheduler or scheduler, timeout=timeout, set_as_default=False)
            if self._worker is not None:
                self.client.wait_for_workers(1, timeout=LOCAL_START_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self.close()
            if scheduler == LOCAL_WORKER:
                raise ComputeError(
                    f"the local worker process did not start ({exc}); run `python -m dask "
                    "worker --help` to check the dask installation"
                ) from None
            raise ComputeError(
                f"cannot reach the dask scheduler at {scheduler} ({exc}). Start one on the GPU "
                "machine (`dask scheduler`, then `dask worker ADDRESS`), check the address, or "
                "open the SSH tunnel (ssh -N -L 8786:localhost:8786 HOST)"
            ) from None
        try:
            self._check_versions()
        except ComputeError:
            self.close()
            raise

    def _start_local(self, timeout: float) -> None:
        import dask
        from distributed import LocalCluster

        # Its HTTP server (health checks; no dashboard) on loopback too, not on every interface at :8787.
        self._scheduler = LocalCluster(
            n_workers=0,
            host="127.0.0.1",
            silence_logs=logging.ERROR,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        )
        with dask.config.set(TORCH_WORKER_ENVIRON):
            inherited = dask.config.serialize(
                {"distributed": {"nanny": dask.config.get("distributed.nanny")}}
            )
        environ = {**os.environ, "DASK_INTERNAL_INHERIT_CONFIG": inherited}
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        self._worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dask",
                "worker",
                self._scheduler.scheduler_address,
                "--host",
                "127.0.0.1",
                "--nthreads",
                "1",
                "--nanny",
                "--no-dashboard",
                "--death-timeout",
                str(int(timeout)),
                "--name",
                "napari-medit",
            ],
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _check_versions(self) -> None:
        try:
            self.client.get_versions(check=True)  # dask's own: python, dask, distributed, cloudpickle, ...
        except ValueError as exc:
            raise ComputeError(
                f"the dask cluster at {self.address} runs other versions than this machine: {exc}"
            ) from None
        here = installed_versions()
        for worker, there in self.client.run(installed_versions).items():
            differ = [
                f"{name} {there[name]} there, {here[name]} here"
                for name in VERSIONED
                if here[name] is not None and there.get(name) != here[name]
            ]
            if differ:
                raise ComputeError(
                    f"the dask worker {worker} runs other versions than this machine "
                    f"({'; '.join(differ)}): install the same on both sides"
                )

    def workers(self) -> int:
        return len(self.client.nthreads())

    def models(self) -> list[str]:
        """The models the workers see (model folders and hub caches are paths on their machine)."""
        return self.client.submit(available_models, pure=False).result()

    def warm_up(self, model: str, compute: ComputeOptions = DEFAULTS) -> None:
        """Import the engine and load ``model`` on a worker, so the first edit starts at once."""
        self.client.submit(_load, model, compute, pure=False).result()

    def submit(
        self,
        request: EditRequest,
        on_step: Callable[[StepUpdate], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> RunningEdit:
        """Start ``request`` on a worker; ``on_step`` gets its steps (in the thread that waits for the
        result); setting ``cancel`` stops it within a step, as ``cancel()`` does."""
        return _DaskEdit(self, request, on_step, cancel or threading.Event())

    def close(self) -> None:
        """Disconnect; a local worker and its scheduler are stopped (the worker killed if it lingers)."""
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            client.close()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.terminate()  # the nanny closes its worker process, then itself
            try:
                worker.wait(LOCAL_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()


class _DaskEdit(RunningEdit):
    def __init__(self, cluster: Cluster, request: EditRequest, on_step, cancel: threading.Event):
        import dask
        from distributed import Event, Queue

        self.cluster, self.source, self.on_step = cluster, request.image, on_step
        self.channel = f"napari-medit-edit-{uuid.uuid4().hex}"
        client = cluster.client
        self._updates, self._stop = Queue(self.channel, client=client), Event(self.channel, client=client)
        self._cancelled = cancel
        # In the task, not scattered: data scattered to a worker dies with it, and dask could not rerun the
        # edit on the worker that replaces it. The source is the task's payload, not an oversized graph.
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "64GB"}):
            self.future = client.submit(_edit_task, request, self.channel, key=self.channel, pure=False)
        self._finished = threading.Event()
        self.future.add_done_callback(lambda _: self._finished.set())

    def cancel(self) -> None:
        self._cancelled.set()

    def result(self) -> EditResult:
        try:
            return self._wait()
        except OSError as exc:  # distributed's CommClosedError and timeouts: the scheduler went away
            raise ComputeError(
                f"lost the dask scheduler at {self.cluster.address} during the edit ({exc}); "
                "check that it still runs, then run again"
            ) from None
        finally:
            with contextlib.suppress(Exception):  # the scheduler may be gone: nothing left to tidy there
                self._stop.clear()
                self._updates.close()

    def _wait(self) -> EditResult:
        workerless_since, last_look, stopping = None, 0.0, False
        while not self.future.done():
            if self._cancelled.is_set() and not stopping:
                self._stop.set()  # the worker's loop reads it at its next step
                stopping = True
            self._forward(wait=POLL_S)
            now = time.monotonic()
            if now - last_look < 1.0:
                continue
            last_look = now
            if self.cluster.workers():
                workerless_since = None
                continue
            workerless_since = workerless_since or now
            if self._cancelled.is_set() or now - workerless_since > NO_WORKER_GRACE_S:
                self.future.cancel()
                if self._cancelled.is_set():
                    raise EditCancelled("edit cancelled")
                raise ComputeError(
                    f"no dask worker is left at {self.cluster.address} to run the edit (killed, "
                    "out of memory?); start one with `dask worker ADDRESS` and run again"
                )
        self._forward(wait=0)
        try:
            outcome = self.future.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker and the like: dask's own failures
            raise ComputeError(
                f"the edit could not finish on {self.cluster.address}: {type(exc).__name__}: {exc}"
            ) from None
        if isinstance(outcome, _Failure):
            raise outcome.exception()
        return outcome.unpack(self.source)

    def _forward(self, wait: float) -> None:
        """Hand the steps the worker reported to ``on_step``, first waiting up to ``wait`` s for the task
        (a Queue.get that times out is logged as an error by the scheduler: the queue is only drained)."""
        if wait:
            self._finished.wait(wait)
        updates = self._updates.get(batch=True)
        if self.on_step is not None:
            for update in updates:
                self.on_step(update)


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


def edit(
    method: str,
    image: MedicalImage | np.ndarray,
    *,
    model,
    scheduler: str | None = None,
    device: str | None = None,
    download: bool = False,
    trust_remote_code: bool = False,
    callback: Callable | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> EditResult:
    """``napari_medit.editing.edit``, computed where ``scheduler`` says.

    Args:
        method, image, **options: as ``napari_medit.editing.edit`` takes them (masks, parameters,
            ``seed``, ``axis``, ``slices`` and the other run options).
        model: a loaded Denoiser (this process only), or a model name, folder or hub id, which the
            machine that computes resolves.
        scheduler: a dask scheduler's address (``tcp://host:8786``, ``tls://...``,
            ``localhost:PORT`` through an SSH tunnel) or ``'local'`` (a worker process on this
            machine); None: ``$NAPARI_MEDIT_SCHEDULER``, else this process. TLS: dask's own
            ``distributed.comm.tls`` configuration.
        device, download, trust_remote_code: how the model loads, on the machine that computes.
        callback: called with a ``StepUpdate`` after every step (with a loaded Denoiser in this
            process: the engine's ``EditProgress``).
        cancel: set it to stop the edit within one step (``EditCancelled`` is raised).

    Raises ``EditError`` for bad requests or models, ``EditCancelled``, and ``ComputeError`` when the
    place to compute cannot (unreachable, other versions, no worker left).
    """
    compute = ComputeOptions(scheduler, device, download, trust_remote_code)
    where = compute.resolved_scheduler()
    if where is None and not isinstance(model, (str, os.PathLike)):
        from .editing import edit as edit_here

        return edit_here(method, image, model=model, callback=callback, cancel=cancel, **options)
    if not isinstance(model, (str, os.PathLike)):
        raise EditError(
            f"a model loaded here cannot be sent to {where}: give its name or folder, which the "
            "worker loads itself"
        )
    source = image if isinstance(image, MedicalImage) else MedicalImage(np.asarray(image), np.eye(4))
    request = EditRequest(method, source, str(model), options, compute)
    return (InProcess() if where is None else connect(where)).submit(request, callback, cancel).result()

"""The client side of a dask cluster: connecting (and saying in one line why not), a local worker
process for 'local', and an edit under way on a worker, with its steps, its cancel and its result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ..catalogue import LOCAL_WORKER, ComputeOptions
from ..results import EditCancelled, EditProgress, EditResult
from .wire import ComputeError, EditRequest, Failure, ModelFacts
from .worker import DEFAULTS, VERSIONED, available_models, edit_task, installed_versions, load_task

CONNECT_TIMEOUT_S = 10.0
LOCAL_START_TIMEOUT_S = 120.0  # a local worker process imports dask and registers; slow disks take a while
LOCAL_STOP_TIMEOUT_S = 10.0
ASK_TIMEOUT_S = 30.0  # listing models, and waiting for a worker to take a task at all
NO_WORKER_GRACE_S = 5.0  # a nanny restarts a killed worker within this; longer with none: report it
POLL_S = 0.1  # how often the client looks for progress, a finished task or a lost worker
WORKER_LOG_LINES = 12  # of a local worker's log, shown when it dies

# Dask's worker defaults suit numpy tasks, not torch's: its MALLOC_TRIM_THRESHOLD_ of 64 KiB also fixes
# glibc's mmap threshold, so every activation buffer is mapped, faulted in and returned to the kernel;
# an edit spent ~40% of its CPU in the kernel and ran ~3x slower than in-process (128 px InstructX2X:
# 71 s against 25 s). Its OMP/MKL/OpenBLAS_NUM_THREADS=1 would hold torch to one thread (every edit sets
# its own count, ``worker.torch_threads``), and the nanny writes them into the *caller's* environment
# too, where a torch imported later would read them. None leaves a variable unset.
TORCH_WORKER_ENVIRON = {
    f"distributed.nanny.pre-spawn-environ.{name}": None
    for name in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
}


def worker_command(scheduler: str) -> str:
    """How to start a worker for ``scheduler``, as the messages and docs give it."""
    return f"`dask worker {scheduler} --host 127.0.0.1 --nthreads 1` on the machine with the model"


class Cluster:
    """A dask scheduler that edits run on: one the user started (by address), or, for ``LOCAL_WORKER``,
    a scheduler in this process and one ``dask worker`` with a nanny in a child process, both on
    127.0.0.1. The worker is a command of its own, not a multiprocessing child of this process: a
    spawned child would re-run the main script of whoever started napari; and it stops itself when
    this process dies (``--death-timeout``), so a crash of napari leaves no worker behind.

    Whatever fails while connecting closes what was started and raises one ``ComputeError``."""

    def __init__(self, scheduler: str, *, timeout: float | None = None):
        self.address, self.client = scheduler, None
        self._scheduler = self._worker = self._worker_log = None
        timeout = timeout or CONNECT_TIMEOUT_S
        try:
            if scheduler == LOCAL_WORKER:
                self._start_local(timeout)
            else:
                _probe(scheduler, timeout)
            from distributed import Client

            self.client = Client(self._scheduler or scheduler, timeout=timeout, set_as_default=False)
            if self._worker is not None:
                self._wait_for_local_worker()
            self._check_versions()
        except BaseException as exc:
            self.close()
            if isinstance(exc, ComputeError | KeyboardInterrupt):
                raise
            raise ComputeError(_connect_problem(scheduler, exc)) from None

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
        # Its stderr to a file, so that a worker that dies at start says why.
        self._worker_log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close()
            prefix="napari-medit-worker-", suffix=".log", delete=False
        )
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
            stdout=self._worker_log,
            stderr=subprocess.STDOUT,
        )

    def _wait_for_local_worker(self) -> None:
        """Until the worker registers; its exit is reported at once, with the last lines it wrote."""
        deadline = time.monotonic() + LOCAL_START_TIMEOUT_S
        while not self.client.nthreads():
            if self._worker.poll() is not None:
                raise ComputeError(
                    f"the local worker process exited at start (status {self._worker.returncode}):\n"
                    f"{self.worker_log_tail()}\nrun `python -m dask worker --help` to check the dask "
                    "installation"
                )
            if time.monotonic() > deadline:
                raise ComputeError(
                    f"the local worker process did not register within {LOCAL_START_TIMEOUT_S:.0f} s; its "
                    f"log:\n{self.worker_log_tail()}"
                )
            time.sleep(POLL_S)

    def worker_log_tail(self) -> str:
        if self._worker_log is None:
            return ""
        lines = Path(self._worker_log.name).read_text(errors="replace").splitlines()
        return "\n".join(lines[-WORKER_LOG_LINES:])

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

    def _ask(self, function, *args, timeout: float = ASK_TIMEOUT_S):
        """``function(*args)`` on a worker, within ``timeout``; a scheduler without workers says so."""
        from distributed import TimeoutError as DaskTimeout

        if not self.workers():
            raise ComputeError(
                f"the dask scheduler at {self.address} has no worker: start one with "
                f"{worker_command(self.address)}"
            )
        future = self.client.submit(function, *args, pure=False)
        try:
            return future.result(timeout=timeout)
        except (TimeoutError, DaskTimeout):
            future.cancel()
            raise ComputeError(
                f"no worker at {self.address} answered within {timeout:.0f} s (all busy, or lost); "
                "try again when the edits under way have finished"
            ) from None

    def models(self) -> list[str]:
        """The models the workers see (model folders and hub caches are paths on their machine)."""
        return self._ask(available_models)

    def warm_up(
        self, model: str, compute: ComputeOptions = DEFAULTS, timeout: float | None = None
    ) -> ModelFacts:
        """Import the engine and load ``model`` on a worker, so the first edit starts at once; the
        model's facts come back."""
        return self._ask(load_task, model, compute, timeout=timeout or ASK_TIMEOUT_S * 10)  # hub: slow

    def submit(
        self,
        request: EditRequest,
        on_step: Callable[[EditProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> DaskEdit:
        """Start ``request`` on a worker; ``on_step`` gets its steps (in the thread that waits for the
        result); setting ``cancel`` stops it within a step, as ``cancel()`` does."""
        return DaskEdit(self, request, on_step, cancel or threading.Event())

    def close(self) -> None:
        """Disconnect; a local worker and its scheduler are stopped (the worker killed if it lingers)."""
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):  # a scheduler already gone: nothing to say goodbye to
                client.close(timeout=2)
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
        log, self._worker_log = self._worker_log, None
        if log is not None:
            log.close()
            Path(log.name).unlink(missing_ok=True)


def _probe(address: str, timeout: float) -> None:
    """Open one connection to the scheduler and close it, with this machine's TLS settings: fails fast
    where a dask Client would leave a half-made client behind (and a hang at exit)."""
    from distributed.comm import connect
    from distributed.security import Security

    if address.startswith("tls://") and not Security().get_connection_args("client").get("ssl_context"):
        raise ComputeError(
            f"{address} asks for TLS, and this machine has no TLS client settings: set "
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY (or the same in ~/.config/dask/; docs/compute.md)"
        )

    async def once():
        comm = await connect(address, timeout=timeout, **Security().get_connection_args("client"))
        await comm.close()

    asyncio.run(once())


def _connect_problem(address: str, exc: BaseException) -> str:
    """One line naming what went wrong reaching ``address`` and what to do."""
    text = str(exc)
    if address == LOCAL_WORKER:
        return f"the local worker process did not start ({type(exc).__name__}: {text})"
    if address.startswith("tls://") and ("SSL" in text or not text or "certificate" in text.lower()):
        return (
            f"the scheduler at {address} did not complete a TLS handshake ({text or type(exc).__name__}): "
            "it may be a plain scheduler (use tcp://), or its certificate is not signed by your CA file"
        )
    if "reset" in text.lower() or "closed" in text.lower():
        return (
            f"the scheduler at {address} closed the connection at once: it may expect TLS (use tls:// with "
            "this machine's TLS client settings, docs/compute.md) or be another service on that port"
        )
    return (
        f"cannot reach the dask scheduler at {address} ({text or type(exc).__name__}). Start one on the GPU "
        "machine (`dask scheduler --host 127.0.0.1`, then a worker), check the address, or open the SSH "
        "tunnel (ssh -N -L 8786:127.0.0.1:8786 HOST)"
    )


class DaskEdit:
    """An edit under way on a worker: ``cancel()`` it, or wait for its ``result()``. However the wait
    ends (the result, an error, Ctrl-C), the worker is told to stop and the task is cancelled."""

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
            self.future = client.submit(edit_task, request, self.channel, key=self.channel, pure=False)
        self._finished = threading.Event()
        self.future.add_done_callback(lambda _: self._finished.set())

    def cancel(self) -> None:
        self._cancelled.set()

    def result(self) -> EditResult:
        """The result; raises EditCancelled, EditError (a bad request or model) or ComputeError."""
        try:
            return self._wait()
        except OSError as exc:  # distributed's CommClosedError and timeouts: the scheduler went away
            raise ComputeError(
                f"lost the dask scheduler at {self.cluster.address} during the edit ({exc}); "
                "check that it still runs, then run again"
            ) from None
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Stop the worker's edit if it still runs (an interrupted wait), and drop the channel."""
        with contextlib.suppress(Exception):  # the scheduler may be gone: nothing left to tidy there
            if not self.future.done():
                self._stop.set()  # the running edit reads it at its next step
                self.future.cancel()  # and a task not started yet never starts
            self._updates.close()

    def _wait(self) -> EditResult:
        workerless_since, last_look, stopping, seen_worker = None, 0.0, False, False
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
                workerless_since, seen_worker = None, True
                continue
            workerless_since = workerless_since or now
            if self._cancelled.is_set() or now - workerless_since > NO_WORKER_GRACE_S:
                self.future.cancel()
                if self._cancelled.is_set():
                    raise EditCancelled("edit cancelled")
                if not seen_worker:
                    raise ComputeError(
                        f"the dask scheduler at {self.cluster.address} has no worker: start one with "
                        f"{worker_command(self.cluster.address)}"
                    )
                raise ComputeError(
                    f"no dask worker is left at {self.cluster.address} to run the edit (killed, "
                    f"out of memory?); start one with {worker_command(self.cluster.address)} and run again"
                )
        self._forward(wait=0)
        try:
            outcome = self.future.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker and the like: dask's own failures
            raise ComputeError(
                f"the edit could not finish on {self.cluster.address}: {type(exc).__name__}: {exc}"
            ) from None
        if isinstance(outcome, Failure):
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

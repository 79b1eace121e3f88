"""The Edit widget's side of ``napari_medit.compute``: where edits run, seen from napari.

One ``EngineClient`` per Edit widget connects in the background to a worker process, a dask
scheduler or this process, lists the models there and warms one up; it runs one edit at a time
in a thread that waits on the engine, relays its steps and outcome to the GUI thread through
queued Qt signals, and keeps napari's progress bar and the time left. It holds no widgets and no
maths: the widget it serves reads and shows what it reports.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, QTimer, Signal

if TYPE_CHECKING:
    from ..compute import ModelFacts

CONNECT_POLL_MS = 100  # how often the GUI looks whether the engine is connected


class _Connecting:
    """One attempt to connect to where edits run, made in a background thread. Whoever finishes last
    closes what it made when nobody will adopt it: the thread, if the attempt was abandoned (the user
    chose another place, or closed) before it finished; else ``abandon()``."""

    def __init__(self):
        self.done = threading.Event()
        self.engine = None  # InProcess or Cluster, until the client adopts it
        self.names: list[str] = []  # the models there
        self.error = ""
        self._lock = threading.Lock()
        self._abandoned = False

    def finish(self, engine, names: list[str], error: str) -> None:
        """In the thread: the attempt's outcome; an engine nobody will adopt is closed here."""
        with self._lock:
            orphan = engine if (error or self._abandoned) else None
            self.engine, self.names, self.error = (None if orphan else engine), names, error
        if orphan is not None:
            orphan.close()
        self.done.set()

    def adopt(self):
        """The engine, handed over once (None: failed or abandoned)."""
        with self._lock:
            engine, self.engine = self.engine, None
            return engine

    def abandon(self) -> None:
        """Nobody will adopt this attempt: close its engine now if it has one, else when it finishes."""
        with self._lock:
            self._abandoned = True
            engine, self.engine = self.engine, None
        self.facts = {}
        if engine is not None:
            engine.close()


class Relay(QObject):
    """Carries progress and the outcome from the thread that waits to the GUI thread (queued Qt signals)."""

    step = Signal(object)
    outcome = Signal(object)  # an EditResult, or the exception that ended the edit


class EngineClient:
    """Connects, lists models, runs edits; reports through the callbacks, on the GUI thread.

    Args:
        owner: the Qt object the connection poll's timer lives with (the widget's native widget).
        on_connected: called with the models there once connected.
        on_failure: called with one message when connecting fails.
        on_step: called with each ``EditProgress`` of the edit under way.
        on_outcome: called with its ``EditResult``, or the exception that ended it.
    """

    def __init__(
        self,
        owner: QObject,
        *,
        on_connected: Callable[[list[str]], None],
        on_failure: Callable[[str], None],
        on_step: Callable[[object], None],
        on_outcome: Callable[[object], None],
    ):
        self.on_connected, self.on_failure = on_connected, on_failure
        self.relay = Relay()
        self.relay.step.connect(on_step)
        self.relay.outcome.connect(on_outcome)
        self.engine = None  # napari_medit.compute's InProcess or Cluster, once connected
        self.names: list[str] = []  # the models the computing side has
        self.facts: dict[str, ModelFacts] = {}  # the models loaded there, as they answered
        self.place: str | None = ""  # where the latest attempt connects ("" before the first)
        self._connecting = _Connecting()
        self._connecting.done.set()
        self._timer = QTimer(owner)
        self._timer.setInterval(CONNECT_POLL_MS)
        self._timer.timeout.connect(self._check_connected)
        # napari's progress bar takes ~90 ms to appear (its activity dock processes events): it comes in
        # the event-loop turn after the click, which then answers at once
        self._progress_timer = QTimer(owner)
        self._progress_timer.setSingleShot(True)
        self._progress_timer.timeout.connect(self._show_progress)
        self._description = ""
        self.cancel_event = threading.Event()
        self.run_done = threading.Event()  # set while no edit's thread is waiting
        self.run_done.set()
        self.progress_bar = None  # napari's, for the edit under way
        self._first_step_at: float | None = None  # when the run's first step came, and its number
        self._first_step = 0

    @property
    def ready(self) -> bool:
        """Connected, and the models there listed (an engine is adopted only then)."""
        return self.engine is not None

    # ------------------------------------------------------------ connecting

    def connect(self, place: str | None) -> bool:
        """Connect to ``place`` (an address, LOCAL_WORKER, or None for this process) in a background
        thread: a plain thread that sets an Event, polled by a timer the owner holds, so nothing is
        left to signal a deleted Qt object when the widget closes first. False: connected there, or
        on the way, already."""
        if place == self.place and (self.engine is not None or not self._connecting.done.is_set()):
            return False
        self.place = place
        _in_background(self._connecting.abandon)  # an attempt still under way closes what it makes itself
        self.disconnect()
        attempt = self._connecting = _Connecting()

        def connect():
            from ..compute import Cluster, ComputeError, InProcess

            engine, names, error = None, [], ""
            try:
                engine = InProcess() if place is None else Cluster(place)
                names = engine.models()
            except ComputeError as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - a broken cluster: said in the status, nothing added
                error = f"{place}: cannot list the models there ({exc})"
            attempt.finish(engine, names, error)

        threading.Thread(target=connect, name="napari-medit connect", daemon=True).start()
        self._timer.start()
        return True

    def _check_connected(self) -> None:
        attempt = self._connecting
        if not attempt.done.is_set():
            return
        self._timer.stop()
        if attempt.error:
            self.on_failure(attempt.error)
            return
        engine = attempt.adopt()
        if engine is None:  # abandoned meanwhile
            return
        self.engine, self.names = engine, attempt.names
        self.on_connected(self.names)

    def warm_up(self, name: str) -> None:
        """Load model ``name`` where edits run while the user sets up (errors show when it runs); its
        facts join ``facts`` (a dict item set from the loading thread: atomic, read on the GUI thread)."""
        if self.engine is None:
            return
        engine = self.engine

        def load():
            with contextlib.suppress(Exception):  # a broken model is reported when the user runs it
                facts = engine.warm_up(name)
                if engine is self.engine:  # still the place the widget shows
                    self.facts[name] = facts

        threading.Thread(target=load, name="napari-medit warm-up", daemon=True).start()

    def disconnect(self) -> None:
        """Let go of the engine; it closes in the background (a worker process takes seconds to stop)."""
        engine, self.engine = self.engine, None
        self.facts = {}
        if engine is not None:
            _in_background(engine.close)

    # ------------------------------------------------------------ running

    def start(self, request, description: str) -> None:
        """Submit ``request`` (a ``compute.EditRequest``) and wait for it in a thread; its steps and
        outcome arrive through the callbacks. napari's progress bar shows it as ``description``."""
        cancel, relay, done, engine = threading.Event(), self.relay, threading.Event(), self.engine
        self.cancel_event, self.run_done = cancel, done

        def report(step):
            try:
                relay.step.emit(step)
            except RuntimeError:  # the widget is gone: stop at the next step
                cancel.set()

        def wait():
            try:
                outcome = engine.submit(request, report, cancel).result()
            except Exception as exc:  # noqa: BLE001 - every failure becomes one notification
                outcome = exc
            try:
                relay.outcome.emit(outcome)
            except RuntimeError:  # the widget is gone
                pass
            finally:
                done.set()

        self._first_step_at, self._description = None, description
        threading.Thread(target=wait, name="napari-medit edit", daemon=True).start()
        self._progress_timer.start(0)

    def _show_progress(self) -> None:
        """napari's activity dock shows the run with the time left (the total comes with the steps)."""
        from napari.utils import progress

        if self.progress_bar is None and not self.run_done.is_set():  # not ended before its turn
            self.progress_bar = progress(total=0, desc=self._description)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        self.cancel_event.set()

    def step_text(self, step) -> str:
        """Account for ``step`` (an ``EditProgress``) in the progress bar; 'step i / n, T s left'."""
        now = time.monotonic()
        if self._first_step_at is None:
            self._first_step_at, self._first_step = now, step.step
        if self.progress_bar is not None:
            if self.progress_bar.total != step.total:
                self.progress_bar.total = step.total
            self.progress_bar.update(step.step - self.progress_bar.n)
        done_since = step.step - self._first_step
        seconds_each = (now - self._first_step_at) / done_since if done_since else None
        left = f", {seconds_each * (step.total - step.step):.0f} s left" if seconds_each is not None else ""
        return f"step {step.step} / {step.total}{left}"

    def finish(self) -> None:
        """The edit's outcome has been handled: close its progress bar."""
        if self.progress_bar is not None:
            self.progress_bar.close()
            self.progress_bar = None

    def close(self, timeout: float = 10.0) -> threading.Thread:
        """Stop the background work without waiting on the GUI thread: cancel a run, disconnect the
        signals, abandon a connection under way; a thread of its own waits for the run to stop (one
        denoising step, at most ``timeout``) and then stops the worker process, so nothing is left
        running. That thread is not a daemon: the interpreter waits for it at exit. Returns it."""
        self.cancel_event.set()
        with contextlib.suppress(RuntimeError):  # its owner already deleted: so is the timer
            self._progress_timer.stop()
        for signal in (self.relay.step, self.relay.outcome):
            with contextlib.suppress(TypeError, RuntimeError):  # nothing connected, or already deleted
                signal.disconnect()
        self.finish()
        attempt, engine, run_done = self._connecting, self.engine, self.run_done
        self.engine = None

        def stop():
            attempt.abandon()  # a connection under way closes what it made when it finishes
            run_done.wait(timeout)
            if engine is not None:
                engine.close()

        return _in_background(stop)


CLOSER_THREAD = "napari-medit close"


def _in_background(stop: Callable[[], None]) -> threading.Thread:
    """Run ``stop`` (closing an engine: seconds) off the GUI thread, in a thread the interpreter joins at
    exit, so napari closes at once and the worker process still stops behind it."""
    thread = threading.Thread(target=stop, name=CLOSER_THREAD, daemon=False)
    thread.start()
    return thread

"""Running user module code off the frame loop without costing it a frame.

Module-level code (imports, class bodies, a table built at import, a loop that never ends)
runs on the loader's thread while the main thread runs frames. Python threads take turns
holding the GIL, so a busy loader thread would stretch every system call of a frame (each
waits for its turn) and a healthy system could be disabled for time it never used. The
:class:`FrameGate` gives the frame priority: the main thread closes it for the length of
a frame, and user code on a loading thread waits at it until the frame is over. Between
frames (most of each 11 ms at 90 Hz) the load goes on.

A :class:`GatedRun` is one stretch of user code run at the gate. It installs a trace
hook on its own thread, called at every Python call and at every line of project code
(``user_file``), which

* waits while the gate is closed (that time does not count towards the load limit);
  only project code waits: engine and library code called from it runs on (the engine
  may hold a lock there, and a lock held at the gate would stall the frame);
* raises :class:`~engine.scheduler.watchdog.LoadTimeout` in the thread once the code has
  run for longer than the limit, and again every ``RETRY_NS`` if it swallows the
  interrupt; the file and line are where it was interrupted. An exception leaving a trace
  hook switches tracing off for the thread, so the interrupt puts the hook back when it
  is released (the handler that swallowed it ended) or at the code's next call;
* parks the thread for good (it blocks, holding no GIL and no lock) once the run has
  been *abandoned*: it ran ``MAX_INTERRUPTS`` interrupts past its limit, or the loader
  gave up waiting for it (a C call that never returns). The loader then carries on
  with a new thread.

What the hook cannot do: come back by itself for code that keeps the interrupt
(``last = exc``) and then loops without a single call (the loader abandons such a run and
its thread is stopped from outside, see :meth:`UserThreads.adopt
<engine.loader.threads.UserThreads.adopt>`); preempt a long C call (a huge ``compile``,
``marshal.loads`` or numpy call holds the GIL until it returns). The loader keeps its own
C calls short (compiling big modules in a helper process, see
:mod:`engine.loader.compiler`) and waits for the gate before each of them.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from types import FrameType
from typing import Any

from engine.scheduler.watchdog import LoadTimeout

#: How soon an interrupt that user code swallowed is raised again.
RETRY_NS = 50_000_000
#: Interrupts a run may swallow before it is parked.
MAX_INTERRUPTS = 3
#: The GIL switch interval while user code loads. The main thread waking up for a frame
#: waits this long at most for the loading thread to hand over the GIL (default 5 ms,
#: half a frame; measured by bench/load_stall.py).
LOAD_SWITCH_INTERVAL_S = 0.0002


class FrameGate:
    """Open between frames, closed while the main thread runs one.

    Example (the frame loop)::

        with gate.frame():
            engine.step()

    ``is_open`` is a plain attribute: the hook reads it at every event.
    """

    def __init__(self) -> None:
        self.is_open = True
        self._opened = threading.Event()
        self._opened.set()

    def close(self) -> None:
        self.is_open = False
        self._opened.clear()

    def open(self) -> None:
        self.is_open = True
        self._opened.set()

    @contextmanager
    def frame(self):  # noqa: ANN201 - a context manager
        """Closed for the length of the ``with`` block (the main thread's frame)."""
        self.close()
        try:
            yield self
        finally:
            self.open()

    @contextmanager
    def lent(self):  # noqa: ANN201
        """Held open while the frame itself waits for a load (a system importing a module
        that is not loaded yet cannot go on without it)."""
        was_open = self.is_open
        self.open()
        try:
            yield self
        finally:
            if not was_open:
                self.close()

    def wait_open(self) -> int:
        """Block until the gate is open; the nanoseconds waited."""
        if self.is_open:
            return 0
        t0 = time.monotonic_ns()
        self._opened.wait()
        return time.monotonic_ns() - t0


def _raise_in(thread_id: int, exc: type[BaseException]) -> None:
    """Raise ``exc`` in another thread, ``thread_id``, at its next call or loop jump.

    That may be inside the thread's trace hook (Python code too), and an exception leaving
    a trace hook switches tracing off for the thread: raise a :func:`rearming` class."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


_hooks = threading.local()


def set_rearm(rearm: Callable[[], None] | None) -> None:
    """What puts the calling thread's trace hook back (``None``: nothing to put back)."""
    _hooks.rearm = rearm


def rearming(base: type[BaseException]) -> type[BaseException]:
    """A subclass of ``base``, under ``base``'s name, whose instances call the thread's
    :func:`set_rearm` callback when they are released.

    The exception is released where it was caught, when the handler ends (``except
    BaseException: pass``), or where it stops propagating: after the trace hook it may
    have escaped from was switched off, so the hook put back then stays. (It is made too
    early for that: inside the hook, where it lands.) Pickles as ``base``.
    """

    def __del__(self: BaseException) -> None:
        rearm = getattr(_hooks, "rearm", None)
        if rearm is not None:
            rearm()

    def __reduce__(self: BaseException) -> tuple:
        return base, self.args

    namespace = {"__del__": __del__, "__reduce__": __reduce__, "__module__": base.__module__}
    cls = type(base.__name__, (base,), namespace)
    cls.__qualname__ = base.__qualname__
    return cls


def rearm_hook(hook: Callable[..., Any], is_user: Callable[[str], bool | None]) -> None:
    """Install ``hook`` as the calling thread's trace function again and as the local
    trace of every project frame on its stack that lost it (``is_user(filename)``)."""
    if sys.gettrace() != hook:
        sys.settrace(hook)
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_trace is None and is_user(frame.f_code.co_filename):
            frame.f_trace = hook
        frame = frame.f_back


#: What the gate raises in a run past its limit: a ``LoadTimeout`` that puts the hook back.
Interrupt = rearming(LoadTimeout)


class GatedRun:
    """One stretch of user code (module code of one load) run at the gate, under a limit.

    Use as a context manager around the code, on the thread that runs it::

        with GatedRun(gate, limit_ns, user_file) as run:
            exec(code, namespace)
        run.interrupts   # > 0: it ran past its limit (and swallowed the interrupt)

    Args:
        gate: the frame gate to wait at.
        limit_ns: how long the code may run, not counting time held at the gate.
        user_file: whether a code file is project code (its lines are traced too).
        on_park: called on the parking thread just before it parks for good.
        clock_ns: a monotonic clock.
    """

    def __init__(
        self,
        gate: FrameGate,
        limit_ns: int,
        user_file: Callable[[str], bool],
        *,
        on_park: Callable[[GatedRun], None] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.gate = gate
        self.limit_ns = limit_ns
        self.user_file = user_file
        self.on_park = on_park
        self.clock_ns = clock_ns
        self.thread_id = 0
        self.thread: threading.Thread | None = None
        self.started_ns = 0
        self.held_ns = 0
        self.interrupts = 0
        #: Set (by the loader, from any thread) to park the thread at its next event.
        self.abandoned = False
        self.finished = False
        self._next_interrupt_ns = 0
        self._files: dict[str, bool] = {}
        self._previous_trace: Any = None
        self._saved_interval = sys.getswitchinterval()

    def running_ns(self, now_ns: int | None = None) -> int:
        """How long the code has run so far, not counting time held at the gate."""
        if not self.started_ns:
            return 0
        now = self.clock_ns() if now_ns is None else now_ns
        return now - self.started_ns - self.held_ns

    def checkpoint(self) -> None:
        """Engine code between pieces of user code: wait at the gate, park if abandoned."""
        self.held_ns += self.gate.wait_open()
        if self.abandoned:
            self._park()

    def __enter__(self) -> GatedRun:
        self.thread_id = threading.get_ident()
        self.thread = threading.current_thread()
        self.started_ns = self.clock_ns()
        self._previous_trace = sys.gettrace()
        self._saved_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._saved_interval, LOAD_SWITCH_INTERVAL_S))
        set_rearm(self._rearm)
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc: object) -> None:
        # No pending interrupt is cleared here: an interrupt is sent from a line of
        # project code and lands at the next call or loop jump, at the latest in the
        # engine code that runs the module, before the run ends. (Clearing one with
        # PyThreadState_SetAsyncExc(id, NULL) also stops sys.settrace from ever tracing
        # this thread again, on 3.11.)
        self.finished = True
        set_rearm(None)
        self._drop_profile()
        try:
            sys.settrace(self._previous_trace)
        finally:
            sys.setswitchinterval(self._saved_interval)

    # -- the hook ------------------------------------------------------------------------
    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        # Only events in project code act: engine code (which may hold a lock while it
        # calls library code) is never held at the gate, interrupted or parked.
        if event == "call":
            name = frame.f_code.co_filename
            user = self._files.get(name)
            if user is None:
                user = self._files[name] = self.user_file(name)
            if not user:
                return None
        elif event != "line" or self.finished:
            return self._trace
        if not self.gate.is_open:
            self.held_ns += self.gate.wait_open()
        if self.abandoned:
            self._park()
        now = self.clock_ns()
        if now - self.started_ns - self.held_ns > self.limit_ns and now >= self._next_interrupt_ns:
            if self.interrupts >= MAX_INTERRUPTS:
                self.abandoned = True
                self._park()
            self.interrupts += 1
            self._next_interrupt_ns = now + RETRY_NS
            # The exception leaves the hook, which switches tracing off for this thread
            # and raises it in the project's frame. The hook comes back when the
            # interrupt is released (the handler that swallowed it ended) or, if the
            # code keeps it, at its next call, whichever comes first.
            if sys.getprofile() is None:
                sys.setprofile(self._rearm_at_call)
            raise Interrupt
        return self._trace

    def _rearm(self) -> None:
        """Put the hook back after an interrupt switched it off (see :func:`rearming`);
        an abandoned run's hook parks the thread at its next line."""
        self._drop_profile()
        if not self.finished:
            rearm_hook(self._trace, self._files.get)

    def _drop_profile(self) -> None:
        if sys.getprofile() == self._rearm_at_call:
            sys.setprofile(None)

    def _rearm_at_call(self, frame: FrameType, event: str, arg: Any) -> None:
        """A profile hook, there only while an interrupt is out: any call puts the trace
        hook back (a profile hook survives the trace hook being switched off)."""
        self._rearm()

    def _park(self) -> None:
        """Stop this thread for good: it holds no GIL and no engine lock while it waits."""
        set_rearm(None)
        sys.settrace(None)
        self._drop_profile()
        sys.setswitchinterval(self._saved_interval)
        if self.on_park is not None:
            self.on_park(self)
        threading.Event().wait()

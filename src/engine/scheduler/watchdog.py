"""Stopping runaway code without stopping the engine.

Two mechanisms, one per place code runs:

* **Frame watchdog** (main thread): ``signal.setitimer(ITIMER_REAL)`` raises
  :class:`Overrun` inside a system call that passes the hard limit. The timer is armed
  once per frame, not per call: when it fires, the handler looks at the call running
  *now* and either raises (it is over its limit) or re-arms for the moment it will be.
  So the per-call cost is two attribute writes, and per frame two system calls.
* **Thread watchdog** (any thread, used for module load-time code):
  ``PyThreadState_SetAsyncExc`` raises :class:`LoadTimeout` in the loading thread.

What neither can do: interrupt a long call inside a C extension (a big numpy matmul, a
blocking C library call). Python runs signal handlers and async exceptions only between
bytecodes, so the interrupt lands when the C call returns; the scheduler then sees a call
far over the limit and disables the system. Code that swallows the interrupt
(``except BaseException: pass`` in a loop) is interrupted again ``max_interrupts`` times;
after that the watchdog declares the process *hung* (``on_hung`` is called) and only
something outside the process — the supervisor — can stop it.

The interrupt never fires outside the call it was armed for: the handler checks that a
call is armed and that the innermost frame is not the engine's own bookkeeping (the
scheduler, the world wrapper, esper), so engine state is never left half-updated.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import esper

#: A handler that runs this long after its timer fired was held up by a C call, unless
#: the thread spent that time waiting for a CPU (a loaded machine), which does not count.
C_CALL_LATE_NS = 2_000_000


class _RunQueueWait:
    """Calling it gives the opening thread's total run-queue wait in ns (Linux schedstat:
    time spent runnable but not running), or 0 where there is none. About a microsecond
    per call: the file is opened once, by the thread it describes."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open(
                "/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC
            )
        except OSError:
            self._fd = None

    def __call__(self) -> int:
        if self._fd is None:
            return 0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1])
        except (OSError, ValueError, IndexError):
            return 0

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:  # closed under us (user code ran os.closerange)
                pass
            self._fd = None


def schedstat_run_delay() -> _RunQueueWait:
    """A reader of the calling thread's run-queue wait (see :class:`_RunQueueWait`)."""
    return _RunQueueWait()


def _no_run_delay() -> int:
    return 0


class Overrun(BaseException):  # noqa: N818 - a control-flow signal, like KeyboardInterrupt
    """Raised inside a system call that ran past the hard limit.

    Derives from ``BaseException`` so that ordinary ``except Exception`` in user code does
    not swallow it.
    """

    def __init__(
        self,
        key: str,
        elapsed_ns: int,
        limit_ns: int,
        attempt: int = 1,
        late_ns: int = 0,
        starved_ns: int = 0,
    ) -> None:
        super().__init__(
            f"{key} ran {elapsed_ns / 1e6:.2f} ms, over the hard limit of {limit_ns / 1e6:.2f} ms"
            + (f" (interrupt #{attempt})" if attempt > 1 else "")
            + (
                f"; the interrupt waited {late_ns / 1e6:.1f} ms for a C call to return"
                if late_ns >= C_CALL_LATE_NS
                else ""
            )
            + (
                f"; the process waited {starved_ns / 1e6:.1f} ms for a CPU"
                if starved_ns >= C_CALL_LATE_NS
                else ""
            )
        )
        self.key = key
        self.elapsed_ns = elapsed_ns
        self.limit_ns = limit_ns
        self.attempt = attempt
        #: How long after the timer fired the handler could run, less the time the thread
        #: waited for a CPU meanwhile: large when the call was stuck inside C code, which
        #: Python cannot interrupt.
        self.late_ns = late_ns
        #: How long the thread waited for a CPU since the timer was armed.
        self.starved_ns = starved_ns

    @property
    def in_c_call(self) -> bool:
        return self.late_ns >= C_CALL_LATE_NS


class LoadTimeout(BaseException):  # noqa: N818
    """Raised inside module load-time code that ran past the load limit."""


def _protected_files() -> frozenset[str]:
    """Files whose code the interrupt never lands in: esper, the world wrapper, the
    scheduler, this module, and every cross-process contract (code that writes shared
    memory another process reads must finish its write)."""
    import engine.contracts as contracts
    import engine.scheduler.scheduler as sched
    import engine.world.world as world

    files = {esper.__file__, world.__file__, sched.__file__, __file__}
    files.update(str(p) for p in Path(contracts.__file__).parent.glob("*.py"))
    return frozenset(os.path.realpath(f) for f in files if f)


class FrameWatchdog:
    """The main-thread interrupt for system calls.

    Usage by the scheduler, per frame::

        wd.start_frame()            # arms the timer once
        wd.enter(key, now_ns)       # before each call  (two attribute writes)
        fn(world, dt)
        wd.leave()                  # after each call
        wd.end_frame()              # disarms

    Args:
        hard_limit_ns: longest one call may run.
        retry_ns: how soon to interrupt again a call that swallowed the interrupt.
        max_interrupts: interrupts of one call before the process is declared hung.
        clock_ns: monotonic clock in ns (``perf_counter_ns``; injectable for tests).
        on_hung: called (from the signal handler) when the process is declared hung.
    """

    def __init__(
        self,
        hard_limit_ns: int,
        *,
        retry_ns: int = 2_000_000,
        max_interrupts: int = 3,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
        on_hung: Callable[[str], None] | None = None,
        run_delay_ns: Callable[[], int] | None = None,
    ) -> None:
        self.hard_limit_ns = hard_limit_ns
        self.retry_ns = retry_ns
        self.max_interrupts = max_interrupts
        self.clock_ns = clock_ns
        self.on_hung = on_hung
        # Injected, or this thread's schedstat while installed (opened by install()).
        self._injected_run_delay = run_delay_ns
        self._run_delay_ns: Callable[[], int] = run_delay_ns or _no_run_delay
        self._waited_at_arm_ns = 0
        self.key: str | None = None
        self.call_start_ns = 0
        self.call_limit_ns = hard_limit_ns  # the running call's own hard limit
        self.interrupts = 0
        self.hung = False
        self.fired = 0  # handler invocations, for tests and stats
        self._alarm_at_ns = 0  # when the armed timer is due
        self._installed = False
        self._previous_handler: Any = None
        self._protected = _protected_files()
        self.available = threading.current_thread() is threading.main_thread() and hasattr(
            signal, "setitimer"
        )

    # -- installation -------------------------------------------------------------------
    def install(self) -> bool:
        """Take SIGALRM (main thread only). Returns False where that is impossible."""
        if self._installed:
            return True
        if not (self.available and threading.current_thread() is threading.main_thread()):
            return False
        self._previous_handler = signal.signal(signal.SIGALRM, self._on_alarm)
        if self._injected_run_delay is None:
            self._run_delay_ns = schedstat_run_delay()  # this (the main) thread's
        self._installed = True
        return True

    def uninstall(self) -> None:
        if not self._installed:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous_handler or signal.SIG_DFL)
        if isinstance(self._run_delay_ns, _RunQueueWait):
            self._run_delay_ns.close()
            self._run_delay_ns = _no_run_delay
        self._installed = False

    @property
    def installed(self) -> bool:
        return self._installed

    # -- per frame / per call -------------------------------------------------------------
    def _arm(self, delay_ns: int) -> None:
        self._alarm_at_ns = self.clock_ns() + delay_ns
        self._waited_at_arm_ns = self._run_delay_ns()
        signal.setitimer(signal.ITIMER_REAL, delay_ns / 1e9)

    def start_frame(self) -> None:
        if self._installed:
            self._arm(self.hard_limit_ns)

    def end_frame(self) -> None:
        if self._installed:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def enter(self, key: str, start_ns: int, limit_ns: int | None = None) -> None:
        self.interrupts = 0
        self.call_start_ns = start_ns
        self.call_limit_ns = limit_ns or self.hard_limit_ns
        self.key = key

    def leave(self) -> None:
        self.key = None

    def arm_once(self, key: str, limit_ns: int | None = None) -> None:
        """Arm for a single call outside the frame loop (``on_load`` hooks)."""
        self.enter(key, self.clock_ns(), limit_ns)
        if self._installed:
            self._arm(self.call_limit_ns)

    def disarm_once(self) -> None:
        self.key = None
        if self._installed:
            signal.setitimer(signal.ITIMER_REAL, 0)

    # -- the handler ------------------------------------------------------------------------
    def _on_alarm(self, signum: int, frame: Any) -> None:
        self.fired += 1
        key = self.key
        if key is None:
            return  # between calls: the frame's own code is never interrupted
        now = self.clock_ns()
        # Time spent waiting for a CPU since the timer was armed is not a C call's doing.
        starved = max(0, self._run_delay_ns() - self._waited_at_arm_ns)
        late = max(0, now - self._alarm_at_ns - starved)
        elapsed = now - self.call_start_ns
        due = self.call_limit_ns + self.interrupts * self.retry_ns
        if elapsed < due:
            self._arm(max(due - elapsed, 50_000))
            return
        if frame is not None and os.path.realpath(frame.f_code.co_filename) in self._protected:
            # Inside esper / the world wrapper / the scheduler: let it finish its update.
            self._arm(100_000)
            return
        self.interrupts += 1
        if self.interrupts > self.max_interrupts and not self.hung:
            self.hung = True
            if self.on_hung is not None:
                self.on_hung(key)
        # Keep interrupting a call that swallows it; slower once it is declared hung.
        self._arm(self.retry_ns if not self.hung else 50 * self.retry_ns)
        raise Overrun(key, elapsed, self.call_limit_ns, self.interrupts, late, starved)


class ThreadWatchdog:
    """Raise :class:`LoadTimeout` in a thread that runs past ``limit_s``.

    Example:
        >>> with ThreadWatchdog(2.0):        # doctest: +SKIP
        ...     exec(module_code, namespace)
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._running = False
        self._timer: threading.Timer | None = None
        self.fired = False

    def _fire(self) -> None:
        with self._lock:
            if not self._running:
                return
            self.fired = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread_id), ctypes.py_object(LoadTimeout)
            )

    def __enter__(self) -> ThreadWatchdog:
        self._thread_id = threading.get_ident()
        self._running = True
        self._timer = threading.Timer(self.limit_s, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._running = False
        if self._timer is not None:
            self._timer.cancel()
        if self.fired:
            # Clear an async exception that may still be pending for this thread.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)

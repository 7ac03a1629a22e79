"""Stopping runaway code without stopping the engine.

Three lines of defence for system calls on the main thread, one for load-time code:

* **The timer** (main thread): a one-shot timer whose ``SIGALRM`` handler raises
  :class:`Overrun` inside a system call that passes its hard limit. On Linux it is a POSIX
  timer that signals the main thread itself (``timer_create`` with ``SIGEV_THREAD_ID``):
  ``setitimer``'s signal goes to the process, and the kernel may hand it to another thread
  (numpy's BLAS workers), from where CPython does not wake the main thread's eval loop until
  its next GIL switch, milliseconds late; and user code that calls ``setitimer`` or
  ``alarm`` does not touch it. Elsewhere it is ``setitimer(ITIMER_REAL)``. While a frame
  runs a timer is always pending, due no later than the running call's limit: the frame
  arms it once, and every time it fires the handler arms it again, also when it finds no
  call running (a C call can hold the signal back until after its call has returned: the
  timer must then still be there for the next call). It never waits longer than the
  shortest hard limit, so a call that starts after a long one is still covered. A call's
  *own* time counts against its limit: its CPU time, or its wall time less the time its
  thread waited for a CPU, whichever is more. Per call the scheduler writes four
  attributes; per frame the timer is set twice.
* **The backstop thread**: a daemon thread that looks when the timer is overdue by
  ``grace`` and its handler has not run: user code took ``SIGALRM`` over
  (``signal.signal(SIGALRM, SIG_IGN)``) or blocked it, cancelled the timer (where it is
  ``setitimer``), or the call is inside C code. It samples the call's innermost user frame
  (the line of a C call) and *kicks* the main thread with ``SIGURG`` (ignored by default,
  so a stray kick harms nothing), whose handler is the timer's: it raises at once in
  Python code and interrupts a blocking wait. If user code took ``SIGURG`` too, the thread
  raises :class:`Overrun` through ``PyThreadState_SetAsyncExc`` (pure Python only). The
  main thread puts its handlers back at the start of every frame and after an interrupt.
* **Thread watchdog** (any thread, used for module load-time code):
  ``PyThreadState_SetAsyncExc`` raises :class:`LoadTimeout` in the loading thread.

What none can do: interrupt a long call inside a C extension (a big numpy matmul, a
blocking C library call). Python runs signal handlers and async exceptions only between
bytecodes, so the interrupt lands when the C call returns; the scheduler then sees a call
far over the limit and files it as a ``c-call``, at the line the backstop sampled. Code that
swallows the interrupt (``except BaseException: pass`` in a loop) is interrupted again
``max_interrupts`` times; after that the watchdog declares the process *hung* (``on_hung``
is called: it may only record, it runs in a signal handler or the backstop thread) and only
something outside the process — the supervisor — can stop it.

The handlers never print: they record an :class:`Interruption` (what, where, how late) and
raise; the frame loop reports it after the frame. The interrupt never fires outside the call
it was armed for: the handler checks that a call is armed and that neither the innermost
frame nor its callers up to the scheduler run engine code that must finish (the scheduler,
the world wrapper, esper, the cross-process contracts), so engine state is never left
half-updated. It is not re-entered: a signal that comes while it runs makes it look again.
"""

from __future__ import annotations

import ctypes
import dis
import os
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import esper

#: A handler that runs this long after its timer fired was held up by a C call, unless
#: the thread spent that time waiting for a CPU (a loaded machine), which does not count.
C_CALL_LATE_NS = 2_000_000

#: An essential call (``SystemSpec.essential``: the picture depends on it) found past its
#: hard limit just after a C call returned is not interrupted (the C call's time is spent;
#: abandoning the call would throw its frame away too) but given a fresh hard limit, as
#: long as its own time stays under this many of its hard limits (a loop of C calls is
#: still stopped).
ESSENTIAL_SPARE_FACTOR = 4

#: The backstop thread's kick: ignored by default, so a kick that arrives where the
#: watchdog's handler is not installed does nothing.
KICK_SIGNAL = signal.SIGURG

# The C function: ``signal.getsignal`` converts to an enum and costs ~0.6 µs; this, ~15 ns.
try:
    from _signal import getsignal as _getsignal
except ImportError:  # pragma: no cover - other Pythons
    _getsignal = signal.getsignal


class _RunQueueWait:
    """Calling it gives a thread's total run-queue wait in ns (Linux schedstat: time spent
    runnable but not running), or 0 where there is none. About a microsecond per call: the
    file is opened once; by default the opening thread's.

    Each read also keeps :attr:`slices`: how many times the thread has been put on a CPU
    (schedstat's third field), ``None`` where unknown. Unchanged between two reads, the
    thread never left its CPU between them: it neither blocked nor was preempted, and any
    wall time its CPU clock did not count went to the hypervisor (steal: on a VM a vCPU is
    paused, 8 ms at a time measured here, while the guest thinks its thread is running).
    """

    def __init__(self, path: str = "/proc/thread-self/schedstat") -> None:
        self.slices: int | None = None
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def __call__(self) -> int:
        return self.cpu_and_wait()[1]

    def cpu_and_wait(self) -> tuple[int, int]:
        """The thread's CPU time and run-queue wait, in ns (zeros where unknown)."""
        if self._fd is None:
            return 0, 0
        try:
            fields = os.pread(self._fd, 128, 0).split()
            self.slices = int(fields[2])
            return int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):
            self.slices = None
            return 0, 0

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


def own_time(wall_ns: int, cpu_ns: int, waited_ns: int, left_cpu: bool) -> int:
    """How much of a stretch of the main thread's time was its code's own, given its wall
    time, CPU time and run-queue wait over it, and whether the thread left its CPU during
    it (``True`` where unknown).

    A thread that left its CPU may have blocked (a sleep, a lock, I/O: its code's doing,
    which its CPU clock does not count) or waited for a CPU (the machine's doing): its wall
    time less that wait, or its CPU time, whichever is more. A thread that never left its
    CPU did neither: only its CPU time is its own, the rest was taken by the hypervisor
    (steal) and is nobody's doing here. Counting that as its own filed an essential
    system's ordinary call as a runaway ("ran 8.71 ms, over the hard limit of 8.00 ms")
    on a VM that paused the thread's vCPU for 8 ms.
    """
    if not left_cpu:
        return cpu_ns
    return max(cpu_ns, wall_ns - waited_ns)


@dataclass(frozen=True, slots=True)
class Interruption:
    """What the watchdog saw when it stopped a call: recorded by the handler (or the
    backstop thread), reported by the frame loop.

    Attributes:
        key: the call (``module.system`` or ``module.on_load``).
        elapsed_ns: how long the call had run, less the time its thread waited for a CPU
            (the watchdog counts a call's own time against its limit).
        limit_ns: its hard limit.
        attempt: how many times this call has been interrupted (>1: it swallowed some).
        late_ns: how long after the interrupt was due the handler could run, less the
            time the thread waited for a CPU meanwhile: large when the call was stuck
            inside C code, which Python cannot interrupt.
        starved_ns: how long the thread waited for a CPU since the frame started.
        location: ``file:line`` where the call was interrupted, or for a C call, the line
            that made it (sampled by the backstop thread while it ran), when known.
        by: ``"timer"``, ``"kick"`` (the backstop's signal: the timer's did not come)
            or ``"thread-state"`` (the backstop's async exception: the signals had been
            taken over by user code).
        note: for the backstop, what it found wrong with the timer.
    """

    key: str
    elapsed_ns: int
    limit_ns: int
    attempt: int = 1
    late_ns: int = 0
    starved_ns: int = 0
    location: str | None = None
    by: str = "timer"
    note: str = ""

    @property
    def in_c_call(self) -> bool:
        return self.late_ns >= C_CALL_LATE_NS

    def detail(self) -> str:
        """One line: how long it ran against which limit, and anything unusual."""
        ran, limit = self.elapsed_ns / 1e6, self.limit_ns / 1e6
        text = f"ran {ran:.2f} ms, over the hard limit of {limit:.2f} ms"
        if self.attempt > 1:
            text += f" (interrupt #{self.attempt})"
        if self.in_c_call:
            text += f"; the interrupt waited {self.late_ns / 1e6:.1f} ms for a C call to return"
        if self.starved_ns >= C_CALL_LATE_NS:
            text += f"; the process waited {self.starved_ns / 1e6:.1f} ms for a CPU"
        if self.by != "timer" and not self.in_c_call:
            text += f"; {self.note or 'the timer did not fire'}, the watchdog's backstop stopped it"
        return text


class _AsyncCleared(BaseException):  # noqa: N818 - taken and dropped at once
    """What :meth:`FrameWatchdog.clear_async` has the main thread take instead of a
    pending :class:`Overrun`."""


def _land() -> None:
    """A call: an asynchronous exception lands at its first instruction."""


class Overrun(BaseException):  # noqa: N818 - a control-flow signal, like KeyboardInterrupt
    """Raised inside a system call that ran past the hard limit.

    Derives from ``BaseException`` so that ordinary ``except Exception`` in user code does
    not swallow it. Raised without arguments by ``PyThreadState_SetAsyncExc`` (the
    backstop's last resort); the watchdog's :attr:`FrameWatchdog.last` then says what
    happened.
    """

    def __init__(self, interruption: Interruption | None = None) -> None:
        super().__init__(interruption.detail() if interruption else "interrupted by the watchdog")
        self.interruption = interruption

    @property
    def in_c_call(self) -> bool:
        return self.interruption is not None and self.interruption.in_c_call

    @property
    def starved_ns(self) -> int:
        return self.interruption.starved_ns if self.interruption else 0


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


def _library_dirs() -> tuple[str, ...]:
    """Folders whose code is not the user's: the engine, the standard library and
    installed packages. A location names the innermost frame outside them."""
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.add(str(Path(__file__).resolve().parent.parent))  # the engine package
    out = set()
    for d in dirs:
        out.add(os.path.join(d, ""))
        out.add(os.path.join(os.path.realpath(d), ""))
    return tuple(sorted(out))


def where(frame: FrameType | None, stop: FrameType | None, library: tuple[str, ...]) -> str | None:
    """``file:line`` of the innermost frame of user code between ``frame`` (innermost)
    and ``stop`` (the engine frame that made the call, excluded); the innermost frame if
    all of them are library code; None without a frame."""
    first = None
    f = frame
    while f is not None and f is not stop:
        path = f.f_code.co_filename
        if first is None:
            first = f
        if not path.startswith(library) and not path.startswith("<"):
            return f"{path}:{f.f_lineno}"
        f = f.f_back
    return f"{first.f_code.co_filename}:{first.f_lineno}" if first is not None else None


def loop_line(code: CodeType, line: int, offset: int = -1) -> int | None:
    """The header line (``while``, ``for``) of the innermost loop of ``code`` around
    ``line`` (or the instruction at ``offset``: a traced frame's offset may still be the
    previous instruction's); None outside loops. Where runaway code is best named: a
    sample may catch any line of the loop. A loop is a backward jump: its header is the
    smaller of the jump's line (a ``while``) and its target's (a ``for``)."""
    instructions = list(dis.get_instructions(code))
    line_at = {ins.offset: ins.positions.lineno if ins.positions else None for ins in instructions}
    best: tuple[int, int] | None = None
    for jump in instructions:
        target = jump.argval
        # JUMP_BACKWARD (a `while True`, a `for`), and 3.11's POP_JUMP_BACKWARD_IF_*
        # (the test at the bottom of a `while condition`).
        if "JUMP_BACKWARD" not in jump.opname or not isinstance(target, int):
            continue
        body = {line_at[o] for o in line_at if target <= o <= jump.offset}
        if not (target <= offset <= jump.offset or line in body):
            continue
        header = min((n for n in (line_at[jump.offset], line_at.get(target)) if n), default=None)
        if header is not None and (best is None or jump.offset - target < best[0]):
            best = (jump.offset - target, header)
    return best[1] if best else None


def innermost_loop(
    frame: FrameType | None, is_user: Callable[[str], bool | None]
) -> tuple[str, int] | None:
    """Where the stack from ``frame`` outwards runs in user code (``is_user(filename)``):
    the header of the innermost loop around a user frame's line (runaway code is a loop;
    the loop is what to fix, not the function it happened to be calling), else the
    innermost user frame's line; ``None`` if no frame is the user's."""
    innermost = None
    while frame is not None:
        if is_user(frame.f_code.co_filename):
            loop = loop_line(frame.f_code, frame.f_lineno, frame.f_lasti)
            if loop is not None:
                return frame.f_code.co_filename, loop
            innermost = innermost or (frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return innermost


def loop_line_in_file(path: str, line: int, source: str | None = None) -> int | None:
    """:func:`loop_line` for ``line`` of the Python file at ``path`` (its innermost
    function holding that line); None outside loops, or if the file cannot be read or
    compiled. ``source``: the text that ran, where the caller kept it (the file may have
    been saved since: the fix for the very loop being named), instead of the file now."""
    try:
        if source is None:
            with open(path, "rb") as f:
                code = compile(f.read(), path, "exec", dont_inherit=True)
        else:
            code = compile(source, path, "exec", dont_inherit=True)
    except (OSError, SyntaxError, ValueError):
        return None
    inner, todo = code, [code]
    while todo:  # the deepest code object whose lines include `line`
        c = todo.pop()
        if any(n == line for _, _, n in c.co_lines()):
            inner = c if inner is code or c.co_firstlineno >= inner.co_firstlineno else inner
        todo.extend(k for k in c.co_consts if isinstance(k, CodeType))
    return loop_line(inner, line)


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class _Sigevent(ctypes.Structure):
    """glibc's ``struct sigevent`` (64 bytes), with the ``SIGEV_THREAD_ID`` target."""

    _fields_ = (
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("tid", ctypes.c_int),
        ("_pad", ctypes.c_int * ((64 - ctypes.sizeof(ctypes.c_void_p) - 12) // 4)),
    )


_SIGEV_THREAD_ID = 4


class ThreadTimer:
    """A one-shot timer that sends ``SIGALRM`` to the thread that made it.

    Linux: a POSIX timer on ``CLOCK_MONOTONIC`` aimed at this thread (``timer_create``
    with ``SIGEV_THREAD_ID``, through ctypes, ~1-4 µs to set). Elsewhere, or where that
    is refused: ``setitimer(ITIMER_REAL)``, which signals the process (``directed`` is
    then False). ``set(0)`` cancels.
    """

    def __init__(self) -> None:
        self.directed = False
        self._id = ctypes.c_void_p()
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            create, self._settime, self._delete = (
                libc.timer_create,
                libc.timer_settime,
                libc.timer_delete,
            )
        except (OSError, AttributeError):
            return
        create.argtypes = (ctypes.c_int, ctypes.POINTER(_Sigevent), ctypes.c_void_p)
        self._settime.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        self._delete.argtypes = (ctypes.c_void_p,)
        event = _Sigevent()
        event.sigev_signo = signal.SIGALRM
        event.sigev_notify = _SIGEV_THREAD_ID
        event.tid = threading.get_native_id()
        if create(time.CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(self._id)) != 0:
            return
        self._spec = _Itimerspec()
        self._value = self._spec.it_value
        self._ref = ctypes.byref(self._spec)
        self.directed = True

    def set(self, delay_ns: int) -> None:
        """Fire once, ``delay_ns`` from now (0: cancel)."""
        if self.directed:
            self._value.tv_sec, self._value.tv_nsec = divmod(delay_ns, 1_000_000_000)
            if self._settime(self._id, 0, self._ref, None) == 0:
                return
            self.directed = False  # refused (a forked child has no POSIX timers): fall back
        signal.setitimer(signal.ITIMER_REAL, delay_ns / 1e9)

    def close(self) -> None:
        self.set(0)
        if self.directed:
            self._delete(self._id)
            self.directed = False


class FrameWatchdog:
    """The main-thread interrupt for system calls.

    Usage by the scheduler, per frame::

        wd.start_frame()            # puts the handlers back if needed, arms the timer
        wd.enter(key, now_ns)       # before each call  (attribute writes; inlined there)
        fn(world, dt)
        wd.leave()                  # after each call
        wd.end_frame()              # disarms

    Args:
        hard_limit_ns: longest one call may run (unless ``enter`` says otherwise).
        retry_ns: how soon to interrupt again a call that swallowed the interrupt.
        max_interrupts: interrupts of one call before the process is declared hung.
        clock_ns: monotonic clock in ns (``perf_counter_ns``; injectable for tests).
        cpu_ns: the main thread's CPU clock (``thread_time_ns``; injectable); the
            scheduler stores its reading at each call's start in ``call_cpu_ns``.
        on_hung: called with the call's key when the process is declared hung; it runs in
            the signal handler or the backstop thread, so it may only record.
        run_delay_ns: the main thread's run-queue wait (default: its schedstat).
        backstop_grace_ns: how long past an interrupt's due time the backstop thread
            waits before it steps in (0: no backstop thread).
        backstop_idle_ns: how often the backstop looks while no call is running (None:
            every four shortest hard limits). Each look can stall a busy main thread (see
            :class:`_Backstop`); a C call is sampled at its line only if a look falls in it.
    """

    def __init__(
        self,
        hard_limit_ns: int,
        *,
        retry_ns: int = 2_000_000,
        max_interrupts: int = 3,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
        cpu_ns: Callable[[], int] = time.thread_time_ns,
        on_hung: Callable[[str], None] | None = None,
        run_delay_ns: Callable[[], int] | None = None,
        backstop_grace_ns: int = 1_000_000,
        backstop_idle_ns: int | None = None,
    ) -> None:
        self.hard_limit_ns = hard_limit_ns
        #: The shortest hard limit any call may have: the timer is never armed further
        #: ahead, so a call that starts later is still covered (the scheduler sets it).
        self.min_limit_ns = hard_limit_ns
        self.retry_ns = retry_ns
        self.max_interrupts = max_interrupts
        self.clock_ns = clock_ns
        self.cpu_ns = cpu_ns
        self.on_hung = on_hung
        self.backstop_grace_ns = backstop_grace_ns
        self.backstop_idle_ns = backstop_idle_ns
        # Injected, or this thread's schedstat while installed (opened by install()).
        self._injected_run_delay = run_delay_ns
        self._run_delay_ns: Callable[[], int] = run_delay_ns or _no_run_delay
        self._waited_at_arm_ns = 0
        # When the timer was last armed, the main thread's CPU time and CPU count then.
        self._armed_ns = 0
        self._cpu_at_arm_ns = 0
        self._slices_at_arm: int | None = None
        self.frame_waited_ns = 0  # run-queue wait when the frame started
        # The run-queue wait sampled at the frame's start and at every handler run, and
        # the sample the running call is measured from (the last one before it started).
        self._sample_ns = 0
        self._sample_waited_ns = 0
        self._prev_sample_ns = 0
        self._prev_sample_waited_ns = 0
        # The times the thread was put on a CPU, at each of those samples and at the frame's
        # start (``None``: unknown; see :class:`_RunQueueWait`).
        self._sample_slices: int | None = None
        self._prev_sample_slices: int | None = None
        self.frame_slices: int | None = None
        self._base_call_ns = -1
        self._base_waited_ns = 0
        self._base_slices: int | None = None
        self.key: str | None = None
        self.call_start_ns = 0
        self.call_cpu_ns = 0  # the main thread's CPU time when the call started
        self.call_limit_ns = hard_limit_ns  # the running call's own hard limit
        #: The running call is essential (set with the rest, per call): a C call that
        #: overran is let finish (see :data:`ESSENTIAL_SPARE_FACTOR`).
        self.call_essential = False
        self.interrupts = 0
        self._spared: tuple[int, int] = (-1, 0)  # (call start, ns its limit was moved on)
        self.spared = 0  # essential calls let finish after a C call, for tests and stats
        self._raised_ns = 0  # when the last Overrun of this call was raised
        self.hung = False
        self.fired = 0  # handler invocations, for tests and stats
        self.kicks = 0  # backstop kicks
        self.repairs = 0  # times a handler taken over by user code was put back
        #: The latest interruption (what the frame loop reports).
        self.last: Interruption | None = None
        #: ``(call start, file:line)`` sampled by the backstop while a call was overdue.
        self.stuck_at: tuple[int, str | None] | None = None
        self._alarm_at_ns = 0  # when the armed timer is due
        self._kick_ns = 0  # when the backstop last kicked
        self._in_frame = False
        self._caller: FrameType | None = None  # the engine frame that makes the calls
        self._installed = False
        self._previous: dict[int, Any] = {}
        self._protected = _protected_files()
        self._file_protected: dict[str, bool] = {}  # co_filename -> in self._protected
        self._handling = False
        self._missed = 0  # a signal that came while the handler ran
        self._library = _library_dirs()
        self._handler = self._on_alarm  # one bound method, so `is` finds it installed
        self._backstop: _Backstop | None = None
        self._timer: ThreadTimer | None = None
        self.async_pending = False
        self.available = threading.current_thread() is threading.main_thread() and hasattr(
            signal, "setitimer"
        )

    # -- installation -------------------------------------------------------------------
    def install(self) -> bool:
        """Take SIGALRM and the kick signal, start the backstop thread (main thread only).

        Returns False where that is impossible (not the main thread, no ``setitimer``).
        """
        if self._installed:
            return True
        if not (self.available and threading.current_thread() is threading.main_thread()):
            return False
        for sig in (signal.SIGALRM, KICK_SIGNAL):
            self._previous[sig] = signal.signal(sig, self._handler)
        self._timer = ThreadTimer()
        if self._injected_run_delay is None:
            self._run_delay_ns = schedstat_run_delay()  # this (the main) thread's
        self._installed = True
        if self.backstop_grace_ns > 0:
            self._backstop = _Backstop(self, threading.main_thread().ident or 0)
        return True

    def uninstall(self) -> None:
        """Stop the backstop thread, disarm, and give the signals back."""
        if not self._installed:
            return
        if self._backstop is not None:
            self._backstop.stop()
            self._backstop = None
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._in_frame = False
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if isinstance(self._run_delay_ns, _RunQueueWait):
            self._run_delay_ns.close()
            self._run_delay_ns = _no_run_delay
        self._installed = False

    @property
    def installed(self) -> bool:
        return self._installed

    def repair(self, unblock: bool = False) -> bool:
        """Put the handlers back where user code replaced them (main thread); with
        ``unblock``, also unblock the watchdog's signals in this thread (a system may have
        blocked them). True if a handler had to be put back. Does nothing while not
        installed."""
        if not self._installed:
            return False
        if unblock:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGALRM, KICK_SIGNAL))
        repaired = False
        for sig in (signal.SIGALRM, KICK_SIGNAL):
            if _getsignal(sig) is not self._handler:
                signal.signal(sig, self._handler)
                repaired = True
        if repaired:
            self.repairs += 1
        return repaired

    # -- per frame / per call -------------------------------------------------------------
    def _arm(self, delay_ns: int, waited_ns: int | None = None) -> None:
        now = self.clock_ns()
        self._alarm_at_ns = now + delay_ns
        if waited_ns is None:
            waited_ns = self._run_delay_ns()
        self._sample(now, waited_ns)
        self._waited_at_arm_ns = waited_ns
        self._armed_ns = now
        self._cpu_at_arm_ns = self.cpu_ns()
        self._slices_at_arm = self._sample_slices
        if self._timer is not None:
            self._timer.set(delay_ns)

    def _slices(self) -> int | None:
        """The times the main thread was put on a CPU, as of the run-queue reader's last
        read (``None`` where the reader does not say)."""
        return getattr(self._run_delay_ns, "slices", None)

    def _sample(self, now_ns: int, waited_ns: int) -> None:
        self._prev_sample_ns, self._prev_sample_waited_ns = self._sample_ns, self._sample_waited_ns
        self._prev_sample_slices = self._sample_slices
        self._sample_ns, self._sample_waited_ns = now_ns, waited_ns
        self._sample_slices = self._slices()

    def _base_for_call(self, waited_ns: int) -> tuple[int, int | None]:
        """The run-queue wait and CPU count of the newest sample taken before the running
        call started (one may come between the scheduler writing the call's start and its
        key); with none, ``waited_ns`` and unknown."""
        start = self.call_start_ns
        if self._sample_ns <= start:
            return self._sample_waited_ns, self._sample_slices
        if self._prev_sample_ns <= start:
            return self._prev_sample_waited_ns, self._prev_sample_slices
        return waited_ns, None

    def start_frame(self) -> None:
        """Arm for a frame of calls: handlers put back if user code took them, timer set."""
        if not self._installed:
            self.frame_waited_ns = self._run_delay_ns()
            self._sample(self.clock_ns(), self.frame_waited_ns)
            self.frame_slices = self._sample_slices
            return
        if _getsignal(signal.SIGALRM) is not self._handler or (
            _getsignal(KICK_SIGNAL) is not self._handler
        ):
            self.repair()
        self._caller = sys._getframe(1)
        self._in_frame = True
        self._arm(self.min_limit_ns)
        self.frame_waited_ns = self._waited_at_arm_ns
        self.frame_slices = self._sample_slices

    def end_frame(self) -> None:
        self._in_frame = False
        self._caller = None
        if self._timer is not None:
            self._timer.set(0)
            if self.async_pending:
                self.clear_async()

    def enter(
        self, key: str, start_ns: int, limit_ns: int | None = None, essential: bool = False
    ) -> None:
        self.interrupts = 0
        self.call_start_ns = start_ns
        self.call_cpu_ns = self.cpu_ns()
        self.call_limit_ns = limit_ns or self.hard_limit_ns
        self.call_essential = essential
        self.key = key

    def due_ns(self) -> int:
        """When the running call is next interrupted, in its own time: its hard limit,
        a retry interval more per interrupt it swallowed, and what an essential call was
        spared."""
        start, spared = self._spared
        due = self.call_limit_ns + self.interrupts * self.retry_ns
        return due + spared if start == self.call_start_ns else due

    def leave(self) -> None:
        self.key = None

    def arm_once(self, key: str, limit_ns: int | None = None) -> None:
        """Arm for a single call outside the frame loop (``on_load`` hooks)."""
        self.enter(key, self.clock_ns(), limit_ns)
        if self._installed:
            self.repair()
            self._caller = sys._getframe(1)
            self._in_frame = True
            self._arm(min(self.call_limit_ns, self.min_limit_ns))

    def disarm_once(self) -> None:
        self.key = None
        self.end_frame()

    def stolen_ns(self) -> int:
        """How long the main thread waited for a CPU since the frame started."""
        return max(0, self._run_delay_ns() - self.frame_waited_ns)

    def frame_off_cpu(self) -> tuple[int, bool]:
        """Since the frame started: how long the main thread waited for a CPU, and whether
        it left its CPU at all (``True`` where unknown); for :func:`own_time`."""
        stolen = self.stolen_ns()
        base, now = self.frame_slices, self._slices()
        return stolen, base is None or now is None or now != base

    def own_ns(self, now_ns: int, cpu_ns: int, waited_ns: int, slices: int | None = -1) -> int:
        """How much of the running call's time is its own (:func:`own_time`), given the
        main thread's CPU time, run-queue wait and CPU count now (``slices``; by default
        the reader's last), measured from the last sample before the call started. So a
        loop is measured by its CPU time, a sleep by the clock, and neither is charged for
        the time the machine gave to others (a stale sample can only credit it more, by
        what was lost between that sample and its start)."""
        if self._base_call_ns == self.call_start_ns:
            base, base_slices = self._base_waited_ns, self._base_slices
        else:
            base, base_slices = self._base_for_call(waited_ns)
        if slices == -1:
            slices = self._slices()
        left_cpu = base_slices is None or slices is None or slices != base_slices
        wall = now_ns - self.call_start_ns
        return own_time(wall, cpu_ns - self.call_cpu_ns, max(0, waited_ns - base), left_cpu)

    def location(self, frame: FrameType | None) -> str | None:
        """``file:line`` of the user code at ``frame`` (see :func:`where`)."""
        return where(frame, self._caller, self._library)

    def must_finish(self, frame: FrameType | None) -> bool:
        """True when ``frame``, or one of its callers up to the engine frame that made the
        call, runs engine code that must not be left half-done (esper, the world wrapper,
        the scheduler, this module, the cross-process contracts), so an interrupt there
        waits. A call into library code from there counts too."""
        cache = self._file_protected
        stop = self._caller
        f = frame
        while f is not None and f is not stop:
            name = f.f_code.co_filename
            protected = cache.get(name)
            if protected is None:
                protected = cache[name] = os.path.realpath(name) in self._protected
            if protected:
                return True
            f = f.f_back
        return False

    def clear_async(self) -> None:
        """Drop an async :class:`Overrun` the backstop set that has not landed yet (called
        on the main thread, between calls).

        Not with ``PyThreadState_SetAsyncExc(id, NULL)``: on CPython 3.11 that leaves the
        interpreter's async-exception flag set, after which ``sys.settrace`` hooks stop
        working in every thread (the loader's frame gate among them). The pending exception
        is replaced by one this thread takes at once instead, which clears the flag.
        """
        self.async_pending = False
        ident = threading.main_thread().ident
        if ident is None or threading.get_ident() != ident:
            return
        try:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(_AsyncCleared)
            )
            _land()  # the pending exception is raised at the call's first instruction
            _land()
        except _AsyncCleared:
            pass

    # -- the handler ------------------------------------------------------------------------
    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self._handling:
            # A signal that came while the handler ran (a timer it re-armed, a kick): the
            # running handler looks again when it is done, or its timer would be lost.
            self._missed = signum
            return
        self._handling = True
        try:
            while True:
                self._missed = 0
                self._interrupt(frame, signum == KICK_SIGNAL)
                if not self._missed:
                    break
                signum = self._missed
        finally:
            self._handling = False

    def _interrupt(self, frame: Any, kicked: bool) -> None:
        self.fired += 1
        key = self.key
        if key is None:
            # Between calls. A C call can hold the signal back until after it returned:
            # keep a timer pending for the next call, which may be a runaway.
            if self._in_frame:
                self._arm(self.min_limit_ns)
            return
        if self._base_call_ns != self.call_start_ns:
            # The first look at this call, before this look samples: its baseline is the
            # last sample taken before it started.
            self._base_call_ns = self.call_start_ns
            self._base_waited_ns, self._base_slices = self._base_for_call(
                self._prev_sample_waited_ns
            )
        now = self.clock_ns()
        if self.interrupts and now - self._raised_ns < self.retry_ns:
            # A signal that was already pending when the last interrupt was raised (after a
            # C call both the timer's and the backstop's kick wait for it to return): the
            # same stop, not a repeat. Raised now, it would land in the code unwinding
            # from the first (a ``finally``, a ``with``'s exit) and be taken for a runaway.
            self._arm(max(self.retry_ns - (now - self._raised_ns), 50_000))
            return
        elapsed = now - self.call_start_ns
        due = self.due_ns()
        if elapsed < due:
            self._arm(max(min(due - elapsed, self.min_limit_ns), 50_000))
            return
        # The call's own time counts, not the time the machine gave the CPU to others.
        waited = self._run_delay_ns()
        cpu = self.cpu_ns()
        own = self.own_ns(now, cpu, waited)
        stolen = max(0, waited - self._base_waited_ns)
        if own < due:
            self._arm(max(min(due - own, self.min_limit_ns), 50_000), waited)
            return
        if self.must_finish(frame):
            # Inside esper / the world wrapper / a contract: let it finish its update.
            self._arm(100_000, waited)
            return
        # Time spent waiting for a CPU since the timer was armed is not a C call's doing;
        # lateness counts from the signal that ran this handler (the timer's, or the
        # backstop's kick: when both are pending, the timer's runs first).
        starved = max(0, waited - self._waited_at_arm_ns)
        since = self._kick_ns if kicked else self._alarm_at_ns
        late = max(0, now - since - starved)
        slices = self._slices()
        if late and slices is not None and slices == self._slices_at_arm:
            # The thread never left its CPU since the timer was armed: wall time its CPU
            # clock did not count was the hypervisor's (steal), not a C call holding the
            # signal; what of it must have come after ``since`` is not lateness either.
            paused = (now - self._armed_ns) - (cpu - self._cpu_at_arm_ns)
            late = max(0, late - max(0, paused - (since - self._armed_ns)))
        location = self.location(frame)
        stuck = self.stuck_at
        if late >= C_CALL_LATE_NS and stuck is not None and stuck[0] == self.call_start_ns:
            location = stuck[1] or location  # the line of the C call, sampled while it ran
        if (
            late >= C_CALL_LATE_NS
            and self.call_essential
            and own < ESSENTIAL_SPARE_FACTOR * self.call_limit_ns
        ):
            # The C call has returned and its time is spent: let the call finish its frame
            # (the scheduler reports it as a C call when it returns), with a fresh hard
            # limit for any runaway after it.
            self.stuck_at = (self.call_start_ns, location)
            self._spared = (self.call_start_ns, own - self.interrupts * self.retry_ns)
            self.spared += 1
            self._arm(max(min(self.call_limit_ns, self.min_limit_ns), 50_000), waited)
            return
        self.interrupts += 1
        self.last = Interruption(
            key,
            own,
            self.call_limit_ns,
            self.interrupts,
            late,
            stolen,
            location,
            "kick" if kicked else "timer",
            self._timer_trouble() if kicked else "",
        )
        self._note_hung(key)
        # Keep interrupting a call that swallows it; slower once it is declared hung.
        self._arm(self.retry_ns if not self.hung else 50 * self.retry_ns, waited)
        self._raised_ns = self.clock_ns()
        raise Overrun(self.last)

    def _timer_trouble(self) -> str:
        """Why the timer's signal did not stop the call (the backstop's kick did)."""
        if _getsignal(signal.SIGALRM) is not self._handler:
            return "SIGALRM had been taken over by user code"
        if signal.SIGALRM in signal.pthread_sigmask(signal.SIG_BLOCK, ()):
            return "SIGALRM had been blocked by user code"
        return "its timer had not fired"

    def _note_hung(self, key: str) -> None:
        if self.interrupts > self.max_interrupts and not self.hung:
            self.hung = True
            if self.on_hung is not None:
                self.on_hung(key)


class _Backstop:
    """The watchdog's second line: a thread that stops a call the timer did not.

    Every run of the handler arms the timer again, so a timer overdue by ``grace`` while a
    call runs means its signal did not get handled: user code took ``SIGALRM`` over or
    blocked it (or, where the timer is ``setitimer``, cancelled it), the call is inside C
    code, or the main thread is waiting for a CPU. Then:

    1. the call's innermost user frame is sampled (``stuck_at``: the line of a C call);
    2. if the kick signal is still the watchdog's, the main thread is kicked with it: its
       handler checks the call's own time as the timer's would, and raises at once in
       Python code (a C call keeps it until it returns; a starved call that is not over
       its limit yet is left alone), and is kicked again less and less often;
    3. otherwise :class:`Overrun` is raised through ``PyThreadState_SetAsyncExc``, which
       lands at the next bytecode (pure Python only; a blocking wait keeps it).

    The thread needs the GIL to look: taking it from a busy main thread takes up to a
    switch interval (5 ms), and CPython then makes the main thread wait until this thread
    has run, which on a loaded machine can be a scheduler time slice. So it looks as
    seldom as it can: at a running call's timer due plus ``grace`` (when that call has
    most likely ended or been stopped already, or is what needs looking at), and with no
    call running, every ``backstop_idle_ns`` (four shortest hard limits).
    """

    def __init__(self, wd: FrameWatchdog, main_ident: int) -> None:
        self.wd = wd
        self.main_ident = main_ident
        native = threading.main_thread().native_id
        # The main thread's CPU time and run-queue wait, read from here (the last resort
        # needs them: the watchdog's own readers describe the thread that calls them).
        self._main_stat = _RunQueueWait(f"/proc/self/task/{native}/schedstat")
        self._stop = threading.Event()
        self._kicked: tuple[int, int] | None = None  # (alarm due, attempt) last kicked
        self._kicks_this_call = 0
        self.thread = threading.Thread(target=self._run, name="watchdog-backstop", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5.0)
        self._main_stat.close()

    def _run(self) -> None:
        wait_ns = self.wd.min_limit_ns
        while not self._stop.wait(wait_ns / 1e9):
            wait_ns = self.check()

    def check(self) -> int:
        """One look at the main thread; returns how long until the next."""
        wd = self.wd
        grace = wd.backstop_grace_ns
        idle = wd.backstop_idle_ns or 4 * wd.min_limit_ns
        key = wd.key
        if key is None or not wd._in_frame:
            return idle
        start, alarm = wd.call_start_ns, wd._alarm_at_ns
        now = wd.clock_ns()
        if now < alarm + grace:
            return alarm + grace - now  # the timer is not overdue (yet)
        frame = sys._current_frames().get(self.main_ident)
        if frame is None or wd.key != key or wd.call_start_ns != start:
            return idle
        if wd._handling or wd.must_finish(frame):
            return 100_000  # the handler would defer there too
        wd.stuck_at = (start, wd.location(frame))
        attempt = (alarm, wd.interrupts)
        self._kicks_this_call = self._kicks_this_call + 1 if self._kicked == attempt else 0
        self._kicked = attempt
        if _getsignal(KICK_SIGNAL) is wd._handler:
            wd.kicks += 1
            wd._kick_ns = wd.clock_ns()
            signal.pthread_kill(self.main_ident, KICK_SIGNAL)
            # Inside a C call nothing happens until it returns: look less and less often.
            return wd.retry_ns << min(self._kicks_this_call, 6)
        # User code took the kick signal too: the thread-state exception, the last resort,
        # once the call is over its limit by its own time.
        cpu, waited = self._main_stat.cpu_and_wait()
        if wd.key != key or wd.call_start_ns != start:
            return idle  # the call ended while we read
        due = wd.due_ns()
        own = wd.own_ns(wd.clock_ns(), cpu, waited, self._main_stat.slices)
        if own < due:
            return max(due - own, 100_000)
        wd.interrupts += 1
        wd.last = Interruption(
            key,
            own,
            wd.call_limit_ns,
            wd.interrupts,
            0,
            0,
            wd.stuck_at[1],
            "thread-state",
            "SIGALRM and the backstop's signal had been taken over by user code",
        )
        wd._note_hung(key)
        wd.async_pending = True
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(self.main_ident), ctypes.py_object(Overrun)
        )
        return wd.retry_ns + grace


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

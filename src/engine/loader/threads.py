"""Threads that user code starts: charged to their module, held at the frame gate, and
stopped when they run away.

A module may start a thread (at import, in a hook, in a system). Python threads take turns
holding the GIL, so a thread that keeps computing stretches every system call of every
frame (each waits its turn) until healthy systems are disabled for time they never used;
on a 2-core machine it also takes a CPU from the compositor. :class:`UserThreads` treats
such a thread as the loader treats module code (see :mod:`engine.loader.gate`):

* **Noticed when it starts.** A ``threading.settrace`` hook looks, at each new thread's
  first Python call, at what the thread runs (its target, or its class's ``run``). Code
  from the project's files makes it a *user thread*, charged to the module whose globals
  that code has. Any other thread (the engine's, a library's) is left untraced after that
  one call, or handed to the trace hook that was there before (a coverage tool).
* **Held at the frame gate.** At every line of project code a user thread waits while a
  frame runs, so it never competes with a frame for the GIL; engine and library code it
  calls runs on (it may hold a lock).
* **Watched.** :meth:`UserThreads.watch` (once a frame, on the main thread) compares each
  user thread's *busy* time — CPU time plus time spent waiting for a CPU, so a thread
  starved by a loaded machine still counts — with the wall time since the last look. A
  thread busy for more than ``share`` of a ``window_ns`` runs away: it is returned (with
  the file and line it was at), for the failure policy to decide on, and :meth:`stop`
  raises :class:`ThreadStopped` in it. A thread that swallows it is found again in the
  next window.
* **Stopped with its module.** :meth:`stop_module` stops every thread charged to a module
  version that leaves (replaced, rolled back, unloaded).

What it cannot do: stop a thread blocked inside C code (it uses no CPU: it is never found
running away), or one that swallows :class:`ThreadStopped` in every window; see a thread
started through ``_thread.start_new_thread`` (no ``threading`` hook runs for it).
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

from engine.loader.gate import FrameGate, _raise_in, rearm_hook, rearming, set_rearm
from engine.scheduler.watchdog import innermost_loop

#: How long a user thread is watched before its busy share is judged.
WINDOW_NS = 250_000_000
#: The busy share of a window over which a user thread runs away (half a CPU).
RUNAWAY_SHARE = 0.5


class ThreadStopped(BaseException):  # noqa: N818 - a control-flow signal, like SystemExit
    """Raised inside a user thread the engine stops (it ran away, or its module left)."""


#: What :meth:`UserThreads.stop` raises: a ``ThreadStopped`` that, if it landed in the
#: gate hook (switching it off), puts the hook back when it is released.
_Stop = rearming(ThreadStopped)


def thread_busy_ns(native_id: int) -> int | None:
    """CPU time plus run-queue wait of thread ``native_id`` of this process, in ns (Linux
    schedstat); ``None`` when the thread is gone or the kernel does not say."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as f:
            cpu, wait, *_ = f.read().split()
        return int(cpu) + int(wait)
    except (OSError, ValueError):
        return None


@dataclass
class UserThread:
    """A thread user code started, and what the watch knows of it.

    Attributes:
        thread: the ``threading.Thread``.
        namespace: the globals of the code it runs (its module version's namespace).
        module: that module's name (``fault`` for ``systems.fault``).
        file: the file of the code it was started with (its target or ``run``).
        version: for an adopted thread (see :meth:`UserThreads.adopt`), the module
            version whose code it runs; else ``None`` (the version of ``namespace``).
    """

    thread: threading.Thread
    namespace: dict[str, Any]
    module: str
    file: str
    seen_ns: int = 0  # when the current window started
    busy_at_seen_ns: int = 0  # its busy time then
    stops: int = 0  # ThreadStopped raised in it so far
    version: int | None = None

    @property
    def name(self) -> str:
        return self.thread.name


@dataclass(frozen=True)
class Runaway:
    """A user thread found busy over ``share`` of ``window_ns``, at ``file:line``."""

    thread: UserThread
    busy_ns: int
    window_ns: int
    file: str | None
    line: int | None

    def detail(self) -> str:
        share = self.busy_ns / self.window_ns if self.window_ns else 0.0
        again = f" (stopped {self.thread.stops} times before)" if self.thread.stops else ""
        return (
            f"its thread {self.thread.name!r} kept a CPU {share:.0%} busy for "
            f"{self.window_ns / 1e9:.2f} s{again}"
        )


def _code_of(thread: threading.Thread) -> tuple[CodeType, dict[str, Any]] | None:
    """The code a thread was started with (its target, else its class's ``run``) and
    that code's globals; None when neither is Python code."""
    fn: Any = getattr(thread, "_target", None)
    if fn is None:
        run = type(thread).run
        fn = None if run is threading.Thread.run else run
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)  # a bound method
    code = getattr(fn, "__code__", None)
    if code is None and fn is not None:  # a callable object: its class's __call__
        fn = type(fn).__dict__.get("__call__")
        code = getattr(fn, "__code__", None)
    if code is None:
        return None
    return code, getattr(fn, "__globals__", {})


def _quiet_stop(previous: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A ``threading.excepthook`` that says nothing of a thread the engine stopped (the
    engine reported why) and hands everything else to ``previous``."""

    def hook(args: Any) -> Any:
        if args.exc_type is ThreadStopped:
            return None
        return previous(args)

    hook.quiet_stop = True  # type: ignore[attr-defined]
    return hook


class UserThreads:
    """The threads user code started (see the module doc).

    Args:
        gate: the frame gate user threads wait at.
        user_file: whether a code file is project code.
        window_ns / share: a thread busy more than ``share`` of ``window_ns`` runs away.
        clock_ns: a monotonic clock.
        busy_ns: a thread's busy time by its native id (``None``: gone or unknown).
    """

    def __init__(
        self,
        gate: FrameGate,
        user_file: Callable[[str], bool],
        *,
        window_ns: int = WINDOW_NS,
        share: float = RUNAWAY_SHARE,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        busy_ns: Callable[[int], int | None] = thread_busy_ns,
    ) -> None:
        self.gate = gate
        self.user_file = user_file
        self.window_ns = window_ns
        self.share = share
        self.clock_ns = clock_ns
        self.busy_ns = busy_ns
        #: Live user threads by ident (written by new threads, read by the main thread).
        self.threads: dict[int, UserThread] = {}
        self.stopped = 0  # ThreadStopped raised, in all
        self._files: dict[str, bool] = {}
        self._previous: Any = None
        self._installed = False

    # -- noticing --------------------------------------------------------------------------
    def install(self) -> None:
        """Notice every thread started from now on (``threading.settrace``)."""
        if self._installed:
            return
        self._previous = threading.gettrace()
        threading.settrace(self._on_start)
        if not getattr(threading.excepthook, "quiet_stop", False):  # once per process
            threading.excepthook = _quiet_stop(threading.excepthook)
        self._installed = True

    def uninstall(self) -> None:
        """Threads started from now on are not noticed (those noticed stay gated)."""
        if not self._installed:
            return
        if threading.gettrace() is self._on_start:
            threading.settrace(self._previous)
        self._installed = False

    def _is_user(self, filename: str) -> bool:
        user = self._files.get(filename)
        if user is None:
            user = self._files[filename] = self.user_file(filename)
        return user

    def _on_start(self, frame: FrameType, event: str, arg: Any) -> Any:
        """The first Python call of a new thread (``threading.settrace``'s hook)."""
        thread = threading.current_thread()
        found = _code_of(thread)
        if found is None or not self._is_user(found[0].co_filename):
            previous = self._previous
            sys.settrace(previous)
            return previous(frame, event, arg) if previous is not None else None
        code, namespace = found
        module = str(namespace.get("__name__", "?")).rpartition(".")[2]
        entry = UserThread(thread, namespace, module, code.co_filename, seen_ns=self.clock_ns())
        entry.busy_at_seen_ns = self.busy_ns(threading.get_native_id()) or 0
        self.threads[threading.get_ident()] = entry
        set_rearm(functools.partial(rearm_hook, self._gated, self._files.get))
        sys.settrace(self._gated)
        return self._gated(frame, event, arg)

    def _gated(self, frame: FrameType, event: str, arg: Any) -> Any:
        # Only project code waits: engine and library code it calls may hold a lock.
        if event == "call":
            if not self._is_user(frame.f_code.co_filename):
                return None
        elif event != "line":
            return self._gated
        if not self.gate.is_open:
            self.gate.wait_open()
        return self._gated

    def adopt(
        self, thread: threading.Thread, module: str, version: int | None, file: str
    ) -> UserThread | None:
        """Watch ``thread`` (not started by user code) as a user thread of ``module``
        ``version`` (defined in ``file``) from now on: the loader's thread whose module
        code it gave up on and that may still be running it. None if the thread is gone."""
        ident = thread.ident
        if ident is None or not thread.is_alive():
            return None
        entry = UserThread(thread, {}, module, file, seen_ns=self.clock_ns(), version=version)
        entry.busy_at_seen_ns = self.busy_ns(thread.native_id or 0) or 0
        self.threads[ident] = entry
        return entry

    # -- watching ----------------------------------------------------------------------------
    def watch(self, now_ns: int | None = None) -> list[Runaway]:
        """Look at every live user thread; return those that ran away in the window that
        just ended (they are not stopped here: see :meth:`stop`). Threads that ended are
        forgotten. Main thread, once a frame; cheap while no window has ended."""
        if not self.threads:
            return []
        now = self.clock_ns() if now_ns is None else now_ns
        found = []
        for ident, entry in list(self.threads.items()):
            if not entry.thread.is_alive():
                self.threads.pop(ident, None)
                continue
            window = now - entry.seen_ns
            if window < self.window_ns:
                continue
            busy_now = self.busy_ns(entry.thread.native_id or 0)
            if busy_now is None:
                continue
            busy = busy_now - entry.busy_at_seen_ns
            entry.seen_ns, entry.busy_at_seen_ns = now, busy_now
            if busy > self.share * window:
                file, line = self.where(ident)
                found.append(Runaway(entry, busy, window, file, line))
        return found

    def where(self, ident: int) -> tuple[str | None, int | None]:
        """Where thread ``ident`` runs in project code (see
        :func:`~engine.scheduler.watchdog.innermost_loop`). Else its innermost line;
        ``(None, None)`` if it is gone."""
        frame = sys._current_frames().get(ident)
        found = innermost_loop(frame, self._is_user)
        if found is not None:
            return found
        if frame is None:
            return None, None
        return frame.f_code.co_filename, frame.f_lineno

    # -- stopping ------------------------------------------------------------------------------
    def stop(self, entry: UserThread) -> None:
        """Raise :class:`ThreadStopped` in ``entry``'s thread at its next line of Python
        (at once if it runs Python; when it returns to Python if it is in a C call)."""
        ident = entry.thread.ident
        if ident is None or not entry.thread.is_alive():
            return
        entry.stops += 1
        self.stopped += 1
        _raise_in(ident, _Stop)

    def stop_module(self, namespace: dict[str, Any]) -> int:
        """Stop every live thread charged to the module version with globals
        ``namespace``; returns how many."""
        stopped = 0
        for entry in list(self.threads.values()):
            if entry.namespace is namespace and entry.thread.is_alive():
                self.stop(entry)
                stopped += 1
        return stopped

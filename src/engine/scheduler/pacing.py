"""Time, injected: the clocks the frame loop paces itself with.

The engine never calls ``time.sleep`` directly; it asks a :class:`Clock`. Tests use
:class:`ManualClock`, whose ``sleep_until`` just moves time forward, so pacing logic is
tested without sleeping and without depending on this machine's speed. Work beside the
frame loop (loading, checkpoint clean-up) yields it the CPU with :func:`run_on_surplus`.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

DISPLAY_HZ = 90.0
FRAME_NS = round(1e9 / DISPLAY_HZ)  # 11_111_111 ns: the VR frame budget


class Clock(Protocol):
    """Monotonic nanoseconds, and a way to wait for a moment."""

    def now_ns(self) -> int: ...

    def sleep_until(self, deadline_ns: int) -> None: ...


class MonotonicClock:
    """The real clock: sleep coarsely, then spin the last stretch.

    ``time.sleep`` overshoots by up to a scheduler tick on a loaded machine; spinning the
    final ``spin_ns`` keeps the wake-up within microseconds of the deadline without
    burning a whole core (and without tripping real-time throttling under SCHED_FIFO).
    """

    def __init__(self, spin_ns: int = 1_000_000) -> None:
        self.spin_ns = spin_ns

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until(self, deadline_ns: int) -> None:
        remaining = deadline_ns - time.monotonic_ns()
        if remaining > self.spin_ns:
            time.sleep((remaining - self.spin_ns) / 1e9)
        while time.monotonic_ns() < deadline_ns:
            pass


class ManualClock:
    """A clock that only moves when told to (tests, deterministic replays).

    Example:
        >>> c = ManualClock()
        >>> c.sleep_until(5_000); c.now_ns()
        5000
    """

    def __init__(self, start_ns: int = 0) -> None:
        self.t = start_ns

    def now_ns(self) -> int:
        return self.t

    def advance(self, ns: int) -> None:
        self.t += ns

    def sleep_until(self, deadline_ns: int) -> None:
        self.t = max(self.t, deadline_ns)


class FixedRatePacer:
    """Frame deadlines at a fixed rate that never try to catch up after a stall.

    ``wait()`` sleeps until the next slot and returns its deadline. A frame that ends after
    its next slot has passed skips the missed slots instead of running several frames
    back to back.
    """

    def __init__(self, clock: Clock, rate_hz: float = DISPLAY_HZ) -> None:
        self.clock = clock
        self.period_ns = round(1e9 / rate_hz)
        self.next_ns: int | None = None
        self.skipped = 0

    def wait(self) -> int:
        now = self.clock.now_ns()
        if self.next_ns is None:
            self.next_ns = now
            return now
        self.next_ns += self.period_ns
        if now > self.next_ns:
            behind = (now - self.next_ns) // self.period_ns
            self.skipped += behind
            self.next_ns += behind * self.period_ns
            if now > self.next_ns:  # this slot has begun too: start at the next one
                self.next_ns += self.period_ns
                self.skipped += 1
        self.clock.sleep_until(self.next_ns)
        return self.next_ns


def run_on_surplus(niceness: int = 10) -> None:
    """Lower the calling thread's CPU priority by ``niceness`` (Linux: a thread is a task
    with its own nice value), so that on a busy machine the frame loop gets a core first.
    Never raises (elsewhere it does nothing)."""
    try:
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + niceness))
    except (OSError, AttributeError):
        pass

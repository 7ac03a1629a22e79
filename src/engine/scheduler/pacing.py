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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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


@dataclass(frozen=True)
class ComposeTimes:
    """When the compositor is busy: each display time ``display_ns + k * period_ns``, and
    the ``busy_before_ns`` before it in which it composes (what the game learns from the
    pose block: see :func:`compose_times`)."""

    display_ns: int
    period_ns: int
    busy_before_ns: int

    def quiet_at(self, now_ns: int, need_ns: int, after_ns: int = 300_000) -> int:
        """The first moment from ``now_ns`` at which ``need_ns`` of work ends before the
        compositor's next busy stretch begins; ``after_ns``: how long after a display
        time it counts as busy still (its present and publish)."""
        period = self.period_ns
        if period <= 0 or need_ns + self.busy_before_ns + after_ns >= period:
            return now_ns  # no quiet stretch long enough: do not wait for ever
        t = now_ns
        while True:
            k = -(-(t - self.display_ns) // period)  # the next display at or after t
            display = self.display_ns + k * period
            if t < display - period + after_ns:  # the last one's present is not over
                t = display - period + after_ns
            elif t + need_ns <= display - self.busy_before_ns:
                return t
            else:
                t = display + after_ns


#: Beyond what the pose block shows of it, how long the compositor may still be composing
#: (its compose itself: 0.5-2 ms with a CPU renderer).
COMPOSE_ALLOWANCE_NS = 2_500_000


def compose_times(
    display_ns: int, period_ns: int, published_ns: int, allowance_ns: int = COMPOSE_ALLOWANCE_NS
) -> ComposeTimes:
    """What the pose block says of the compositor's timing: it publishes right after
    composing for the display ``period_ns`` before ``display_ns`` (the next one it
    predicts), so it began composing at least that display minus ``published_ns`` ago,
    plus its compose itself (``allowance_ns``)."""
    slack = max(0, display_ns - period_ns - published_ns)
    return ComposeTimes(display_ns, period_ns, slack + allowance_ns)


class YieldingWriter:
    """A file that writes large buffers in pieces, each between the compositor's frames.

    The checkpoint child copies the world into its file: 200 MB at once took the memory
    bus from the compositor (a CPU renderer's compose ran over its lead by 0.3-0.5 ms and
    frames were missed). Through this writer, no piece starts unless it ends before the
    compositor's next compose begins (``times()``: the latest :class:`ComposeTimes`, or
    None where there is no compositor: then it writes at once). The time a piece takes is
    measured as it goes. Everything else (``seek``, ``truncate``...) is the file's.
    """

    PIECE = 1 << 20

    def __init__(
        self,
        file: Any,
        times: Callable[[], ComposeTimes | None],
        clock: Clock | None = None,
    ) -> None:
        self.file = file
        self.times = times
        self.clock = clock if clock is not None else MonotonicClock(spin_ns=0)
        self.piece_ns = 500_000  # a first guess: 1 MiB at 2 GB/s
        self.waited_ns = 0
        self.pieces = 0

    def __getattr__(self, name: str) -> Any:  # the rest of the file's API: seek, truncate...
        return getattr(self.file, name)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if size <= self.PIECE:
            return self.file.write(view)
        clock = self.clock
        for offset in range(0, size, self.PIECE):
            times = self.times()
            if times is not None:
                now = clock.now_ns()
                start = times.quiet_at(now, self.piece_ns)
                if start > now:
                    clock.sleep_until(start)
                    self.waited_ns += start - now
            t0 = clock.now_ns()
            self.file.write(view[offset : offset + self.PIECE])
            # The slowest recent piece counts (a piece preempted once should not shrink it).
            self.piece_ns = max((self.piece_ns * 7) // 8, clock.now_ns() - t0)
            self.pieces += 1
        return size

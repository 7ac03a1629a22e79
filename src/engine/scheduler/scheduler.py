"""The frame loop's inner part: run every enabled system once, timed, under the watchdog.

Each system is called through a :class:`SystemHandle`. A reload replaces the handle's
``fn`` (never the handle), so the loop always calls the active version and statistics
survive swaps. The loop itself is a plain ``for`` over a list rebuilt only when the set of
systems changes, because it runs 90 times a second.

The scheduler *sees* faults and carries out what the failure policy
(:mod:`engine.policy`) decides; it decides nothing itself. What it reports:

* a call the watchdog interrupted at its hard limit (``hard-limit``), or that came back
  over it from a long C call (``c-call``), with the file and line;
* a call that raised (``exception``; ``memory`` for a ``MemoryError``), with the line;
* a system that made frames late (``budget``): only when the frame went over the frame
  budget, and only the systems that put it there (see :meth:`Scheduler._late_frame`),
  charged with the time they used themselves, not the time the machine took the CPU
  away from them.

The policy's answer (strike, roll back, disable, disable and retry after a cool-down) is
carried out here, except rolling a module back to its last good version: that is the
loader's job, asked through :class:`Versions` (the engine wires it up). Each decision's
one-line message goes to ``report``.

esper rebuilds its query caches lazily, inside whichever query runs first after a
structural change. The scheduler brings them up to date itself, between systems (the
world catches them up with its own changes, :meth:`~engine.world.world.World.update_queries`;
after a change made around it, they are rebuilt), and charges that time to its own line
(``esper cache``) instead of to the next system. At the frame boundary the world lays
long-lived results out again, a share per frame (:mod:`engine.world.layout`), on the same
line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import esper

from engine.contracts.handoff import Phase
from engine.policy import Action, Decision, FailurePolicy, Fault, FaultKind, Settings
from engine.scheduler.pacing import FRAME_NS
from engine.scheduler.spec import SystemSpec
from engine.scheduler.stats import FrameStats, SystemStats
from engine.scheduler.watchdog import FrameWatchdog, Overrun, own_time
from engine.world.heap import FloatCycle

#: A call this long keeps its floats from one call to the next (:class:`FloatCycle`, about a
#: microsecond a call); a shorter one visits too few for where they lie to matter.
FLOAT_CYCLE_NS = 100_000

CACHE_LINE = "esper cache"
_NEVER = 1 << 62
#: How often an essential system's slowness (kept on, not disabled) is said at most.
SLOW_NOTE_EVERY_NS = 5_000_000_000


@dataclass
class SchedulePolicy:
    """Every knob of the scheduler, in one place (what each fault costs is
    :mod:`engine.policy`'s).

    Attributes:
        frame_ns: the frame budget (1/90 s).
        hard_limit_ns: longest one call may run before it is interrupted (default: the
            whole frame).
        over_budget_frames: frames in a row a system may make late before it is disabled
            (and retried after a cool-down).
        strikes: consecutive raising frames that disable a system past its probation.
        probation_frames: frames a new (or re-enabled) system runs on probation.
        max_dt_s: ``dt`` handed to systems is clamped to this after a stall.
        watchdog_retry_ms: how soon a swallowed interrupt is repeated.
        watchdog_max_interrupts: interrupts of one call before the process is "hung".
    """

    frame_ns: int = FRAME_NS
    hard_limit_ns: int | None = None
    over_budget_frames: int = 3
    strikes: int = 3
    probation_frames: int = 90
    max_dt_s: float = 0.1
    watchdog_retry_ms: float = 2.0
    watchdog_max_interrupts: int = 3

    @property
    def hard_ns(self) -> int:
        return self.hard_limit_ns if self.hard_limit_ns is not None else self.frame_ns


class SystemState(StrEnum):
    ENABLED = "enabled"
    PROBATION = "probation"
    DISABLED = "disabled"


@dataclass
class DisableReason:
    """Why a system was disabled, kept until it is enabled again.

    ``limit`` is the fault kind (``hard-limit``, ``c-call``, ``budget``, ``exception``,
    ``memory``), or ``rolled-back``: its version failed on probation and there was no good
    version to fall back to (``fault`` then says how it failed), or ``rolling-back``: its
    version failed on probation and the last good one is being loaded to replace it (the
    swap brings the module's systems back, on probation). ``location`` is the
    ``file:line`` of the fault, ``message`` the failure policy's line. ``retry_at_ns`` (on
    the scheduler's clock) is when it comes back by itself, or None (it stays off until a
    new version or ``engine enable``).
    """

    limit: str
    detail: str
    over_ms: float
    frame: int
    time: float
    version: int | None
    location: str | None = None
    message: str = ""
    retry_at_ns: int | None = None
    fault: str | None = None

    def to_json(self, now_ns: int | None = None) -> dict[str, Any]:
        """The reason as JSON; ``retry_in_s`` counts from ``now_ns`` (None: no retry)."""
        retry_in = None
        if self.retry_at_ns is not None and now_ns is not None:
            retry_in = round(max(0, self.retry_at_ns - now_ns) / 1e9, 3)
        return {
            "limit": self.limit,
            "fault": self.fault or self.limit,
            "detail": self.detail,
            "over_ms": round(self.over_ms, 3),
            "frame": self.frame,
            "time": self.time,
            "version": self.version,
            "location": self.location,
            "message": self.message,
            "retry_in_s": retry_in,
        }


@dataclass(eq=False)
class SystemHandle:
    """The stable name the scheduler calls a system by, whatever version is active."""

    key: str
    module: str
    name: str
    fn: Callable[[Any, float], None]
    spec: SystemSpec
    version: int | None
    stats: SystemStats
    index: int = 0  # definition order within the module
    state: SystemState = SystemState.PROBATION
    probation_until: int = 0  # frame at which PROBATION becomes ENABLED
    strikes: int = 0
    reason: DisableReason | None = None
    last_error: str = ""
    budget_ns: int = FRAME_NS
    hard_ns: int = FRAME_NS  # this system's hard limit (the policy's unless it sets one)
    max_over_budget: int = 3  # frames in a row it may make late
    late_streak: int = 0  # frames in a row it made late
    late_frames: int = 0  # frames it made late, ever
    retries: int = 0  # times it came back by itself after a cool-down
    after: tuple[str, ...] = field(default=())
    running_id: int = 0  # names this version in the heartbeat (RunningNow.name_handles)
    slow_noted_ns: int = -(1 << 62)  # an essential system's slowness, last said then
    slow_unsaid: int = 0  # ... and how often since without a word
    floats: FloatCycle | None = None  # for a system that runs long enough (FLOAT_CYCLE_NS)

    @property
    def enabled(self) -> bool:
        return self.state is not SystemState.DISABLED


@dataclass(eq=False)
class SystemFault:
    """What one system did wrong in a frame, and what the policy made of it.

    ``fault`` and ``decision`` are filled in after the frame, when the policy is asked.
    """

    handle: SystemHandle
    kind: FaultKind
    detail: str
    elapsed_ns: int
    over_ns: int = 0
    location: str | None = None
    error: BaseException | None = None
    fault: Fault | None = None
    decision: Decision | None = None

    @property
    def message(self) -> str:
        return self.decision.message if self.decision else self.detail


class Versions(Protocol):
    """What the scheduler asks about a system module's versions. The engine answers from
    the loader; without one (a bare scheduler) no version is on probation and none can be
    rolled back to."""

    def on_probation(self, module: str) -> bool:
        """The module's active version is new and has not passed its probation."""
        ...

    def has_good_version(self, module: str) -> bool:
        """The module has a last good version other than the active one."""
        ...

    def roll_back(self, module: str, why: str) -> bool:
        """Mark the active version bad and bring back the last good one (at the next
        frame boundary). False when there is none to bring back."""
        ...


class NoVersions:
    """:class:`Versions` for a scheduler without a loader."""

    def on_probation(self, module: str) -> bool:
        return False

    def has_good_version(self, module: str) -> bool:
        return False

    def roll_back(self, module: str, why: str) -> bool:
        return False


class Scheduler:
    """Runs systems in order each frame, times each, and carries out the failure policy.

    Args:
        policy: the scheduler's knobs.
        clock_ns: wall clock for call times, the watchdog and cool-downs (injectable).
        cpu_ns: this thread's CPU clock (``time.thread_time_ns``; injectable).
        on_hung: called (from a signal handler: record only) when a call swallowed
            ``watchdog_max_interrupts`` interrupts.
        report: where each decision's one-line message goes.
        failure_policy: decides what each fault costs (default: one made from ``policy``).
        versions: the loader's answers (see :class:`Versions`).
        run_delay_ns: the main thread's run-queue wait (default: its schedstat).
    """

    def __init__(
        self,
        policy: SchedulePolicy | None = None,
        *,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
        cpu_ns: Callable[[], int] = time.thread_time_ns,
        on_hung: Callable[[str], None] | None = None,
        report: Callable[[str], None] = lambda message: None,
        failure_policy: FailurePolicy | None = None,
        versions: Versions | None = None,
        run_delay_ns: Callable[[], int] | None = None,
    ) -> None:
        self.policy = policy or SchedulePolicy()
        self.clock_ns = clock_ns
        self.cpu_ns = cpu_ns
        self.report = report
        self.failure_policy = failure_policy or FailurePolicy(Settings(strikes=self.policy.strikes))
        self.versions: Versions = versions or NoVersions()
        #: Locations under this folder are shown relative to it (the engine sets it).
        self.root: str | None = None
        self.handles: dict[str, SystemHandle] = {}
        self.order: list[SystemHandle] = []
        self.module_order: list[str] = []
        self.watchdog = FrameWatchdog(
            self.policy.hard_ns,
            retry_ns=round(self.policy.watchdog_retry_ms * 1e6),
            max_interrupts=self.policy.watchdog_max_interrupts,
            clock_ns=clock_ns,
            cpu_ns=cpu_ns,
            on_hung=on_hung,
            run_delay_ns=run_delay_ns,
        )
        self.cache_stats = SystemStats(CACHE_LINE, self.policy.frame_ns)
        self.frame_stats = FrameStats(self.policy.frame_ns)
        self.frame = 0
        #: One word the loop stores each system's ``running_id`` into: what runs now.
        self.running_now = memoryview(bytearray(8)).cast("Q")
        self._next_retry_ns = _NEVER  # earliest cool-down end among disabled systems
        self._next_promotion = _NEVER  # earliest probation end among systems
        self._late: list[SystemHandle] = []  # systems with a late streak going

    # -- the set of systems ----------------------------------------------------------------
    def set_module_systems(
        self,
        module: str,
        version: int | None,
        systems: list[tuple[SystemSpec, Callable[[Any, float], None]]],
        frame: int,
        proven: bool = False,
    ) -> None:
        """Make ``systems`` the active systems of ``module`` (a new version goes on
        probation; a ``proven`` one, which passed its probation before, is enabled).

        Handles of systems that keep their name are reused (statistics survive); a system
        that disappeared is removed. A system disabled for time is retried at once, and
        its next cool-down starts short again.
        """
        keep: dict[str, SystemHandle] = {}
        for i, (spec, fn) in enumerate(systems):
            key = f"{module}.{spec.name}"
            h = self.handles.get(key)
            if h is None:
                h = SystemHandle(key, module, spec.name, fn, spec, version, SystemStats(key, 0))
            h.fn, h.spec, h.version, h.index = fn, spec, version, i
            self._on_probation(h, frame)
            if proven:
                h.state = SystemState.ENABLED
            h.last_error = ""
            self.failure_policy.forget(key)
            keep[key] = h
        for key in [k for k, h in self.handles.items() if h.module == module]:
            if key not in keep:
                del self.handles[key]
        self.handles.update(keep)
        if module not in self.module_order:
            self.module_order.append(module)
        self._rebuild()

    def remove_module(self, module: str) -> None:
        for key in [k for k, h in self.handles.items() if h.module == module]:
            del self.handles[key]
        if module in self.module_order:
            self.module_order.remove(module)
        self._rebuild()

    def _rebuild(self) -> None:
        """Recompute the call order, the fair-share budgets and the watchdog's shortest
        limit."""
        handles = list(self.handles.values())
        rank = {m: i for i, m in enumerate(self.module_order)}
        handles.sort(key=lambda h: (h.spec.order, rank.get(h.module, 1 << 30), h.index))
        by_name: dict[str, SystemHandle] = {h.key: h for h in handles}
        # Resolve "after" names: "name" (same module) or "module.name".
        deps: dict[str, set[str]] = {}
        for h in handles:
            d: set[str] = set()
            for ref in h.spec.after:
                target = ref if ref in by_name else f"{h.module}.{ref}"
                if target in by_name and target != h.key:
                    d.add(target)
            deps[h.key] = d
            h.after = tuple(sorted(d))
        # Stable topological order: repeatedly take the first handle whose deps are done
        # (on a cycle, the first remaining one, so the sorted order decides the rest).
        ordered: list[SystemHandle] = []
        done: set[str] = set()
        pending = handles[:]
        while pending:
            ready = next((h for h in pending if deps[h.key] <= done), pending[0])
            pending.remove(ready)
            ordered.append(ready)
            done.add(ready.key)
        self.order = ordered
        frame_ns = self.policy.frame_ns
        explicit = [h for h in ordered if h.spec.budget_ms is not None]
        fair = [h for h in ordered if h.spec.budget_ms is None]
        spare = frame_ns - sum(round(h.spec.budget_ms * 1e6) for h in explicit)  # type: ignore[operator]
        share = max(spare, frame_ns // 10) // max(len(fair), 1)
        for h in ordered:
            h.budget_ns = round(h.spec.budget_ms * 1e6) if h.spec.budget_ms else share
            h.stats.budget_ns = h.budget_ns
            limit = h.spec.hard_limit_ms
            h.hard_ns = round(limit * 1e6) if limit else self.policy.hard_ns
            k = h.spec.over_budget_frames
            h.max_over_budget = k if k is not None else self.policy.over_budget_frames
        self.watchdog.min_limit_ns = min([h.hard_ns for h in ordered] + [self.policy.hard_ns])
        self._late = [h for h in self._late if h.key in self.handles]
        self._next_retry_ns = min(
            [h.reason.retry_at_ns for h in ordered if h.reason and h.reason.retry_at_ns] + [_NEVER]
        )

    # -- enabling and disabling --------------------------------------------------------------
    def _on_probation(self, h: SystemHandle, frame: int) -> None:
        h.state = SystemState.PROBATION
        h.probation_until = frame + self.policy.probation_frames
        h.strikes = 0
        h.late_streak = 0
        h.reason = None
        self._next_promotion = min(self._next_promotion, h.probation_until)

    def disable(
        self,
        handle: SystemHandle,
        limit: str,
        detail: str,
        over_ms: float = 0.0,
        *,
        location: str | None = None,
        message: str = "",
        retry_at_ns: int | None = None,
        fault: str | None = None,
    ) -> None:
        """Stop calling ``handle``, keeping why; with ``retry_at_ns`` it comes back (on
        probation) by itself at that moment of the scheduler's clock."""
        handle.state = SystemState.DISABLED
        handle.late_streak = 0
        handle.reason = DisableReason(
            limit,
            detail,
            over_ms,
            self.frame,
            time.time(),
            handle.version,
            location,
            message or detail,
            retry_at_ns,
            fault,
        )
        if retry_at_ns is not None:
            self._next_retry_ns = min(self._next_retry_ns, retry_at_ns)

    def enable(self, key: str) -> SystemHandle:
        """Re-enable a system by hand (on probation); raises ``KeyError`` if unknown."""
        h = self.handles[key]
        self._on_probation(h, self.frame)
        return h

    def find(self, name: str) -> SystemHandle:
        """A handle by ``module.name`` or by a bare name if unique; ``KeyError`` otherwise."""
        if name in self.handles:
            return self.handles[name]
        matches = [h for h in self.handles.values() if h.name == name]
        if len(matches) == 1:
            return matches[0]
        raise KeyError(f"no single system named {name!r} (have: {sorted(self.handles)})")

    def _come_back(self, now_ns: int) -> None:
        """Bring back (on probation) every system whose cool-down has passed."""
        self._next_retry_ns = _NEVER
        for h in self.order:
            r = h.reason
            if h.state is not SystemState.DISABLED or r is None or r.retry_at_ns is None:
                continue
            if r.retry_at_ns <= now_ns:
                self._on_probation(h, self.frame)
                h.retries += 1
                self.report(
                    f"engine: {h.key} v{h.version} is back on probation after its cool-down "
                    f"(it was disabled at frame {r.frame}: {r.limit})"
                )
            else:
                self._next_retry_ns = min(self._next_retry_ns, r.retry_at_ns)

    def _promote(self, frame: int) -> None:
        """Systems whose probation passed are simply enabled."""
        self._next_promotion = _NEVER
        for h in self.order:
            if h.state is SystemState.PROBATION:
                if frame >= h.probation_until:
                    h.state = SystemState.ENABLED
                else:
                    self._next_promotion = min(self._next_promotion, h.probation_until)

    # -- the frame --------------------------------------------------------------------------
    def run_frame(self, world: Any, dt: float, frame: int) -> list[SystemFault]:
        """Run every enabled system once. Returns the frame's faults, with the policy's
        decisions already carried out (and reported)."""
        self.frame = frame
        clock, cpu = self.clock_ns, self.cpu_ns
        frame_start = clock()
        if frame_start >= self._next_retry_ns:
            self._come_back(frame_start)
        if frame >= self._next_promotion:
            self._promote(frame)
        world.activate()
        wd = self.watchdog
        faults: list[SystemFault] = []
        over: list[tuple[SystemHandle, int, int]] = []  # over their budget: (h, wall, cpu)
        wd.start_frame()
        cpu_mark = cpu()
        for h in self.order:
            if h.state is SystemState.DISABLED:
                continue
            if esper._cache_dirty:
                self._rebuild_query_cache(world)
                cpu_mark = cpu()
            if wd.interrupts:
                wd.interrupts = 0
            floats = h.floats
            if floats is not None:  # before the call is armed: the watchdog never stops it
                floats.before()
            t0 = clock()
            wd.call_start_ns = t0
            wd.call_cpu_ns = cpu_mark
            wd.call_limit_ns = h.hard_ns
            wd.call_essential = h.spec.essential
            wd.key = h.key
            self.running_now[0] = h.running_id
            try:
                h.fn(world, dt)
            except BaseException as exc:  # noqa: BLE001 - nothing a system raises may end the frame
                wd.key = None
                elapsed = clock() - t0
                if floats is not None:
                    floats.after()
                h.stats.record(elapsed)
                faults.append(self._raised(h, exc, elapsed))
                cpu_mark = cpu()
                continue
            wd.key = None
            elapsed = clock() - t0
            if floats is not None:
                floats.after()
            elif elapsed > FLOAT_CYCLE_NS:
                h.floats = FloatCycle()  # from its next call on (see engine.world.heap)
            cpu_now = cpu()
            if h.strikes:
                h.strikes = 0
            if h.stats.record(elapsed):
                if elapsed > h.hard_ns and self._own(elapsed, cpu_now - cpu_mark) > h.hard_ns:
                    faults.append(self._returned_late(h, elapsed, t0))  # not also as late
                else:
                    over.append((h, elapsed, cpu_now - cpu_mark))
            cpu_mark = cpu_now
        wd.end_frame()
        self.running_now[0] = Phase.FRAME
        world.clear_dead_entities()
        if esper._cache_dirty:
            self._rebuild_query_cache(world)
        t0 = clock()
        if world.lay_out_queries():
            self.cache_stats.record(clock() - t0)
        frame_ns = clock() - frame_start
        if self.frame_stats.record(frame_ns) and over:
            faults.extend(self._late_frame(frame_ns, over))
        elif self._late:
            for h in self._late:
                h.late_streak = 0
            self._late.clear()
        if faults:
            self._carry_out(faults)
        return faults

    # -- what went wrong -----------------------------------------------------------------------
    def _own(self, wall_ns: int, cpu_ns: int) -> int:
        """A call's own time, at least: its CPU time, or its wall time less all the time the
        main thread waited for a CPU in this frame, whichever is more; only its CPU time
        where the thread never left its CPU in this frame (see :func:`own_time`)."""
        waited, left_cpu = self.watchdog.frame_off_cpu()
        return own_time(wall_ns, cpu_ns, waited, left_cpu)

    def _raised(self, h: SystemHandle, exc: BaseException, elapsed: int) -> SystemFault:
        wd = self.watchdog
        if isinstance(exc, Overrun):
            if wd.async_pending:
                wd.clear_async()
            wd.repair(unblock=True)  # user code may have taken the signals over
            i = exc.interruption or wd.last
            if i is None:  # pragma: no cover - an Overrun the watchdog did not raise
                return SystemFault(h, FaultKind.HARD_LIMIT, str(exc), elapsed, error=exc)
            kind = FaultKind.C_CALL if i.in_c_call else FaultKind.HARD_LIMIT
            return SystemFault(
                h, kind, i.detail(), elapsed, elapsed - h.hard_ns, self._show(i.location), exc
            )
        location = self._show(_raise_site(exc, wd))
        if isinstance(exc, MemoryError):
            return SystemFault(h, FaultKind.MEMORY, _describe(exc), elapsed, 0, location, exc)
        h.strikes += 1
        return SystemFault(h, FaultKind.EXCEPTION, _describe(exc), elapsed, 0, location, exc)

    def _returned_late(self, h: SystemHandle, elapsed: int, t0: int) -> SystemFault:
        """A call that came back over its hard limit without the watchdog stopping it."""
        wd = self.watchdog
        stuck = wd.stuck_at
        location = stuck[1] if stuck is not None and stuck[0] == t0 else None
        if wd.interrupts:  # it caught every Overrun and returned late anyway
            kind = FaultKind.HARD_LIMIT
            why = (
                f"swallowed {wd.interrupts} interrupts and returned after {elapsed / 1e6:.2f} ms "
                f"(hard limit {h.hard_ns / 1e6:.2f} ms)"
            )
            if wd.last is not None and wd.last.key == h.key:
                location = wd.last.location
        else:
            kind = FaultKind.C_CALL
            why = (
                f"ran {elapsed / 1e6:.2f} ms, over the hard limit of {h.hard_ns / 1e6:.2f} ms "
                "(long C-level work the watchdog cannot interrupt)"
            )
        code = getattr(h.fn, "__code__", None)
        if location is None and code is not None:  # the system, where in it unknown
            location = f"{code.co_filename}:{code.co_firstlineno}"
            why += f"; somewhere in {code.co_name}, the line was not caught"
        return SystemFault(h, kind, why, elapsed, elapsed - h.hard_ns, self._show(location))

    def _late_frame(
        self, frame_ns: int, over: list[tuple[SystemHandle, int, int]]
    ) -> list[SystemFault]:
        """Blame a late frame on the systems that made it late.

        Each system is charged the time it used itself: its CPU time, or its wall time
        less the time the main thread waited for a CPU during the frame, whichever is
        more (a sleep counts; preemption does not); only its CPU time where the thread
        never left its CPU in the frame (a VM's steal does not count either; see
        :func:`~engine.scheduler.watchdog.own_time`). Its *excess* is what it was charged
        over its budget (its own, or its fair share). The systems with the largest
        excess are blamed until their excess covers the frame's overrun: those put the
        frame over; a system within its budget, or in a frame that fits, never is. A
        system blamed ``max_over_budget`` frames in a row is reported as ``budget``.
        """
        overrun = frame_ns - self.frame_stats.budget_ns
        stolen, left_cpu = self.watchdog.frame_off_cpu()
        charged = []
        for h, wall, cpu in over:
            used = own_time(wall, cpu, stolen, left_cpu)
            if used > h.budget_ns:
                charged.append((used - h.budget_ns, used, h))
        charged.sort(key=lambda c: c[0], reverse=True)
        blamed: dict[str, tuple[int, SystemHandle]] = {}
        covered = 0
        for excess, used, h in charged:
            if covered >= overrun:
                break
            blamed[h.key] = (used, h)
            covered += excess
        for h in self._late:
            if h.key not in blamed:
                h.late_streak = 0
        self._late = [h for _, h in blamed.values()]
        faults = []
        for used, h in blamed.values():
            h.late_streak += 1
            h.late_frames += 1
            if h.late_streak >= h.max_over_budget:
                detail = (
                    f"used {used / 1e6:.2f} ms of its {h.budget_ns / 1e6:.2f} ms budget in a "
                    f"{frame_ns / 1e6:.2f} ms frame ({overrun / 1e6:.2f} ms late), "
                    f"{h.late_streak} frames in a row"
                )
                code = getattr(h.fn, "__code__", None)
                where = f"{code.co_filename}:{code.co_firstlineno}" if code else None
                faults.append(
                    SystemFault(
                        h, FaultKind.BUDGET, detail, used, used - h.budget_ns, self._show(where)
                    )
                )
        return faults

    # -- what follows --------------------------------------------------------------------------
    def _carry_out(self, faults: list[SystemFault]) -> None:
        """Ask the failure policy about each fault and do what it says."""
        now = self.clock_ns()
        rolled: set[str] = set()
        for f in faults:
            h = f.handle
            f.fault = Fault(
                f.kind,
                f.detail,
                module=h.module,
                version=h.version,
                system=h.key,
                location=f.location,
                on_probation=self.versions.on_probation(h.module),
                strikes=h.strikes,
                has_good_version=self.versions.has_good_version(h.module),
                essential=h.spec.essential,
            )
            d = f.decision = self.failure_policy.decide(f.fault, now)
            said = d.message
            over_ms = max(f.over_ns, 0) / 1e6
            if d.action is Action.STRIKE and f.kind in (FaultKind.C_CALL, FaultKind.BUDGET):
                # An essential system, slow: it stays on. Said at most every few seconds.
                h.late_streak = 0
                if now - h.slow_noted_ns < SLOW_NOTE_EVERY_NS:
                    h.slow_unsaid += 1
                    continue
                if h.slow_unsaid:
                    said = f"{said} ({h.slow_unsaid} more like it since the last note)"
                h.slow_noted_ns, h.slow_unsaid = now, 0
            elif d.action is Action.STRIKE:
                h.last_error = f.detail
            elif d.action is Action.DISABLE:
                self.disable(
                    h, str(f.kind), f.detail, over_ms, location=f.location, message=d.message
                )
            elif d.action is Action.DISABLE_AND_RETRY:
                self.disable(
                    h,
                    str(f.kind),
                    f.detail,
                    over_ms,
                    location=f.location,
                    message=d.message,
                    retry_at_ns=d.retry_at_ns,
                )
            elif d.action is Action.ROLL_BACK and h.module not in rolled:
                rolled.add(h.module)
                # With a good version to go back to, the module's systems pause until it
                # is swapped in (the loader prepares it off the frame: a failing version
                # must not run, and fail, meanwhile); without one they stay off until
                # the module is edited.
                limit = "rolling-back" if self.versions.roll_back(h.module, d.message) else None
                for other in self.order:
                    if other.module == h.module:
                        self.disable(
                            other,
                            limit or "rolled-back",
                            f.detail if other is h else f"{h.key}: {f.detail}",
                            over_ms if other is h else 0.0,
                            location=f.location,
                            message=d.message,
                            fault=str(f.kind),
                        )
            self.report(f"engine: {said}")

    def _show(self, location: str | None) -> str | None:
        """A location relative to the project, where it is inside it."""
        if location is None or self.root is None:
            return location
        root = os.path.join(self.root, "")
        return location[len(root) :] if location.startswith(root) else location

    def _rebuild_query_cache(self, world: Any) -> None:
        """Bring esper's query caches up to date after a structural change (caught up with
        the world's own changes, else rebuilt and warmed), timed on its own line."""
        t0 = self.clock_ns()
        if world.update_queries():
            self.cache_stats.record(self.clock_ns() - t0)
            return
        # Only queries on types some entity still has: a query on a type that is gone (an
        # old version of a reloaded component) is empty and cheap, and re-warming it would
        # keep that old class, and its module version, alive for ever.
        live = esper._components
        singles = [ct for ct in esper._get_component_cache if ct in live]
        multis = [cts for cts in esper._get_components_cache if all(ct in live for ct in cts)]
        esper._clear_cache_now()
        for ct in singles:
            esper.get_component(ct)
        for cts in multis:
            esper.get_components(*cts)
        self.cache_stats.record(self.clock_ns() - t0)

    # -- reporting -----------------------------------------------------------------------------
    def last_frame_times(self) -> dict[str, int]:
        """Each system's time in the frame just run (ns), for per-frame recording."""
        out = {}
        for h in self.order:
            if h.stats.calls and h.stats.window.count:
                out[h.key] = h.stats.window.samples(last=1)[0]
        return out

    def snapshot(self) -> dict[str, Any]:
        """Every system's numbers, state and reason (``retry_in_s``: when a system
        disabled for time comes back by itself), the esper cache line and frame totals."""
        now = self.clock_ns()
        systems = {}
        for h in self.order:
            s = h.stats.snapshot()
            systems[h.key] = {
                **s,
                "calls": h.stats.calls,
                "state": str(h.state),
                "version": h.version,
                "strikes": h.strikes,
                "budget_ms": round(h.budget_ns / 1e6, 4),
                "late_frames": h.late_frames,
                "retries": h.retries,
                "reason": h.reason.to_json(now) if h.reason else None,
                "last_error": h.last_error,
            }
        return {
            "systems": systems,
            "esper_cache": self.cache_stats.snapshot(),
            **self.frame_stats.snapshot(),
        }


def _describe(exc: BaseException) -> str:
    """``Type: message`` (the location is said separately)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _raise_site(exc: BaseException, wd: FrameWatchdog) -> str | None:
    """``file:line`` of the innermost user frame in the traceback of ``exc``."""
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    library = wd._library
    for path, line in reversed(frames):
        if not path.startswith(library) and not path.startswith("<"):
            return f"{path}:{line}"
    return f"{frames[-1][0]}:{frames[-1][1]}" if frames else None

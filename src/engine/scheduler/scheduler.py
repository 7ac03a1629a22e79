"""The frame loop's inner part: run every enabled system once, timed, under the watchdog.

Each system is called through a :class:`SystemHandle`. A reload replaces the handle's
``fn`` (never the handle), so the loop always calls the active version and statistics
survive swaps. The loop itself is a plain ``for`` over a list rebuilt only when the set of
systems changes, because it runs 90 times a second.

Policy (all in :class:`SchedulePolicy`):

* a call over the hard limit is interrupted by the watchdog and the system is disabled;
* a call that returns over the hard limit (a long C call the watchdog could not stop) is
  disabled too;
* a system over its budget for ``over_budget_frames`` consecutive frames is disabled;
* a raising system is reported to the engine, which rolls back a version on probation or
  counts strikes (see :class:`engine.Engine`).

esper rebuilds its query caches lazily, inside whichever query runs first after a
structural change. The scheduler rebuilds them itself, between systems, and charges that
time to its own line (``esper cache``) instead of to the next system.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import esper

from engine.contracts.handoff import Phase
from engine.scheduler.pacing import FRAME_NS
from engine.scheduler.spec import SystemSpec
from engine.scheduler.stats import FrameStats, SystemStats
from engine.scheduler.watchdog import FrameWatchdog, Overrun

CACHE_LINE = "esper cache"


@dataclass
class SchedulePolicy:
    """Every knob of the budget policy, in one place.

    Attributes:
        frame_ns: the frame budget (1/90 s).
        hard_limit_ns: longest one call may run before it is interrupted and its system
            disabled (default: the whole frame).
        over_budget_frames: consecutive frames over budget that disable a system.
        strikes: consecutive raising frames that disable a system past its probation.
        probation_frames: frames a new version runs on probation (a raise rolls it back).
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
    """Why a system was disabled, kept until it is re-enabled.

    ``limit`` is one of ``hard-limit`` (interrupted), ``c-call`` (returned over the hard
    limit), ``budget`` (over budget too many frames), ``exception`` (kept raising),
    ``rolled-back`` (its version failed probation and had nothing to fall back to),
    ``manual``.
    """

    limit: str
    detail: str
    over_ms: float
    frame: int
    time: float
    version: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "detail": self.detail,
            "over_ms": round(self.over_ms, 3),
            "frame": self.frame,
            "time": self.time,
            "version": self.version,
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
    probation_until: int = 0
    strikes: int = 0
    reason: DisableReason | None = None
    last_error: str = ""
    budget_ns: int = FRAME_NS
    hard_ns: int = FRAME_NS  # this system's hard limit (the policy's unless it sets one)
    max_over_budget: int = 3  # frames in a row over budget that disable it
    after: tuple[str, ...] = field(default=())
    running_id: int = 0  # names this version in the heartbeat (RunningNow.name_handles)

    @property
    def enabled(self) -> bool:
        return self.state is not SystemState.DISABLED


@dataclass
class Fault:
    """Something a system did wrong this frame; the engine decides what follows."""

    handle: SystemHandle
    kind: str  # "exception" | "hard-limit" | "c-call" | "budget"
    detail: str
    elapsed_ns: int
    error: BaseException | None = None


class Scheduler:
    """Runs systems in order each frame, times each, and applies the budget policy."""

    def __init__(
        self,
        policy: SchedulePolicy | None = None,
        *,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
        on_hung: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy or SchedulePolicy()
        self.clock_ns = clock_ns
        self.handles: dict[str, SystemHandle] = {}
        self.order: list[SystemHandle] = []
        self.module_order: list[str] = []
        self.watchdog = FrameWatchdog(
            self.policy.hard_ns,
            retry_ns=round(self.policy.watchdog_retry_ms * 1e6),
            max_interrupts=self.policy.watchdog_max_interrupts,
            clock_ns=clock_ns,
            on_hung=on_hung,
        )
        self.cache_stats = SystemStats(CACHE_LINE, self.policy.frame_ns)
        self.frame_stats = FrameStats(self.policy.frame_ns)
        self.frame = 0
        #: One word the loop stores each system's ``running_id`` into: what runs now.
        self.running_now = memoryview(bytearray(8)).cast("Q")

    # -- the set of systems ----------------------------------------------------------------
    def set_module_systems(
        self,
        module: str,
        version: int | None,
        systems: list[tuple[SystemSpec, Callable[[Any, float], None]]],
        frame: int,
    ) -> None:
        """Make ``systems`` the active systems of ``module`` (a new version goes on probation).

        Handles of systems that keep their name are reused (statistics survive); a system
        that disappeared is removed.
        """
        keep: dict[str, SystemHandle] = {}
        for i, (spec, fn) in enumerate(systems):
            key = f"{module}.{spec.name}"
            h = self.handles.get(key)
            if h is None:
                h = SystemHandle(key, module, spec.name, fn, spec, version, SystemStats(key, 0))
            h.fn, h.spec, h.version, h.index = fn, spec, version, i
            h.state = SystemState.PROBATION
            h.probation_until = frame + self.policy.probation_frames
            h.strikes = 0
            h.reason = None
            h.last_error = ""
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
        """Recompute the call order and the fair-share budgets."""
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

    # -- enabling and disabling --------------------------------------------------------------
    def disable(self, handle: SystemHandle, limit: str, detail: str, over_ms: float = 0.0) -> None:
        handle.state = SystemState.DISABLED
        handle.reason = DisableReason(
            limit, detail, over_ms, self.frame, time.time(), handle.version
        )

    def enable(self, key: str) -> SystemHandle:
        """Re-enable a system by hand (on probation); raises ``KeyError`` if unknown."""
        h = self.handles[key]
        h.state = SystemState.PROBATION
        h.probation_until = self.frame + self.policy.probation_frames
        h.reason = None
        h.strikes = 0
        return h

    def find(self, name: str) -> SystemHandle:
        """A handle by ``module.name`` or by a bare name if unique; ``KeyError`` otherwise."""
        if name in self.handles:
            return self.handles[name]
        matches = [h for h in self.handles.values() if h.name == name]
        if len(matches) == 1:
            return matches[0]
        raise KeyError(f"no single system named {name!r} (have: {sorted(self.handles)})")

    # -- the frame --------------------------------------------------------------------------
    def run_frame(self, world: Any, dt: float, frame: int) -> list[Fault]:
        """Run every enabled system once. Returns the frame's faults (policy applied)."""
        self.frame = frame
        world.activate()
        clock = self.clock_ns
        wd = self.watchdog
        faults: list[Fault] = []
        frame_start = clock()
        wd.start_frame()
        for h in self.order:
            if h.state is SystemState.DISABLED:
                continue
            if esper._cache_dirty:
                self._rebuild_query_cache()
            if wd.interrupts:
                wd.interrupts = 0
            t0 = clock()
            wd.call_start_ns = t0
            wd.call_limit_ns = h.hard_ns
            wd.key = h.key
            self.running_now[0] = h.running_id
            try:
                h.fn(world, dt)
                wd.key = None
            except Overrun as exc:
                wd.key = None
                elapsed = clock() - t0
                kind = "c-call" if exc.in_c_call else "hard-limit"
                faults.append(Fault(h, kind, str(exc), elapsed, exc))
                h.stats.record(elapsed)
                continue
            except (Exception, SystemExit) as exc:
                wd.key = None
                elapsed = clock() - t0
                faults.append(Fault(h, "exception", _describe(exc), elapsed, exc))
                h.stats.record(elapsed)
                continue
            elapsed = clock() - t0
            if h.strikes:
                h.strikes = 0
            if h.stats.record(elapsed):
                if elapsed > h.hard_ns:
                    if wd.interrupts:  # it caught every Overrun and returned late anyway
                        kind, why = "hard-limit", f"swallowed {wd.interrupts} interrupts"
                    else:
                        kind, why = (
                            "c-call",
                            (
                                "a call returned over the hard limit: long C-level work the "
                                "watchdog cannot interrupt"
                            ),
                        )
                    faults.append(Fault(h, kind, why, elapsed))
                elif h.stats.consecutive_overruns >= h.max_over_budget:
                    faults.append(
                        Fault(
                            h,
                            "budget",
                            f"over its {h.budget_ns / 1e6:.2f} ms budget for "
                            f"{h.stats.consecutive_overruns} frames in a row",
                            elapsed,
                        )
                    )
        wd.end_frame()
        self.running_now[0] = Phase.FRAME
        world.clear_dead_entities()
        if esper._cache_dirty:
            self._rebuild_query_cache()
        self.frame_stats.record(clock() - frame_start)
        for f in faults:
            self._apply_policy(f)
        return faults

    def _apply_policy(self, f: Fault) -> None:
        h = f.handle
        over_ms = (
            f.elapsed_ns - (h.hard_ns if f.kind in ("hard-limit", "c-call") else h.budget_ns)
        ) / 1e6
        if f.kind in ("hard-limit", "c-call", "budget"):
            self.disable(h, f.kind, f.detail, max(over_ms, 0.0))
        else:
            h.last_error = f.detail
            h.strikes += 1

    def _rebuild_query_cache(self) -> None:
        """Warm esper's query caches after a structural change, timed on its own line."""
        t0 = self.clock_ns()
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
                "reason": h.reason.to_json() if h.reason else None,
                "last_error": h.last_error,
            }
        return {
            "systems": systems,
            "esper_cache": self.cache_stats.snapshot(),
            **self.frame_stats.snapshot(),
        }


def _describe(exc: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost frame of the traceback."""
    tb = exc.__traceback__
    where = ""
    while tb is not None:
        where = f" ({tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"
        tb = tb.tb_next
    return f"{type(exc).__name__}: {exc}{where}"

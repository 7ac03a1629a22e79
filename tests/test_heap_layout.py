"""Floats a loop visits lie in the order it visits them, and stay so (``engine.world.heap``):
fresh copies made in order, whatever holes the heap has; and a system's loop that
replaces its floats every frame keeps them in order while other code runs between frames."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from conftest import StubWorld
from engine.scheduler.scheduler import FLOAT_CYCLE_NS, Scheduler
from engine.scheduler.spec import SystemSpec
from engine.world.heap import FloatCycle, fresh_floats, in_order, out_of_order

pytestmark = pytest.mark.usefixtures("holes_uncapped")


def _float_holes(count: int, seed: int) -> list[float]:
    """``count`` holes of a float's size, freed in no order between floats that stay."""
    base = 0.25
    pinned = [base * i for i in range(2 * count)]
    random.Random(seed).shuffle(pinned)
    del pinned[:count]
    return pinned


def test_fresh_floats_are_equal_and_lie_in_order_whatever_the_holes() -> None:
    kept = _float_holes(20_000, seed=1)
    values = [random.Random(2).uniform(-1e6, 1e6) for _ in range(5000)]
    plain = [v * 1.0 for v in values]  # what made one by one gives
    assert out_of_order([id(f) for f in plain]) > 1000
    fresh = fresh_floats(values)
    assert fresh == values and all(f is not v for f, v in zip(fresh, values, strict=True))
    assert in_order([id(f) for f in fresh])
    del kept


def test_fresh_floats_keep_every_bit() -> None:
    nan = float("nan")
    values = [-0.0, 0.0, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, nan] * 50
    fresh = fresh_floats(values)
    for v, f in zip(values, fresh, strict=True):
        if v != v:
            assert f is v  # a NaN is left as it is
        else:
            assert f == v and math.copysign(1.0, f) == math.copysign(1.0, v)


@dataclass
class _Pos:
    x: float = 0.0
    y: float = 0.0


@dataclass
class _Vel:
    dx: float = 1.0
    dy: float = 0.5


class _NoCycle:
    def before(self) -> None: ...

    def after(self) -> None: ...


def _run(cycle: bool, rows: int = 1000, frames: int = 5000) -> int:
    """A loop replacing 2 floats per row each frame, and a system between its calls that
    keeps some floats of its own (as the engine's work and other systems do): how far
    out of order the loop's floats end up."""
    start = fresh_floats([float(i) for i in range(2 * rows)])  # in order to begin with
    bodies = [(_Pos(start[2 * i], start[2 * i + 1]), _Vel()) for i in range(rows)]
    del start
    keep: list[float] = []
    rng = random.Random(3)

    def move(world, dt) -> None:
        for p, v in bodies:
            p.x += v.dx * dt
            p.y += v.dy * dt

    def other(world, dt) -> None:
        keep.append(rng.random())
        keep.append(rng.random())
        if len(keep) > 300:
            keep.pop(rng.randrange(len(keep)))
            keep.pop(rng.randrange(len(keep)))

    sched = Scheduler()
    systems = [(SystemSpec("move", order=0), move), (SystemSpec("other", order=1), other)]
    sched.set_module_systems("demo", 1, systems, frame=0, proven=True)
    for h in sched.handles.values():
        h.floats = FloatCycle() if cycle and h.name == "move" else _NoCycle()  # type: ignore[assignment]

    world = StubWorld()
    for frame in range(1, frames + 1):
        sched.run_frame(world, 0.011, frame)
    return out_of_order([id(p.x) for p, _ in bodies])


def test_a_loop_keeps_its_floats_in_order_while_other_code_runs_between_frames() -> None:
    assert _run(cycle=True) < 30
    # The test above can fail: without the cycle the floats the other system freed last
    # feed the loop, and after a turn of the conveyor its floats lie all over the heap.
    assert _run(cycle=False) > 300


def test_only_a_system_that_runs_long_keeps_its_floats() -> None:
    """The cycle costs about a microsecond a call: a system gets one once a call of it
    has run longer than FLOAT_CYCLE_NS (a clock of the test's own)."""
    now = [0]

    def long(world, dt) -> None:
        now[0] += FLOAT_CYCLE_NS + 1

    def short(world, dt) -> None:
        now[0] += FLOAT_CYCLE_NS // 10

    sched = Scheduler(clock_ns=lambda: now[0])
    systems = [(SystemSpec("long", order=0), long), (SystemSpec("short", order=1), short)]
    sched.set_module_systems("demo", 1, systems, frame=0, proven=True)
    assert all(h.floats is None for h in sched.handles.values())
    for frame in (1, 2):
        sched.run_frame(StubWorld(), 0.011, frame)
    assert isinstance(sched.handles["demo.long"].floats, FloatCycle)
    assert sched.handles["demo.short"].floats is None


def test_a_cycle_with_nothing_kept_yet_is_harmless() -> None:
    c = FloatCycle()
    c.before()
    c.after()
    c.before()
    c.after()

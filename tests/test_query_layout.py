"""Long-lived query results laid out again in fresh memory, in visit order
(``engine.world.layout``): the same rows, found where a loop streams through them; a
result rebuilt every frame, or already in order, is left alone; a change abandons a copy."""

from __future__ import annotations

import random
from dataclasses import dataclass

import esper
import pytest

from conftest import write
from engine.world import World
from engine.world.heap import out_of_order
from engine.world.layout import SETTLE_FRAMES, QueryLayout, scattered

N = 3000

pytestmark = pytest.mark.usefixtures("holes_uncapped")


@dataclass
class Pos:
    x: float = 0.0


@dataclass
class Vel:
    dx: float = 0.0


def _tuple_holes(count: int, seed: int) -> list[tuple]:
    """``count`` holes of a row's size (a 2-tuple), freed in no order between tuples that
    stay (returned)."""
    pinned = [(i, -i) for i in range(2 * count)]
    random.Random(seed).shuffle(pinned)
    del pinned[:count]
    return pinned


def _rows(world: World) -> list:
    world.activate()
    return esper._get_components_cache[(Pos, Vel)]


def _world(layout: QueryLayout | None = None) -> World:
    world = World(layout=layout)
    for i in range(N):
        world.create_entity(Pos(float(i)), Vel(1.0))
    return world


def _frames(world: World, n: int) -> None:
    for _ in range(n):
        world.lay_out_queries()


def _until_laid_out(world: World, count: int = 1, most: int = 2000) -> None:
    """Frame boundaries until ``count`` results have been laid out (a few hundred rows a
    frame, more frames while batches land in holes)."""
    for _ in range(most):
        if world.queries_laid_out >= count:
            return
        world.lay_out_queries()
    raise AssertionError(f"not laid out in {most} frames")


def test_a_result_built_into_holes_is_laid_out_again_in_visit_order() -> None:
    world = _world()
    try:
        kept = _tuple_holes(4 * N, seed=1)
        built = world.get_components(Pos, Vel)  # built now, into the holes
        assert scattered(built, single=False)
        assert out_of_order([id(r) for r in built]) > N // 4
        _until_laid_out(world)
        now = _rows(world)
        assert now is not built and world.queries_laid_out == 1
        # The same rows: entity for entity, the very same component instances.
        assert [e for e, _ in now] == [e for e, _ in built]
        assert all(a is c and b is d for (_, (a, b)), (_, (c, d)) in zip(now, built, strict=True))
        assert world.get_components(Pos, Vel) is now
        # ... lying one after the other, rows and their component tuples.
        assert not scattered(now, single=False)
        assert out_of_order([id(r) for r in now]) < N * 3 // 100  # each batch within heap.TOLERANCE
        assert (
            out_of_order([id(r[1]) for r in now]) < N * 3 // 100
        )  # each batch within heap.TOLERANCE
        del kept
    finally:
        world.delete()


def test_single_type_results_too() -> None:
    world = _world()
    try:
        kept = _tuple_holes(4 * N, seed=2)
        built = world.get_component(Pos)
        assert scattered(built, single=True)
        _until_laid_out(world)
        world.activate()
        now = esper._get_component_cache[Pos]
        assert now is not built and [(e, c) for e, c in now] == [(e, c) for e, c in built]
        assert all(a[1] is b[1] for a, b in zip(now, built, strict=True))
        assert out_of_order([id(r) for r in now]) < N * 3 // 100  # each batch within heap.TOLERANCE
        del kept
    finally:
        world.delete()


def test_the_work_is_spread_over_frames_within_a_budget() -> None:
    counted = QueryLayout(tuples_per_frame=1000)
    world = _world(counted)
    try:
        kept = _tuple_holes(4 * N, seed=3)
        world.get_components(Pos, Vel)
        _frames(world, SETTLE_FRAMES)
        assert counted.busy
        # 500 rows (1,000 tuples) a frame: at least N / 500 frames, more while batches
        # land in the holes and are kept aside.
        frames = 0
        while counted.busy:
            world.lay_out_queries()
            frames += 1
            assert frames < 2000
        assert frames >= N // 500 and world.queries_laid_out == 1
        del kept
    finally:
        world.delete()


def test_a_result_already_in_order_is_left_alone() -> None:
    layout = QueryLayout()
    world = _world(layout)
    try:
        kept = _tuple_holes(4 * N, seed=7)
        world.get_components(Pos, Vel)
        _until_laid_out(world)
        assert world.queries_laid_out == 1
        world.activate()
        # A new list of the same (laid out) rows, as a caught-up result is: looked at,
        # found in order, not copied.
        again = list(esper._get_components_cache[(Pos, Vel)])
        esper._get_components_cache[(Pos, Vel)] = again
        _frames(world, SETTLE_FRAMES + 10)
        assert world.queries_laid_out == 1 and _rows(world) is again
        del kept
    finally:
        world.delete()


def test_a_result_rebuilt_every_frame_is_left_alone() -> None:
    world = _world(QueryLayout(judge=lambda rows, single: True))
    try:
        for _ in range(SETTLE_FRAMES * 5):
            world.activate()
            esper._get_components_cache.clear()  # as a cache rebuilt each frame
            world.get_components(Pos, Vel)
            world.lay_out_queries()
        assert world.queries_laid_out == 0
    finally:
        world.delete()


def test_a_change_during_a_copy_abandons_it() -> None:
    layout = QueryLayout(tuples_per_frame=2000, judge=lambda rows, single: True)
    world = _world(layout)
    try:
        built = world.get_components(Pos, Vel)
        _frames(world, SETTLE_FRAMES + 2)
        assert layout.busy
        e = world.create_entity(Pos(-1.0), Vel(2.0))  # the cached result changes
        _frames(world, 1)
        assert not layout.busy
        world.update_queries()
        rows = world.get_components(Pos, Vel)
        assert rows is not built and rows[-1][0] == e and len(rows) == N + 1
        # The new result settles and is copied whole (with the new entity).
        _until_laid_out(world)
        assert [r[0] for r in world.get_components(Pos, Vel)] == [r[0] for r in rows]
    finally:
        world.delete()


BODIES = """
import engine

@engine.component
class Body:
    x: float = 0.0
    y: float = 0.0

@engine.component
class Spin:
    rate: float = 0.0
# version {n}
"""

MOVE = """
import engine
from systems.bodies import Body, Spin

@engine.system
def move(world, dt):
    for _, (b, s) in world.get_components(Body, Spin):
        b.x += s.rate * dt
"""

GAME = f"""
from systems.bodies import Body, Spin

def setup(world):
    for i in range({N}):
        world.create_entity(Body(float(i)), Spin(1.0))
"""


def test_after_a_reload_the_frames_lay_the_systems_query_out(project, make_engine) -> None:
    """Through the engine: a reload migrates the components and the query is rebuilt
    (into a heap full of holes); a few frames later its rows lie in order."""
    write(project / "systems" / "bodies.py", BODIES.format(n=1))
    write(project / "systems" / "move.py", MOVE)
    write(project / "game.py", GAME)
    eng = make_engine(project)
    eng.step()
    kept = _tuple_holes(4 * N, seed=6)
    eng.loader.prepare({"bodies": BODIES.format(n=2)})
    eng.step()  # swapped, migrated; the query is rebuilt by the scheduler
    body = eng.loader.active["bodies"].components["systems.bodies:Body"]
    spin = eng.loader.active["bodies"].components["systems.bodies:Spin"]
    eng.world.activate()
    rebuilt = esper._get_components_cache[(body, spin)]
    assert scattered(rebuilt, single=False)
    for _ in range(2000):
        eng.step()
        if eng.world.queries_laid_out and not eng.world._layout.busy:
            break
    eng.world.activate()
    rows = esper._get_components_cache[(body, spin)]
    assert eng.world.queries_laid_out >= 1 and not scattered(rows, single=False)
    assert [r[0] for r in rows] == [r[0] for r in rebuilt]
    # The system went on moving the same bodies.
    assert all(b.x > float(i) for i, (_, (b, _)) in enumerate(rows))
    del kept

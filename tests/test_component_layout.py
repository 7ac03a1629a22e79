"""Components built in bulk (a reload's migration, a restore) lie in the order queries
visit them, and keep CPython's compact attribute storage (see
``engine.world.migration.shells_in_address_order``; ``bench/soak.py`` measures the loop)."""

from __future__ import annotations

import dataclasses
import gc
import random

import pytest

from conftest import write
from engine.world import World
from engine.world.components import component
from engine.world.migration import MigrationError, build_instance, shells_in_address_order

N = 3000

BODIES = """
import engine

@engine.component
class Body:
    x: float = 0.0
    y: float = 0.0
    mass: float = 1.0
# version {n}
"""

GAME = f"""
from systems.bodies import Body

def setup(world):
    for i in range({N}):
        world.create_entity(Body(float(i), -float(i)))
"""


@dataclasses.dataclass
class _Filler:  # the same size as a component with three fields
    a: float = 0.0
    b: float = 0.0
    c: float = 0.0


def _holes(seed: int) -> list[_Filler]:
    """Leave the heap as a day of play does: thousands of holes of a component's size,
    freed in no order. Returns what is kept (the rest is freed)."""
    rng = random.Random(seed)
    made = [_Filler() for _ in range(4 * N)]
    rng.shuffle(made)
    kept = made[: 2 * N]
    del made
    gc.collect()
    return kept


def _ascending(instances: list) -> float:
    ids = [id(c) for c in instances]
    return sum(1 for a, b in zip(ids, ids[1:], strict=False) if b > a) / (len(ids) - 1)


def _has_own_dict(instance) -> bool:
    """True when CPython gave the instance a dict object instead of the class's compact
    attribute storage (the garbage collector then sees the dict)."""
    return any(type(r) is dict for r in gc.get_referents(instance))


def test_a_reload_lays_migrated_components_out_in_query_order(project, make_engine) -> None:
    write(project / "systems" / "bodies.py", BODIES.format(n=1))
    write(project / "game.py", GAME)
    eng = make_engine(project)
    eng.step()
    kept = _holes(1)
    for n in (2, 3):
        eng.loader.prepare({"bodies": BODIES.format(n=n)})
        eng.step()
        new = eng.loader.active["bodies"].components["systems.bodies:Body"]
        bodies = eng.world.get_component(new)
        assert len(bodies) == N and all(type(b) is new for _, b in bodies)
        # Every entity kept its own values.
        assert all(b.x == float(e - bodies[0][0]) and b.y == -b.x for e, b in bodies)
        # Visited one after the other in memory (the first is built before the rest).
        assert _ascending([b for _, b in bodies][1:]) == 1.0
        assert not any(_has_own_dict(b) for _, b in bodies[:: N // 50])
    del kept


def test_a_restore_lays_each_class_out_in_entity_order() -> None:
    w = World()

    @component
    class Mass:
        kg: float = 1.0

    @component
    class Spin:
        rate: float = 0.0
        axis: str = "y"

    for i in range(N):
        w.create_entity(Mass(float(i)), Spin(-float(i)))
    data = w.checkpoint()
    kept = _holes(2)
    r = World.restore(data)
    for cls in (Mass, Spin):
        found = [c for _, c in r.get_component(cls)]
        assert len(found) == N
        assert _ascending(found[1:]) == 1.0
        assert not any(_has_own_dict(c) for c in found[:: N // 50])
    assert [(m.kg, s.rate) for _, (m, s) in r.get_components(Mass, Spin)] == [
        (float(i), -float(i)) for i in range(N)
    ]
    for x in (w, r):
        x.delete()
    del kept


def test_the_heap_holes_would_scatter_them_otherwise() -> None:
    """The test above can fail: built one by one into the same holes, instances are not
    in order."""
    kept = _holes(3)
    one_by_one = [_Filler(float(i)) for i in range(N)]
    assert _ascending(one_by_one) < 0.9
    del kept


def test_filling_a_shell_is_what_calling_the_class_does() -> None:
    @dataclasses.dataclass
    class Checked:
        hp: int = 10
        tags: list = dataclasses.field(default_factory=list)
        total: int = dataclasses.field(init=False, default=0)

        def __post_init__(self) -> None:
            if self.hp < 0:
                raise ValueError("hp below zero")
            self.total = self.hp * 2

    @dataclasses.dataclass(frozen=True)
    class Frozen:
        a: int = 1

    shells = shells_in_address_order(Checked, 3)
    assert next(shells) is None
    built = build_instance(Checked, {"hp": 4})
    filled = build_instance(Checked, {"hp": 4}, next(shells))
    assert filled == built and filled.total == 8 and filled.tags is not built.tags
    with pytest.raises(MigrationError, match="hp below zero"):
        build_instance(Checked, {"hp": -1}, next(shells))
    frozen = shells_in_address_order(Frozen, 2)
    next(frozen)
    f = build_instance(Frozen, {"a": 5}, next(frozen))
    assert f == Frozen(5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.a = 6  # type: ignore[misc]


def test_classes_that_build_their_own_instances_are_left_alone() -> None:
    @dataclasses.dataclass
    class Interned:
        key: str = ""

        def __new__(cls, key: str = ""):
            return super().__new__(cls)

    class Plain:
        pass

    class Meta(type):
        def __call__(cls, *a, **k):
            return super().__call__(*a, **k)

    @dataclasses.dataclass
    class Metaclassed(metaclass=Meta):
        v: int = 0

    for cls in (Interned, Plain, Metaclassed):
        assert shells_in_address_order(cls, 100) is None
    assert shells_in_address_order(_Filler, 1) is None  # nothing to order


@dataclasses.dataclass
class Particle:
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0


def test_shells_made_where_the_heap_is_full_of_holes_lie_packed() -> None:
    """After a day of play the heap's free blocks of a component's size are spread over
    many pages, pinned between objects that live on: shells built into those holes, even
    visited in address order, span twice the pages (and the loop over them slowed 2.5x
    over a day of ``bench/soak.py``). The holes are taken up first, so the shells lie
    packed."""
    from engine.world.migration import scattered

    Particle()  # the class's shared attribute keys
    pinned = [object.__new__(Particle) for _ in range(30_000)]
    del pinned[::2]  # 15,000 holes, one between every two objects that stay
    holes = [object.__new__(Particle) for _ in range(4000)]
    holes.sort(key=id)
    assert scattered(holes)  # what the shells would be without taking the holes up
    del holes
    shells = list(shells_in_address_order(Particle, 4000))[1:]
    assert len(shells) == 3999
    assert [id(s) for s in shells] == sorted(id(s) for s in shells)
    assert not scattered(shells)
    del pinned

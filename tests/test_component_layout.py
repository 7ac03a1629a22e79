"""Components built in bulk (a reload's migration, a restore) lie in the order queries
visit them, and keep CPython's compact attribute storage (see
``engine.world.migration.shells_in_address_order``; ``bench/soak.py`` measures the loop)."""

from __future__ import annotations

import dataclasses
import gc
import random
import sys

import pytest

from conftest import write
from engine.world import World
from engine.world.components import component
from engine.world.heap import blocks, lie_in_order, out_of_order
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


def _has_own_dict(instance) -> bool:
    """True when CPython gave the instance a dict object instead of the class's compact
    attribute storage (the garbage collector then sees the dict)."""
    return any(type(r) is dict for r in gc.get_referents(instance))


@pytest.mark.usefixtures("holes_uncapped")
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
        # Visited one after the other in memory, objects and attribute arrays (the first
        # is built before the rest).
        assert all(out_of_order(k) < N // 25 for k in blocks([b for _, b in bodies][1:]))
        assert not any(_has_own_dict(b) for _, b in bodies[:: N // 50])
    del kept


def _float_ids(instances: list, names: tuple[str, ...]) -> list[int]:
    return [id(getattr(c, n)) for c in instances for n in names]


@pytest.mark.usefixtures("holes_uncapped")
def test_a_reload_gives_the_migrated_components_fresh_floats_in_order(project, make_engine) -> None:
    """The floats a loop over the bodies visits lie in the order it visits them after a
    reload, whatever order they lay in before (here: handed out shuffled); same values."""
    write(project / "systems" / "bodies.py", BODIES.format(n=1))
    write(project / "game.py", GAME)
    eng = make_engine(project)
    eng.step()
    old = eng.loader.active["bodies"].components["systems.bodies:Body"]
    before = [b for _, b in eng.world.get_component(old)]
    fresh = [float(i) * 0.5 for i in range(3 * N)]
    random.Random(7).shuffle(fresh)
    for i, b in enumerate(before):  # the same values, in floats lying in no order
        b.x, b.y, b.mass = b.x + fresh[3 * i] * 0.0, b.y * 1.0, b.mass * 1.0
    del fresh
    values = [(b.x, b.y, b.mass) for b in before]
    assert out_of_order(_float_ids(before, ("x", "y", "mass"))) > N // 2
    eng.loader.prepare({"bodies": BODIES.format(n=2)})
    eng.step()
    new = eng.loader.active["bodies"].components["systems.bodies:Body"]
    after = [b for _, b in eng.world.get_component(new)]
    assert [(b.x, b.y, b.mass) for b in after] == values
    assert out_of_order(_float_ids(after, ("x", "y", "mass"))) < N // 50


@pytest.mark.usefixtures("holes_uncapped")
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
    base = 0.25
    floats_kept = [base * i for i in range(4 * N)]  # float-sized holes, in no order
    random.Random(8).shuffle(floats_kept)
    del floats_kept[: 2 * N]
    r = World.restore(data)
    for cls, name in ((Mass, "kg"), (Spin, "rate")):
        found = [c for _, c in r.get_component(cls)]
        assert len(found) == N
        assert all(out_of_order(k) < N // 25 for k in blocks(found[1:]))  # heap.TOLERANCE
        assert not any(_has_own_dict(c) for c in found[:: N // 50])
        assert out_of_order(_float_ids(found, (name,))) < N // 50  # fresh, in order
    assert [(m.kg, s.rate) for _, (m, s) in r.get_components(Mass, Spin)] == [
        (float(i), -float(i)) for i in range(N)
    ]
    for x in (w, r):
        x.delete()
    del kept, floats_kept


def test_the_heap_holes_would_scatter_them_otherwise() -> None:
    """The test above can fail: built one by one into the same holes, instances are not
    in order."""
    kept = _holes(3)
    one_by_one = [_Filler(float(i)) for i in range(N)]
    assert out_of_order([id(c) for c in one_by_one]) > N // 10
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


def _shuffled_holes(count: int, seed: int) -> list[Particle]:
    """Leave ``count`` holes of a Particle's blocks (object and attribute array), freed in
    no order between Particles that stay (returned: keep them while the holes matter)."""
    Particle()  # the class's shared attribute keys
    pinned = [Particle() for _ in range(2 * count)]
    random.Random(seed).shuffle(pinned)
    del pinned[:count]
    return pinned


@pytest.mark.usefixtures("holes_uncapped")
def test_shells_made_where_the_heap_is_full_of_holes_lie_in_order() -> None:
    """After a day of play the heap's free blocks of a component's sizes lie all over it,
    freed in no order: instances made one by one land there, objects and attribute
    arrays out of order (sorting them by address would order the objects only), and the
    loop over them slowed 1.9x over 1,000 reloads of ``bench/soak.py``. Shells that land
    in holes are kept while more are made, until they come from fresh memory."""
    pinned = _shuffled_holes(15_000, seed=4)
    plain = [object.__new__(Particle) for _ in range(4000)]
    assert not lie_in_order(plain)  # what the shells would be without taking the holes up
    assert all(out_of_order(kind) > 1000 for kind in blocks(plain))
    del plain
    shells = list(shells_in_address_order(Particle, 4000))[1:]
    assert len(shells) == 3999
    for kind in blocks(shells):  # on CPython 3.11, the attribute arrays too
        assert out_of_order(kind) < 3999 // 25  # within what engine.world.heap accepts
    del pinned


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11), reason="reads where CPython 3.11 keeps attribute arrays"
)
def test_the_attribute_arrays_are_seen_on_this_python() -> None:
    """The check above covers the attribute arrays only where they can be seen."""
    a, b = Particle(1.0), Particle(2.0)
    assert len(blocks([a, b])) == 2
    a.__dict__  # noqa: B018 - asked for, the values move into a dict of their own
    assert len(blocks([a, b])) == 1


def test_a_heap_with_more_holes_than_worth_taking_up_still_gets_its_shells(
    monkeypatch,
) -> None:
    """Past the cap on what is kept aside, the shells are used as they came, the objects
    in address order at least."""
    from engine.world import migration

    monkeypatch.setattr(migration, "MIN_SHELLS_HELD", 0)  # 8 per shell: fewer than the holes
    pinned = _shuffled_holes(40_000, seed=5)
    shells = list(shells_in_address_order(Particle, 1000))
    assert shells[0] is None and len(shells) == 1000
    ids = [id(s) for s in shells[1:]]
    assert ids == sorted(ids) and len(set(ids)) == 999
    del pinned

"""esper's query caches, caught up with a world's own changes instead of rebuilt
(``World.update_queries``): the same answers as a rebuild, in every order of changes,
also when esper is called around the world."""

from __future__ import annotations

from dataclasses import dataclass

import esper
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.world import World
from engine.world.layout import QueryLayout
from engine.world.world import _changes


@dataclass
class A:
    v: int = 0


@dataclass
class B:
    v: int = 0


@dataclass
class C:
    v: int = 0


TYPES = (A, B, C)
QUERIES = [(A,), (B,), (C,), (A, B), (B, C), (A, C), (A, B, C), (C, A)]


def truth(world: World, cts: tuple[type, ...]) -> list:
    """What a rebuilt cache holds (in no particular order): read from the database."""
    world.activate()
    found = []
    for e, comps in esper._entities.items():
        if all(ct in comps for ct in cts):
            found.append((e, comps[cts[0]] if len(cts) == 1 else tuple(comps[c] for c in cts)))
    return sorted(found, key=lambda pair: pair[0])


def asked(world: World, cts: tuple[type, ...]) -> list:
    pairs = world.get_component(cts[0]) if len(cts) == 1 else world.get_components(*cts)
    return sorted(pairs, key=lambda pair: pair[0])


def same(a: list, b: list) -> bool:
    """Equal entity for entity, component for component (the same objects)."""
    if [e for e, _ in a] != [e for e, _ in b]:
        return False
    for (_, x), (_, y) in zip(a, b, strict=True):
        if isinstance(x, tuple):
            if len(x) != len(y) or any(p is not q for p, q in zip(x, y, strict=True)):
                return False
        elif x is not y:
            return False
    return True


operation = st.one_of(
    st.tuples(st.just("create"), st.sets(st.sampled_from(TYPES))),
    st.tuples(st.just("add"), st.integers(0, 30), st.sampled_from(TYPES)),
    st.tuples(st.just("remove"), st.integers(0, 30), st.sampled_from(TYPES)),
    st.tuples(st.just("try_remove"), st.integers(0, 30), st.sampled_from(TYPES)),
    st.tuples(st.just("delete"), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("clear_dead")),
    st.tuples(st.just("query"), st.sampled_from(QUERIES)),
    st.tuples(st.just("update")),
    st.tuples(st.just("lay_out"), st.integers(1, 8)),  # frame boundaries (see below)
    # Around the world: esper itself, the way user code or a restore would.
    st.tuples(st.just("esper_add"), st.integers(0, 30), st.sampled_from(TYPES)),
    st.tuples(st.just("esper_query"), st.sampled_from(QUERIES)),
    st.tuples(st.just("esper_delete"), st.integers(0, 30)),
    st.tuples(st.just("clear_database")),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(operation, max_size=60))
@example(ops=[("delete", 0, False), ("delete", 1, False)])  # one change, two entities
def test_every_query_answers_what_a_rebuild_would(ops) -> None:
    # Every settled result is copied at once, a few rows per frame, so that changes land
    # in the middle of copies (engine.world.layout).
    eager = QueryLayout(8, settle_frames=1, min_rows=0, judge=lambda rows, single: True)
    world = World(layout=eager)
    held: list[tuple[list, list]] = []  # (a list handed out, a copy of it then)
    try:
        for _ in range(8):  # a few entities and cached queries to start from
            world.create_entity(A(), B())
        for cts in QUERIES:
            asked(world, cts)
        for op in ops:
            world.activate()
            entities = sorted(esper._entities)
            index = op[1] if len(op) > 1 and isinstance(op[1], int) else None
            pick = entities[index % len(entities)] if index is not None and entities else None
            kind = op[0]
            if kind == "create":
                world.create_entity(*(t() for t in op[1]))
            elif kind == "add" and pick is not None:
                world.add_component(pick, op[2]())
            elif kind == "remove" and pick is not None:
                if world.has_component(pick, op[2]):
                    world.remove_component(pick, op[2])
            elif kind == "try_remove" and pick is not None:
                world.try_remove_component(pick, op[2])
            elif kind == "delete" and pick is not None and pick not in esper._dead_entities:
                world.delete_entity(pick, immediate=op[2])  # (twice is esper's KeyError)
            elif kind == "clear_dead":
                world.clear_dead_entities()
            elif kind == "query":
                got = world.get_component(op[1][0]) if len(op[1]) == 1 else None
                got = got if got is not None else world.get_components(*op[1])
                held.append((got, list(got)))
                assert same(asked(world, op[1]), truth(world, op[1]))
            elif kind == "update":
                world.update_queries()
            elif kind == "lay_out":
                for _ in range(op[1]):
                    world.lay_out_queries()
            elif kind == "esper_add" and pick is not None:
                esper.add_component(pick, op[2]())
            elif kind == "esper_query":
                cts = op[1]
                esper.get_components(*cts) if len(cts) > 1 else esper.get_component(cts[0])
            elif kind == "esper_delete" and pick is not None and pick not in esper._dead_entities:
                esper.delete_entity(pick, immediate=True)
            elif kind == "clear_database":
                world.clear_database()
        world.clear_dead_entities()
        for cts in QUERIES:  # through the world, and through esper itself
            assert same(asked(world, cts), truth(world, cts))
            world.activate()
            direct = esper.get_component(cts[0]) if len(cts) == 1 else esper.get_components(*cts)
            assert same(sorted(direct, key=lambda pair: pair[0]), truth(world, cts))
        # A list handed out is never changed afterwards (a loop over it goes on over it).
        for got, then in held:
            assert got == then
    finally:
        world.delete()


def test_a_new_entity_is_added_to_the_cached_lists_not_rebuilt() -> None:
    world = World()
    try:
        for i in range(100):
            world.create_entity(A(i), B(i))
        before = world.get_components(A, B)
        singles = world.get_component(A)
        e = world.create_entity(A(100), B(100))
        world.activate()
        assert esper._cache_dirty and _changes[world.name].before == {e: None}
        assert world.update_queries()
        after = world.get_components(A, B)
        assert after is not before and after[:-1] == before and after[-1][0] == e
        assert world.get_component(A)[:-1] == singles
        assert len(before) == 100  # the old list is as it was
    finally:
        world.delete()


def test_a_change_made_around_the_world_leaves_the_rebuild_to_esper() -> None:
    world = World()
    try:
        e = world.create_entity(A())
        world.get_component(A)
        world.create_entity(A())  # noted
        world.activate()
        esper.add_component(e, B())  # not through the world
        assert not world.update_queries()  # esper rebuilds on the next query
        assert [x for x, _ in world.get_components(A, B)] == [e]
        assert len(world.get_component(A)) == 2
    finally:
        world.delete()


def test_a_large_change_is_rebuilt_rather_than_caught_up() -> None:
    world = World()
    try:
        for i in range(40):
            world.create_entity(A(i))
        world.get_component(A)
        for i in range(40):
            world.create_entity(A(i))
        assert not world.update_queries()
        assert len(world.get_component(A)) == 80
    finally:
        world.delete()

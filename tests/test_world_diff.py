"""What changed between two worlds (issue 12, "what changed"): ``engine.world.diff``.

The invariants are checked with hypothesis on worlds built from the components below (a
real module file: checkpoints find them by key); one test runs a real engine on a real
project whose candidate system changes one field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import esper
import numpy as np
import pyrr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_until, write
from engine import World, component
from engine.world.diff import diff_checkpoints, diff_worlds


@component
class Transform:
    position: object = None  # a numpy array of 3
    scale: float = 1.0


@component
class Health:
    points: int = 100
    state: str = "ok"


@component
class Team:
    name: str = "red"


class Brain:
    """A plain object (not a dataclass, no ``==``): compared by its attributes."""

    def __init__(self, goal: str = "wander", patience: float = 1.0) -> None:
        self.goal = goal
        self.patience = patience


@contextmanager
def worlds(*built: World) -> Iterator[tuple[World, ...]]:
    """Free each world's esper context however the test ends."""
    try:
        yield built
    finally:
        for w in built:
            w.delete()


# -- hypothesis: worlds as lists of entities ------------------------------------------------------
halves = st.integers(-2000, 2000).map(lambda i: i / 2)  # exact in binary: differences are exact
entity_spec = st.fixed_dictionaries(
    {
        "position": st.tuples(halves, halves, halves),
        "scale": halves,
        "points": st.integers(-(10**6), 10**6),
        "state": st.sampled_from(["ok", "hurt", "dead"]),
        "team": st.none() | st.sampled_from(["red", "blue"]),
        "goal": st.sampled_from(["wander", "flee"]),
    }
)
world_specs = st.lists(entity_spec, min_size=0, max_size=30)


def build(specs: list[dict]) -> World:
    world = World()
    for s in specs:
        comps: list = [
            Transform(np.array(s["position"]), s["scale"]),
            Health(s["points"], s["state"]),
            Brain(s["goal"]),
        ]
        if s["team"] is not None:
            comps.append(Team(s["team"]))
        world.create_entity(*comps)
    return world


quick = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@quick
@given(world_specs)
def test_a_world_compared_with_itself_or_its_checkpoint_has_no_difference(specs) -> None:
    with worlds(build(specs)) as (world,):
        same = diff_worlds(world, world)
        assert same.empty and not same.changed_fields()
        assert same.summary().endswith("no difference")
        with worlds(World.restore(world.checkpoint())) as (copy,):
            restored = diff_worlds(world, copy)
            assert restored.empty, restored.summary()
            assert restored.entities_before == restored.entities_after == len(specs)
            assert diff_checkpoints(world.checkpoint(), copy.checkpoint()).empty


@quick
@given(world_specs.filter(bool), st.data())
def test_a_changed_field_is_named_with_its_count_and_magnitude(specs, data) -> None:
    n = len(specs)
    moved = data.draw(st.sets(st.integers(0, n - 1)), label="moved entities")
    delta = data.draw(halves.filter(lambda d: d != 0), label="delta")
    axis = data.draw(st.integers(0, 2), label="axis")
    with worlds(build(specs), build(specs)) as (before, after):
        entities = sorted(after.get_entities())
        for i in moved:
            after.component_for_entity(entities[i], Transform).position[axis] += delta
        d = diff_worlds(before, after, labels=("live", "preview"))
        changed = d.changed_fields()
        if not moved:
            assert d.empty
            return
        assert [f.name for f in changed] == ["Transform.position"]
        (f,) = changed
        assert (f.compared, f.differing, f.numeric) == (n, len(moved), True)
        assert f.max_abs == f.mean_abs == abs(delta)
        assert d.field("Transform.scale").differing == 0
        assert f"Transform.position: {len(moved)} of {n} entities differ" in d.summary()


@quick
@given(world_specs, st.data())
def test_added_and_removed_entities_are_counted_by_id(specs, data) -> None:
    gone = data.draw(st.sets(st.integers(0, max(len(specs) - 1, 0))), label="deleted")
    gone = {i for i in gone if i < len(specs)}
    new = data.draw(st.integers(0, 5), label="created")
    with worlds(build(specs), build(specs)) as (before, after):
        entities = sorted(after.get_entities())
        for i in gone:
            after.delete_entity(entities[i])  # deferred: counted as gone already
        created = [after.create_entity(Health(1)) for _ in range(new)]
        d = diff_worlds(before, after)
        assert d.removed == tuple(sorted(entities[i] for i in gone))
        assert d.added == tuple(created)
        assert (d.entities_before, d.entities_after) == (len(specs), len(specs) - len(gone) + new)
        assert not d.changed_fields()  # the entities in both are untouched
        assert d.empty == (not gone and not new)
        flipped = diff_worlds(after, before)
        assert (flipped.added, flipped.removed) == (d.removed, d.added)


# -- values of every kind --------------------------------------------------------------------------
def test_numbers_arrays_vectors_and_other_values_each_get_their_measure() -> None:
    @dataclass
    class Mixed:
        count: int = 0
        speed: float = 0.0
        heading: object = None  # a pyrr vector
        colour: tuple = (0.0, 0.0, 0.0)
        label: str = ""
        brain: object = None  # a plain object inside a field

    with worlds(World(), World()) as (a, b):
        for i in range(10):
            a.create_entity(
                Mixed(i, 1.0, pyrr.Vector3([0.0, 0.0, 1.0]), (0.1, 0.2, 0.3), "x", Brain())
            )
            b.create_entity(
                Mixed(
                    i + (5 if i < 4 else 0),
                    1.0,
                    pyrr.Vector3([0.0, 0.0, 1.0 - 0.25 * (i % 2)]),
                    (0.1, 0.2, 0.3 + (1.0 if i == 9 else 0.0)),
                    "y" if i < 3 else "x",
                    Brain("flee" if i == 0 else "wander"),
                )
            )
        d = diff_worlds(a, b)
        by = {f.field: f for f in d.changed_fields()}
        assert set(by) == {"count", "heading", "colour", "label", "brain"}
        assert (by["count"].differing, by["count"].max_abs, by["count"].mean_abs) == (4, 5, 5)
        assert (by["heading"].differing, by["heading"].max_abs) == (5, 0.25)
        assert by["colour"].differing == 1 and by["colour"].max_abs == pytest.approx(1.0)
        assert by["label"].differing == 3 and not by["label"].numeric
        assert by["brain"].differing == 1 and not by["brain"].numeric
        assert d.field("Mixed.speed").differing == 0
        assert "Mixed.label: 3 of 10 entities differ" in d.summary()
        assert "max" not in by["label"].line()


def test_values_whose_equality_is_ambiguous_or_raises_are_compared_item_by_item() -> None:
    class Stubborn:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparing me")

    @dataclass
    class Odd:
        pair: tuple = ()  # of numpy arrays: tuple == raises "truth value is ambiguous"
        weird: object = None

    with worlds(World(), World()) as (a, b):
        for i in range(3):
            a.create_entity(Odd((np.zeros(2), np.ones(2)), Stubborn()))
            b.create_entity(Odd((np.zeros(2), np.ones(2) * (1 + (i == 0))), Stubborn()))
        d = diff_worlds(a, b)
        assert d.field("Odd.pair").differing == 1
        assert d.field("Odd.weird").differing == 3  # cannot tell: counted as differing


def test_a_large_array_is_compared_in_chunks_to_the_same_answer() -> None:
    from engine.world.diff import CHUNK

    big = np.zeros((3, CHUNK), dtype=np.float32)
    changed = big.copy()
    changed[2, -1] = -2.5  # in the last chunk
    with worlds(World(), World()) as (a, b):
        a.create_entity(Transform(big))
        b.create_entity(Transform(changed))
        a.create_entity(Transform(big))
        b.create_entity(Transform(big.copy()))
        f = diff_worlds(a, b).field("Transform.position")
        assert (f.compared, f.differing, f.max_abs, f.mean_abs) == (2, 1, 2.5, 2.5)


def test_a_component_that_is_an_array_is_compared_whole() -> None:
    with worlds(World(), World()) as (a, b):
        for i in range(4):
            a.create_entity(pyrr.Vector3([1.0, 2.0, 3.0]))
            b.create_entity(pyrr.Vector3([1.0, 2.0, 3.0 + i]))
        (f,) = diff_worlds(a, b).changed_fields()
        assert (f.name, f.field, f.differing, f.max_abs, f.mean_abs) == ("Vector3", "", 3, 3, 2)


def test_nan_equals_nan_and_a_jump_to_infinity_is_infinite() -> None:
    with worlds(World(), World()) as (a, b):
        a.create_entity(Transform(np.array([math.nan, 0.0, 0.0]), math.nan))
        b.create_entity(Transform(np.array([math.nan, 0.0, 0.0]), math.nan))
        a.create_entity(Transform(np.zeros(3), 1.0))
        b.create_entity(Transform(np.array([0.0, math.inf, 0.0]), math.nan))
        d = diff_worlds(a, b)
        assert d.field("Transform.position").differing == 1
        assert d.field("Transform.position").max_abs == math.inf
        assert d.field("Transform.scale").differing == 1
        assert d.field("Transform.scale").max_abs == math.inf
        doc = json.loads(json.dumps(d.to_json()))  # plain data, inf written as a string
        assert {"name": "Transform.position", "max_abs": "inf"}.items() <= (
            doc["changed_fields"][0].items() | doc["changed_fields"][1].items()
        )
        assert "max inf" in d.summary()


def test_component_types_only_on_one_side_and_components_added_to_entities() -> None:
    with worlds(World(), World()) as (a, b):
        for i in range(6):
            a.create_entity(Health(), *([Team()] if i < 2 else []))
            b.create_entity(Health(), *([Brain()] if i < 3 else []))
        b.add_component(3, Team())  # entity 3 gains a Team, 1 and 2 lose theirs
        d = diff_worlds(a, b, labels=("live", "preview"))
        (team,) = [c for c in d.components if c.component.endswith(":Team")]
        assert (team.before, team.after, team.added_to, team.removed_from) == (2, 1, 1, 2)
        assert d.types_added == [
            c.component for c in d.components if c.component.endswith(":Brain")
        ]
        assert d.types_removed == []
        text = d.summary()
        assert "Brain: only in preview (3 entities)" in text
        assert "Team: added to 1 entities, removed from 2" in text
        assert not d.empty


def test_the_summary_keeps_to_its_line_count_and_says_what_it_left_out() -> None:
    @dataclass
    class Wide:
        a: int = 0
        b: int = 0
        c: int = 0
        d: int = 0
        e: int = 0

    with worlds(World(), World()) as (w1, w2):
        w1.create_entity(Wide())
        w2.create_entity(Wide(1, 2, 3, 4, 5))
        text = diff_worlds(w1, w2).summary(lines=4).splitlines()
        assert len(text) == 4 and text[-1] == "... and 3 more"
        assert len(diff_worlds(w1, w2).summary(lines=10).splitlines()) == 6


def test_pending_components_compare_by_their_stored_fields() -> None:
    """Two checkpoints of a module not loaded here: both sides stay pending, fields compared."""
    with worlds(World(), World()) as (a, b):
        for i in range(3):
            a.create_entity(Health(i))
            b.create_entity(Health(i * 10))
        d = diff_checkpoints(a.checkpoint(), b.checkpoint(), resolve=lambda key: None)
        (f,) = d.changed_fields()
        assert f.component.endswith(":Health") and f.field == "points"
        assert (f.differing, f.max_abs) == (2, 18)


def test_esper_s_current_world_is_the_same_after_a_diff() -> None:
    """The game's systems may call ``esper.*`` directly: a diff must not leave them on the
    preview's copy."""
    with worlds(World(), World(), World()) as (game, live, copy):
        live.create_entity(Health())
        game.activate()
        diff_worlds(live, copy)
        assert esper.current_world == game.name


def test_to_json_lists_a_bounded_number_of_ids() -> None:
    with worlds(World(), World()) as (a, b):
        for _ in range(50):
            b.create_entity(Health())
        doc = diff_worlds(a, b).to_json(ids=5)
        assert doc["added"] == {"count": 50, "ids": [1, 2, 3, 4, 5]}
        assert doc["types_added"] and json.dumps(doc)


# -- a real engine, a real candidate ----------------------------------------------------------
BODY = """
import numpy as np
import engine

@engine.component
class Body:
    position: object = None
    hp: int = 100
    label: str = "body"

@engine.system
def drift(world, dt):
    for _, b in world.get_component(Body):
        b.position = b.position + np.array([1.0, 0.0, 0.0])
        {candidate}
"""

GAME = """
import numpy as np
from systems.body import Body

def setup(world):
    for _ in range(10):
        world.create_entity(Body(np.zeros(3)))
"""


def test_the_report_names_the_field_a_candidate_changes(project: Path, make_engine) -> None:
    write(project / "systems" / "body.py", BODY.format(candidate="pass"))
    write(project / "game.py", GAME)
    eng = make_engine(project)
    eng.start_watching()
    for _ in range(3):
        eng.step()
    live = eng.world.checkpoint()
    write(project / "systems" / "body.py", BODY.format(candidate="b.hp -= 7"))
    run_until(eng, lambda: any(s.module == "body" and s.kind != "load" for s in eng.swaps))
    before_candidate = eng.world.checkpoint()
    for _ in range(2):
        eng.step()
    d = diff_checkpoints(
        before_candidate, eng.world.checkpoint(), eng.loader.resolve_component, ("live", "preview")
    )
    (hp, position) = sorted(d.changed_fields(), key=lambda f: f.field)
    assert (hp.name, hp.differing, hp.max_abs, hp.mean_abs) == ("Body.hp", 10, 14, 14)
    assert (position.name, position.max_abs) == ("Body.position", 2)
    assert d.field("Body.label").differing == 0
    assert "Body.hp: 10 of 10 entities differ, max 14, mean 14" in d.summary()
    assert diff_checkpoints(live, live, eng.loader.resolve_component).empty

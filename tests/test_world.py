"""The world: esper-faithful entity/component operations, checkpoints, copies."""

from __future__ import annotations

from dataclasses import dataclass

import esper
import pytest

from engine import World, component
from engine.world.checkpoint import CheckpointError, PendingComponent


@component
class Position:
    x: float = 0.0
    y: float = 0.0


@component
class Health:
    hp: int = 100


@dataclass
class Plain:  # not marked: found by import path on restore
    tag: str = ""


def test_world_behaves_like_esper_for_entities_and_components() -> None:
    w = World()
    e1 = w.create_entity(Position(1, 2), Health(5))
    e2 = w.create_entity(Position(3, 4))
    assert w.component_for_entity(e1, Health).hp == 5
    assert sorted(e for e, _ in w.get_component(Position)) == [e1, e2]
    assert [e for e, _ in w.get_components(Position, Health)] == [e1]
    assert w.has_component(e2, Position) and not w.has_component(e2, Health)
    w.add_component(e2, Health(7))
    assert w.try_component(e2, Health).hp == 7
    assert w.remove_component(e2, Health).hp == 7
    assert w.try_component(e2, Health) is None
    with pytest.raises(KeyError):
        w.component_for_entity(e2, Health)
    w.delete_entity(e1)  # deferred, as in esper
    assert w.entity_exists(e1) is False
    assert w.component_for_entity(e1, Position).x == 1
    w.clear_dead_entities()
    with pytest.raises(KeyError):
        w.component_for_entity(e1, Position)
    with pytest.raises(KeyError):
        w.delete_entity(999, immediate=True)
    w.delete()


def test_each_world_is_its_own_esper_context() -> None:
    a, b = World(), World()
    ea = a.create_entity(Position(1))
    b.create_entity(Health(1))
    b.create_entity(Health(2))
    assert [e for e, _ in a.get_component(Position)] == [ea]
    assert a.get_component(Health) == []
    assert len(b.get_component(Health)) == 2
    a.activate()
    assert esper.get_component(Health) == []  # raw esper sees the active world
    a.delete()
    b.delete()


def test_checkpoint_restores_ids_and_values_exactly() -> None:
    w = World()
    ids = [w.create_entity(Position(i, -i), Health(i)) for i in range(5)]
    w.delete_entity(ids[1], immediate=True)
    w.create_entity(Plain("plain"))
    data = w.checkpoint()
    r = World.restore(data)
    assert sorted(r.get_entities()) == sorted(w.get_entities())
    for e in (ids[0], ids[2], ids[4]):
        assert r.component_for_entity(e, Position) == w.component_for_entity(e, Position)
        assert r.component_for_entity(e, Health).hp == e - ids[0]
    assert not r.entity_exists(ids[1])
    # New entities continue after the old ids, never reusing one.
    assert r.create_entity(Health()) == w.create_entity(Health())
    w.delete()
    r.delete()


def test_checkpoint_of_unloaded_class_keeps_fields_as_pending() -> None:
    w = World()

    @component
    class Ghost:
        boo: int = 3

    Ghost.__module__ = "systems.ghosts"  # as a system module's class would be
    Ghost.__qualname__ = "Ghost"
    e = w.create_entity(Ghost(9))
    data = w.checkpoint()
    r = World.restore(data, resolve=lambda key: None)
    (pending,) = r.components_for_entity(e)
    assert isinstance(pending, PendingComponent)
    assert pending.key == "systems.ghosts:Ghost" and pending.fields == {"boo": 9}
    # Checkpointing again keeps it intact.
    again = World.restore(r.checkpoint(), resolve=lambda key: Ghost)
    assert again.component_for_entity(e, Ghost).boo == 9
    for x in (w, r, again):
        x.delete()


def test_restore_rejects_garbage_and_leaves_world_untouched() -> None:
    w = World()
    e = w.create_entity(Health(3))
    with pytest.raises(CheckpointError):
        w.restore_into(b"not a checkpoint")
    assert w.component_for_entity(e, Health).hp == 3
    w.delete()


def test_copy_is_independent() -> None:
    w = World()
    e = w.create_entity(Position(1, 1))
    c = w.copy()
    c.component_for_entity(e, Position).x = 50
    assert w.component_for_entity(e, Position).x == 1
    w.delete()
    c.delete()

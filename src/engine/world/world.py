"""The world: every entity and component of a game, in its own esper context.

esper 3 keeps its database in module globals and switches between named contexts with
``esper.switch_world``. Each :class:`World` owns one such context; its methods switch to it
when needed and then call the esper function of the same name, so behaviour at the edges
(what raises ``KeyError``, when deletions take effect) is esper's.

Every esper function is here as a method of the same name and behaviour — entities,
components, queries, events (``set_handler``, ``dispatch_event``), processors
(``add_processor``, ``process``, ``timed_process``) — so a game written for esper runs on a
:class:`World` unchanged (``tests/test_esper_compat.py`` runs esper's own test suite against
it). Two additions, both for hot-swapping:

* **class aliases** — when a component class is reloaded, its old class object is aliased
  to the new one; queries and additions made with the old class (held by a module that
  imported it before the reload) act on the new class. No cost while no alias exists.
  An alias holds its old class only weakly: once nothing else uses the old class (the
  module that imported it was reloaded too), the alias goes and the old version with it.
* **resources** — per-world singletons that are not components (the renderer, the frame's
  pose), keyed by type: ``world.resources[Renderer]``. They are not checkpointed.
  ``world.input`` is the keyboard and mouse this frame (:class:`~engine.input.state.Input`).

And one difference in cost, not behaviour: esper throws every query cache away on any
change (a new entity, a removed component) and rebuilds each on its next use, which in a
world of 10,000 entities costs milliseconds per query, in the frame after a bullet was
fired. A :class:`World` notes which entities its own methods changed (and what they had
before) and brings the cached lists up to date from that note instead
(:meth:`World.update_queries`): new lists, never changed in place, so a loop over a list
fetched before the change goes on over what it had, as in esper. A change made around the
world (``esper.*`` called directly, a restore) is noticed and leaves the rebuild to esper.
"""

from __future__ import annotations

import itertools
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

import esper

from engine.input.state import Input
from engine.world.layout import QueryLayout

if TYPE_CHECKING:
    from engine.world.checkpoint import Snapshot

C = TypeVar("C")
P = TypeVar("P", bound=esper.Processor)

_world_ids = itertools.count(1)


class _Changes:
    """What a world's own methods changed since esper's query caches were last valid:
    entity -> the component types it had then (None: it did not exist). ``complete`` is
    False once anything else changed the world (then esper rebuilds)."""

    __slots__ = ("before", "complete")

    def __init__(self) -> None:
        self.before: dict[int, frozenset[type] | None] = {}
        self.complete = True

    def reset(self, complete: bool = True) -> None:
        self.before.clear()
        self.complete = complete


#: Per esper context (world name): what its World changed. See the module doc.
_changes: dict[str, _Changes] = {}
#: The thread inside one of a World's own changes (its ident), 0 when none: esper's
#: ``clear_cache`` called from anywhere else is a change made around the world.
_inside = [0]
_esper_clear_cache = esper.clear_cache


def _clear_cache_noticed() -> None:
    if _inside[0] != threading.get_ident():
        changes = _changes.get(esper.current_world)
        if changes is not None:
            changes.reset(complete=False)
    _esper_clear_cache()


esper.clear_cache = _clear_cache_noticed  # esper's functions call it by its global name


def _own(change: Callable[..., Any], *args: Any) -> Any:
    """Make a change through esper as one of a World's own (see ``_inside``)."""
    _inside[0] = threading.get_ident()
    try:
        return change(*args)
    finally:
        _inside[0] = 0


def _caught_up(
    cached: list[tuple[int, Any]],
    before: dict[int, frozenset[type] | None],
    entities: dict[int, dict[type, Any]],
    cts: tuple[type, ...],
    row: Callable[[dict[type, Any]], Any],
) -> list[tuple[int, Any]]:
    """The cached query on ``cts`` brought up to date with the changed entities (``before``:
    what each had): a new list, or ``cached`` itself if none of them is in it or joins it.
    ``row`` makes an entity's entry from its components."""
    gone = {e for e, had in before.items() if had is not None and had.issuperset(cts)}
    new = [
        (e, row(comps))
        for e in before
        if (comps := entities.get(e)) is not None and all(ct in comps for ct in cts)
    ]
    if gone:
        return [pair for pair in cached if pair[0] not in gone] + new
    return cached + new if new else cached


class World:
    """One esper world, owned by one engine.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Position:
        ...     x: float = 0.0
        >>> world = World()
        >>> e = world.create_entity(Position(1.0))
        >>> world.component_for_entity(e, Position).x
        1.0
    """

    def __init__(self, name: str | None = None, layout: QueryLayout | None = None) -> None:
        """``layout``: how long-lived query results are laid out again (the default's
        settings unless given; see :mod:`engine.world.layout`)."""
        self.name = name or f"engine-world-{next(_world_ids)}"
        self.resources: dict[type, Any] = {}
        # Keyed by id(old class), so the alias does not keep the old class (and through its
        # methods' globals, its whole module version) alive; a weak reference removes the
        # entry when the old class dies, before its id can be reused.
        self._aliases: dict[int, type] = {}
        self._alias_refs: dict[int, weakref.ref[type]] = {}
        self._changes = _changes.setdefault(self.name, _Changes())
        self._layout = layout if layout is not None else QueryLayout()
        previous = esper.current_world
        esper.switch_world(self.name)
        if previous != self.name:
            esper.switch_world(previous)

    # -- context --------------------------------------------------------------------
    def activate(self) -> None:
        """Make this world esper's current context (for code that calls ``esper.*``)."""
        if esper.current_world != self.name:
            esper.switch_world(self.name)

    def delete(self) -> None:
        """Free this world's esper context. The world must not be used afterwards."""
        _changes.pop(self.name, None)
        self._layout = QueryLayout()  # what it held (a copy being built) goes
        if esper.current_world == self.name:
            esper.switch_world("default")
        if self.name in esper.list_worlds():
            esper.delete_world(self.name)

    # -- class aliases (component reloads) ------------------------------------------
    def alias_component(self, old: type, new: type) -> None:
        """Route every use of ``old`` to ``new`` from now on (and earlier aliases of ``old``).

        The alias lasts as long as something else keeps ``old`` alive (a module that
        imported it, an instance of it); it never keeps ``old`` alive itself.
        """
        aliases = self._aliases
        for stale, target in list(aliases.items()):
            if target is old:
                aliases[stale] = new
        if old is not new:
            key = id(old)
            aliases[key] = new
            if key not in self._alias_refs:
                self._alias_refs[key] = weakref.ref(old, _forget(key, aliases, self._alias_refs))
        aliases.pop(id(new), None)
        ref = self._alias_refs.pop(id(new), None)
        del ref  # dropping the weakref also drops its callback

    def current_type(self, component_type: type[C]) -> type[C]:
        """The class a (possibly stale) component class resolves to."""
        return self._aliases.get(id(component_type), component_type)

    def alias_count(self) -> int:
        """How many old classes are still routed to a newer one (bounded by the live ones)."""
        return len(self._aliases)

    def _resolve(self, types: tuple[type, ...]) -> tuple[type, ...]:
        aliases = self._aliases
        return tuple(aliases.get(id(t), t) for t in types)

    # -- entities (esper-faithful) ---------------------------------------------------
    def create_entity(self, *components: Any) -> int:
        """Create an entity with optional components; returns its id (see ``esper``)."""
        self.activate()
        changes = self._begin_change()
        entity = _own(esper.create_entity)
        if changes.complete:
            changes.before[entity] = None
        for component in components:
            self.add_component(entity, component)
        return entity

    def delete_entity(self, entity: int, immediate: bool = False) -> None:
        """Delete an entity; deferred to the end of the frame unless ``immediate``.

        Raises ``KeyError`` if the entity does not exist (immediate) — as esper.
        """
        self.activate()
        if not immediate:  # nothing changes until clear_dead_entities
            esper.delete_entity(entity, immediate)
            return
        self._note(entity)
        _own(esper.delete_entity, entity, immediate)

    def entity_exists(self, entity: int) -> bool:
        self.activate()
        return esper.entity_exists(entity)

    def get_entities(self) -> Iterator[int]:
        """Yields the id of every entity, including ones marked for deletion this frame
        (a generator, as esper's: take ``list()`` of it before deleting while iterating)."""
        self.activate()
        return esper.get_entities()

    def clear_dead_entities(self) -> None:
        """Finish deferred deletions (the scheduler calls this at each frame boundary)."""
        self.activate()
        if not esper._dead_entities:
            return
        self._note(*esper._dead_entities)
        _own(esper.clear_dead_entities)

    def clear_database(self) -> None:
        """Delete every entity and component at once (processors and handlers stay)."""
        self.activate()
        esper.clear_database()
        self._changes.reset()  # esper emptied its caches: valid, and nothing to catch up

    # -- keeping esper's query caches up to date (see the module doc) -----------------
    def _begin_change(self) -> _Changes:
        """Before one of this world's own changes (this world active): whether the caches
        can be caught up with it later."""
        changes = self._changes
        if not esper._cache_dirty:  # valid caches: whatever was noted is in them
            if changes.before or not changes.complete:
                changes.reset()
        elif not changes.before and changes.complete:
            changes.complete = False  # stale from before, and not from this world's note
        return changes

    def _note(self, *entities: int) -> None:
        """Before one change to these entities' components: note what each had."""
        changes = self._begin_change()
        if changes.complete:
            before, db = changes.before, esper._entities
            for entity in entities:
                if entity not in before:
                    had = db.get(entity)
                    before[entity] = None if had is None else frozenset(had)

    def update_queries(self) -> bool:
        """Bring esper's cached queries up to date with this world's own changes since they
        were built, instead of rebuilding them. True if they are valid now; False if
        esper must rebuild them (something else changed the world, or so much changed
        that a rebuild is cheaper). The scheduler calls this between systems."""
        self.activate()
        changes = self._changes
        if not esper._cache_dirty:
            changes.reset()
            return True
        before = changes.before
        entities = esper._entities
        if not changes.complete or not before or len(before) > len(entities) // 4 + 16:
            changes.reset()
            return False
        singles = esper._get_component_cache
        for ct, cached in singles.items():
            singles[ct] = _caught_up(cached, before, entities, (ct,), lambda c, ct=ct: c[ct])
        multis = esper._get_components_cache
        for cts, cached in multis.items():
            multis[cts] = _caught_up(
                cached, before, entities, cts, lambda c, cts=cts: tuple(c[ct] for ct in cts)
            )
        esper._cache_dirty = False
        changes.reset()
        return True

    def lay_out_queries(self) -> bool:
        """One frame's share of laying long-lived query results out again, in fresh memory
        in the order a loop visits them (see :mod:`engine.world.layout`); the scheduler
        calls it at each frame boundary. True if it did any work."""
        self.activate()
        return self._layout.tick()

    @property
    def queries_laid_out(self) -> int:
        """How many cached query results have been laid out again so far."""
        return self._layout.laid_out

    def clear_cache(self) -> None:
        """Mark the query caches stale; they are rebuilt by the next query."""
        self.activate()
        esper.clear_cache()

    # -- components (esper-faithful) -------------------------------------------------
    def add_component(self, entity: int, component: Any, type_alias: type | None = None) -> None:
        """Add or replace a component; raises ``KeyError`` for an unknown entity."""
        self.activate()
        if self._aliases:
            component = self._upgrade(component)
            if type_alias is not None:
                type_alias = self._aliases.get(id(type_alias), type_alias)
        self._note(entity)
        _own(esper.add_component, entity, component, type_alias)

    def remove_component(self, entity: int, component_type: type[C]) -> C:
        self.activate()
        ct = self._aliases.get(id(component_type), component_type)
        self._note(entity)
        return _own(esper.remove_component, entity, ct)

    def try_remove_component(self, entity: int, component_type: type[C]) -> C | None:
        self.activate()
        ct = self._aliases.get(id(component_type), component_type)
        self._note(entity)
        return _own(esper.try_remove_component, entity, ct)

    def component_for_entity(self, entity: int, component_type: type[C]) -> C:
        """Raises ``KeyError`` if the entity or the component does not exist — as esper."""
        self.activate()
        ct = self._aliases.get(id(component_type), component_type)
        return esper.component_for_entity(entity, ct)

    def components_for_entity(self, entity: int) -> tuple[Any, ...]:
        self.activate()
        return esper.components_for_entity(entity)

    def has_component(self, entity: int, component_type: type) -> bool:
        self.activate()
        return esper.has_component(entity, self._aliases.get(id(component_type), component_type))

    def has_components(self, entity: int, *component_types: type) -> bool:
        self.activate()
        return esper.has_components(entity, *self._resolve(component_types))

    def get_component(self, component_type: type[C]) -> list[tuple[int, C]]:
        """Every ``(entity, component)`` of a type; a cached list, do not mutate it."""
        if esper.current_world != self.name:
            esper.switch_world(self.name)
        if self._aliases:
            component_type = self._aliases.get(id(component_type), component_type)
        if esper._cache_dirty and self._changes.before:
            self.update_queries()
        return esper.get_component(component_type)

    def get_components(self, *component_types: type) -> list[tuple[int, tuple[Any, ...]]]:
        """Every ``(entity, (c1, c2, ...))`` having all the types; a cached list."""
        if esper.current_world != self.name:
            esper.switch_world(self.name)
        if self._aliases:
            component_types = self._resolve(component_types)
        if esper._cache_dirty and self._changes.before:
            self.update_queries()
        return esper.get_components(*component_types)

    def try_component(self, entity: int, component_type: type[C]) -> C | None:
        self.activate()
        return esper.try_component(entity, self._aliases.get(id(component_type), component_type))

    def try_components(self, entity: int, *component_types: type) -> tuple[Any, ...] | None:
        self.activate()
        return esper.try_components(entity, *self._resolve(component_types))

    # -- events (esper-faithful, per world) -------------------------------------------
    def set_handler(self, name: str, func: Callable[..., None]) -> None:
        """Call ``func(*args)`` on every :meth:`dispatch_event` of ``name``.

        As esper, only a weak reference is kept: a handler whose function (or bound
        method's object) is gone is dropped. Handlers a system module registers are
        dropped when that module is swapped or unloaded (:meth:`drop_handlers_of`).
        """
        self.activate()
        esper.set_handler(name, func)

    def remove_handler(self, name: str, func: Callable[..., None]) -> None:
        """Stop sending ``name`` events to ``func``; nothing happens if it was not set."""
        self.activate()
        esper.remove_handler(name, func)

    def dispatch_event(self, name: str, *args: Any) -> None:
        """Call every handler of ``name`` with ``args`` now, in no particular order.

        A handler that raises propagates to the caller (the system that dispatched), as
        in esper; the scheduler then treats it as that system's exception.
        """
        self.activate()
        esper.dispatch_event(name, *args)

    def drop_handlers_of(self, module: str | types.ModuleType) -> int:
        """Remove the handlers of one module version (a module object: the functions whose
        globals are its namespace) or of every version of a module name (a string, and its
        submodules); the count.

        The loader calls this once a module version is swapped out, so no stale version's
        handler ever receives an event (the new version's, of the same name, stay).
        """
        self.activate()
        dropped = 0
        for name, refs in list(esper.event_registry.items()):
            for ref in list(refs):
                func = ref()
                if func is None or _defined_in(func, module):
                    refs.discard(ref)
                    dropped += func is not None
            if not refs:
                del esper.event_registry[name]
        return dropped

    # -- processors (esper-faithful) ---------------------------------------------------
    def add_processor(self, processor: esper.Processor, priority: int = 0) -> None:
        """Add a processor; :meth:`process` runs processors by descending priority."""
        self.activate()
        esper.add_processor(processor, priority)

    def remove_processor(self, processor_type: type[esper.Processor]) -> None:
        """Remove the processor of that type, if any."""
        self.activate()
        esper.remove_processor(processor_type)

    def get_processor(self, processor_type: type[P]) -> P | None:
        """The processor instance of that type, or ``None``."""
        self.activate()
        return esper.get_processor(processor_type)

    def process(self, *args: Any, **kwargs: Any) -> None:
        """Finish deferred deletions, then call every processor's ``process``."""
        self.activate()
        esper.process(*args, **kwargs)

    def timed_process(self, *args: Any, **kwargs: Any) -> None:
        """As :meth:`process`, and record each processor's time in :attr:`process_times`."""
        self.activate()
        esper.timed_process(*args, **kwargs)

    @property
    def process_times(self) -> dict[str, int]:
        """Milliseconds each processor took in the last :meth:`timed_process`."""
        self.activate()
        return esper.process_times

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint(self, skipped: list[str] | None = None) -> bytes:
        """Every live entity and component as bytes; see :mod:`engine.world.checkpoint`.

        A component that cannot be pickled is left out (one line per class in
        ``skipped``), the rest of the world is kept."""
        from engine.world.checkpoint import dump_world

        return dump_world(self, skipped=skipped)

    def checkpoint_to(self, file: IO[bytes], skipped: list[str] | None = None) -> None:
        """Write :meth:`checkpoint`'s bytes to ``file``, streamed (large arrays unbuffered)."""
        from engine.world.checkpoint import dump_world

        dump_world(self, file, skipped)

    @classmethod
    def restore(cls, data: bytes, resolve: Any = None, name: str | None = None) -> World:
        """A new world holding a checkpoint's entities, with the same ids.

        ``resolve(key) -> class | None`` finds component classes (default: the classes
        marked with ``@engine.component`` in this process). Raises
        :class:`~engine.world.checkpoint.CheckpointError` on unreadable bytes.
        """
        from engine.world.checkpoint import default_resolver, load_into

        world = cls(name)
        try:
            load_into(world, data, resolve or default_resolver)
        except BaseException:
            world.delete()
            raise
        return world

    def snapshot(self) -> Snapshot:
        """Every live entity and component, to put back later in this process.

        A :class:`~engine.world.checkpoint.Snapshot`: :meth:`checkpoint`'s bytes, plus the
        components those leave out (they cannot be pickled) held by reference, so that
        :meth:`restore_into` puts them back, the very same objects. The loader takes one
        before a swap's hooks run, to undo the swap."""
        from engine.world.checkpoint import take_snapshot

        return take_snapshot(self)

    def restore_into(self, data: bytes | Snapshot, resolve: Any = None) -> None:
        """Replace this world's entities by a checkpoint's or a :meth:`snapshot`'s
        (resources are kept)."""
        from engine.world.checkpoint import Snapshot, default_resolver, load_into

        if isinstance(data, Snapshot):
            load_into(self, data.data, resolve or default_resolver, data.kept)
        else:
            load_into(self, data, resolve or default_resolver)

    def copy(self, resolve: Any = None) -> World:
        """An independent copy of every entity (for running candidate code on it)."""
        return World.restore(self.checkpoint(), resolve)

    # -- resources ---------------------------------------------------------------------
    @property
    def input(self) -> Input:
        """Keyboard and mouse as of this frame: ``self.resources[Input]``, made (with
        nothing pressed) on first use. See :class:`~engine.input.state.Input`."""
        found = self.resources.get(Input)
        if found is None:
            found = self.resources[Input] = Input(self)
        return found

    # -- whole-world views ------------------------------------------------------------
    def entity_count(self) -> int:
        self.activate()
        return sum(1 for e in esper.get_entities() if esper.entity_exists(e))

    def component_types(self) -> list[type]:
        """Every component class currently stored in the world."""
        self.activate()
        return list(esper._components)

    def entities_with(self, component_type: type) -> Iterable[int]:
        self.activate()
        return list(esper._components.get(component_type, ()))

    def replace_components(self, old: type, replacements: dict[int, Any]) -> None:
        """Swap every ``old`` instance for ``replacements[entity]`` (stored under its own class).

        Used by component migration at a frame boundary; aliases are bypassed so the
        exact class ``old`` is the one removed.
        """
        self.activate()
        for entity, new_instance in replacements.items():
            esper.remove_component(entity, old)
            esper.add_component(entity, new_instance)

    def _upgrade(self, component: Any) -> Any:
        target = self._aliases.get(id(type(component)))
        if target is None:
            return component
        from engine.world.migration import migrate_instance

        return migrate_instance(component, target)


def _forget(
    key: int, aliases: dict[int, type], refs: dict[int, weakref.ref[type]]
) -> Callable[[weakref.ref[type]], None]:
    """A weakref callback that drops the alias of a class that just died.

    It holds the two dicts, never the world, so an alias cannot keep a world alive.
    """

    def forget(ref: weakref.ref[type]) -> None:
        if refs.get(key) is ref:
            refs.pop(key, None)
            aliases.pop(key, None)

    return forget


def _defined_in(func: Callable[..., Any], module: str | types.ModuleType) -> bool:
    """Whether a handler (function or bound method) belongs to ``module``."""
    code = getattr(func, "__func__", func)
    if isinstance(module, types.ModuleType):
        return getattr(code, "__globals__", None) is module.__dict__
    owner = getattr(code, "__module__", None) or ""
    return owner == module or owner.startswith(module + ".")

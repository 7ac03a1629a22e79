"""Serializing a world to bytes and back, entity ids kept.

A checkpoint stores, per entity, each component as ``(key, fields)`` — its class's stable
key and its field values — never the class object, because the class may be reloaded
between the checkpoint and the restore. Restoring builds each component from the class
that the key resolves to *now* (with the migration rules), so a checkpoint taken under
version 3 of a module restores into version 4.

A key that resolves to nothing (its module is not loaded yet) becomes a
:class:`PendingComponent` that keeps the fields; the loader turns it into the real class as
soon as the module defining it is loaded. Nothing is dropped.

Field values are pickled. Classes defined in system modules are pickled by key (a call of
:func:`_system_type` with the key, resolved when loading), so values may hold them even
across reloads. Files written before used ``persistent_id`` for the same; they still load.

A component that cannot be pickled (it holds a lock, a lambda, an open file) is left out of
a checkpoint, and named. A :class:`Snapshot` (:func:`take_snapshot`, the loader's undo of a
swap) never leaves the process, so it keeps such a component by reference instead: its
bytes are the checkpoint's, and restoring it puts the very same object back on its entity,
at its place among the entity's components, under the class it had, with the attributes it
had. Everything else in a snapshot is restored from the bytes, as a checkpoint is.
"""

from __future__ import annotations

import importlib
import io
import itertools
import pickle
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

import esper

from engine.world.components import REGISTRY, component_key
from engine.world.migration import (
    build_instance,
    component_state,
    field_names,
    lay_out_floats,
    shells_in_address_order,
)

FORMAT = "engine-checkpoint"
VERSION = 1

Resolver = Callable[[str], "type | None"]


class CheckpointError(Exception):
    """The bytes are not a checkpoint this engine can read."""


class PendingComponent:
    """A component whose class is not loaded yet; ``fields`` waits for it."""

    key: str = ""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __repr__(self) -> str:
        return f"PendingComponent({self.key!r}, {self.fields!r})"


_pending_types: dict[str, type[PendingComponent]] = {}


class KeptComponent(NamedTuple):
    """A component a :class:`Snapshot` holds by reference, because pickle refuses it."""

    entity: int
    #: Its place among its entity's components (their order is put back too).
    index: int
    #: The class it is stored under (the class of that moment, which an undo wants back).
    ctype: type
    instance: Any
    #: A shallow copy of its ``__dict__`` (None for an object without one): the undo puts
    #: back what its attributes referred to, not what happened inside those objects.
    attrs: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A world held in memory to be put back (:meth:`engine.World.restore_into`).

    ``data`` is what :func:`dump_world` writes (a checkpoint); ``kept`` the components
    it left out because they cannot be pickled, by reference. Never written to disk."""

    data: bytes
    kept: tuple[KeptComponent, ...] = ()


def pending_type(key: str) -> type[PendingComponent]:
    """One placeholder class per key, so an entity can hold several pending components."""
    t = _pending_types.get(key)
    if t is None:
        t = type(f"Pending[{key}]", (PendingComponent,), {"key": key})
        _pending_types[key] = t
    return t


def _is_reloadable(cls: type) -> bool:
    return cls.__module__ == "systems" or cls.__module__.startswith("systems.")


def _system_type(key: str) -> type:
    """Stands for a system module's class in a checkpoint; the unpickler resolves it."""
    raise pickle.UnpicklingError(f"{key}: a system class is resolved by the engine's loader")


class _Pickler(pickle.Pickler):
    # reducer_override, not persistent_id: pickle skips it for ints, floats, strings and
    # memoized objects, so it runs a few times per entity rather than for every value.
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and _is_reloadable(obj):
            return (_system_type, (component_key(obj),))
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, resolve: Resolver) -> None:
        super().__init__(io.BytesIO(data))
        self._resolve = resolve

    def find_class(self, module: str, name: str) -> Any:
        if module == __name__ and name == "_system_type":
            return self._resolve_type
        return super().find_class(module, name)

    def _resolve_type(self, key: str) -> type:
        cls = self._resolve(key)
        return cls if cls is not None else pending_type(key)

    def persistent_load(self, pid: Any) -> Any:  # checkpoints written before
        kind, key = pid
        if kind != "type":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self._resolve_type(key)


def default_resolver(key: str) -> type | None:
    """A class marked ``@engine.component`` in this process, or one importable by name."""
    cls = REGISTRY.get(key)
    if cls is not None:
        return cls
    module_name, _, qualname = key.partition(":")
    if _is_reloadable(type("_", (), {"__module__": module_name})):
        return None  # system modules are found through the loader, never imported
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) else None


def peek_next_entity() -> int:
    """The id esper's current world gives its next entity, without using it up.

    esper keeps a private ``itertools.count``; reading it consumes a value, so it is
    replaced by a fresh counter starting at that value. (Wrapping it instead, as a
    ``chain`` of the value and the old counter, nests one more iterator per checkpoint and
    makes ``create_entity`` slower for ever.)
    """
    next_id = next(esper._entity_count)
    esper._entity_count = itertools.count(next_id)
    return next_id


def dump_world(
    world: Any,
    file: IO[bytes] | None = None,
    skipped: list[str] | None = None,
    kept: list[KeptComponent] | None = None,
) -> bytes:
    """Serialize every live entity of ``world`` (an :class:`engine.World`).

    Returns the bytes; with ``file``, writes them there instead (streamed: a large
    array goes from its own memory to the file, never through one big ``bytes``) and
    returns ``b""``. A component that cannot be pickled (it holds a lambda, a lock, an
    open file...) is left out of the checkpoint, not the whole world: its entity keeps
    every other component, and ``skipped`` (if given) gets one line per component left
    out, naming its class, where the class is defined, and why; ``kept`` (if given) gets
    each such component itself (see :func:`take_snapshot`). Raises what pickling
    raises only when the world fails for another reason.
    """
    world.activate()
    entities = []
    db = esper._entities  # this world's, whatever a component's pickling switches to
    dead = esper._dead_entities
    # Per class, once per checkpoint (never kept: a cache here would keep old classes).
    keys: dict[type, tuple[str, frozenset[str] | None]] = {}
    for entity, comps in db.items():
        if entity in dead:
            continue
        items = []
        for ctype, instance in comps.items():
            if isinstance(instance, PendingComponent):
                items.append((instance.key, instance.fields))
                continue
            known = keys.get(ctype)
            if known is None:
                known = keys[ctype] = (component_key(ctype), field_names(type(instance)))
            items.append((known[0], component_state(instance, known[1])))
        entities.append((entity, items))
    max_id = max(db, default=0)
    next_id = peek_next_entity()
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "next_entity": max(next_id, max_id + 1),
        "entities": entities,
    }
    try:
        return _dump(payload, file)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        refused = _leave_out_unpicklable(entities)
        if not refused:
            raise exc from None
    if kept is not None:
        for entity, index, _, _ in refused:
            ctype, instance = list(db[entity].items())[index]
            attrs = getattr(instance, "__dict__", None)
            attrs = dict(attrs) if isinstance(attrs, dict) else None
            kept.append(KeptComponent(entity, index, ctype, instance, attrs))
    if skipped is not None:
        skipped.extend(_left_out_lines(refused, {k: t for t, (k, _) in keys.items()}))
    if file is not None:  # start the file again: the failed dump wrote part of it
        file.seek(0)
        file.truncate()
    return _dump(payload, file)


def take_snapshot(world: Any) -> Snapshot:
    """``world`` as a :class:`Snapshot`: a checkpoint's bytes, plus the components those
    leave out (they cannot be pickled) held as they are, so that putting the snapshot
    back loses nothing. Costs what a checkpoint costs."""
    kept: list[KeptComponent] = []
    data = dump_world(world, kept=kept)
    return Snapshot(data, tuple(kept))


def _dump(payload: dict[str, Any], file: IO[bytes] | None) -> bytes:
    if file is not None:
        _Pickler(file, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
        return b""
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    return buf.getvalue()


def _leave_out_unpicklable(
    entities: list[tuple[int, list[tuple[str, Any]]]],
) -> list[tuple[int, int, str, str]]:
    """Remove, in place, every component whose state cannot be pickled; for each, its
    ``(entity, place among the entity's components, key, why)``."""
    refused = []
    for entity, items in entities:
        keep = []
        for index, (key, state) in enumerate(items):
            try:
                _Pickler(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(state)
            except Exception as exc:  # noqa: BLE001 - whatever pickle raises, it is left out
                refused.append((entity, index, key, f"{type(exc).__name__}: {exc}"))
                continue
            keep.append((key, state))
        items[:] = keep
    return refused


def _left_out_lines(
    refused: Iterable[tuple[int, int, str, str]], classes: dict[str, type]
) -> list[str]:
    """One line for each class left out (``file:line: key: why (N entities)``)."""
    why: dict[str, tuple[str, int]] = {}
    for _, _, key, reason in refused:
        first, count = why.get(key, (reason, 0))
        why[key] = (first, count + 1)
    lines = []
    for key, (reason, count) in why.items():
        where = _defined_at(classes.get(key))
        lines.append(
            f"{where}{key} left out of the checkpoint ({count} "
            f"entit{'y' if count == 1 else 'ies'}): {reason}"
        )
    return lines


def _defined_at(cls: type | None) -> str:
    """``file:line: `` where a class is defined, or ``""``."""
    if cls is None:
        return ""
    try:
        import inspect

        lines, start = inspect.getsourcelines(cls)
        # The ``class`` line, not the decorator above it.
        start += next((i for i, line in enumerate(lines) if line.lstrip().startswith("class ")), 0)
        return f"{inspect.getsourcefile(cls)}:{start}: "
    except (OSError, TypeError):
        return ""


def load_into(
    world: Any,
    data: bytes,
    resolve: Resolver = default_resolver,
    kept: Iterable[KeptComponent] = (),
) -> None:
    """Replace ``world``'s entities with the checkpoint's (ids kept).

    ``kept``: the components a :class:`Snapshot` held by reference; each goes back on its
    entity as it is, at its place, under its class, with its attributes put back.
    Raises :class:`CheckpointError` if ``data`` is not a readable checkpoint; the world is
    left untouched in that case.
    """
    try:
        payload = _Unpickler(data, resolve).load()
    except Exception as exc:
        raise CheckpointError(f"not a readable checkpoint: {exc!r}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError("not an engine checkpoint (bad format tag)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint version {payload.get('version')} is not {VERSION}")
    kept = tuple(kept)
    held: dict[int, list[KeptComponent]] = {}
    for k in kept:
        held.setdefault(k.entity, []).append(k)
    built: list[tuple[int, list[tuple[Any, type | None]]]] = []
    classes: dict[str, type | None] = {}
    counts: Counter[str] = Counter()
    for _, items in payload["entities"]:
        counts.update(key for key, _ in items)
    # Each class's instances in the order the entities come (see shells_in_address_order).
    shells: dict[str, Iterator[Any]] = {}
    of_class: dict[str, list[Any]] = {}  # the instances built, in entity order
    for entity, items in payload["entities"]:
        comps: list[tuple[Any, type | None]] = []
        for key, fields in items:
            if key not in classes:
                cls = classes[key] = resolve(key)
                if cls is not None:
                    order = shells_in_address_order(cls, counts[key])
                    shells[key] = order or itertools.repeat(None)
            cls = classes[key]
            if cls is None:
                instance = pending_type(key)(fields)
            else:
                instance = build_instance(cls, fields, next(shells[key]))
                of_class.setdefault(key, []).append(instance)
            comps.append((instance, None))
        for k in held.get(int(entity), ()):  # in order of place: each lands where it was
            comps.insert(k.index, (k.instance, k.ctype))
        built.append((int(entity), comps))
    for instances in of_class.values():
        lay_out_floats(instances)  # the unpickled floats lie wherever the heap had room
    world.clear_database()
    world.activate()
    for entity, comps in built:
        esper._entities[entity] = {}
        for c, ctype in comps:
            esper.add_component(entity, c, ctype)
    esper._entity_count = itertools.count(int(payload["next_entity"]))  # type: ignore[assignment]
    esper.clear_cache()
    for k in kept:
        if k.attrs is not None:
            attrs = k.instance.__dict__
            attrs.clear()
            attrs.update(k.attrs)

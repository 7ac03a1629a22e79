"""What changed between two worlds: entities added and removed, fields that diverge, by how much.

The preview process runs candidate code on a copy of the live world; after some frames the
two worlds are compared and the answer is shown to the user and written to the stats JSON::

    diff = diff_worlds(live, preview, labels=("live", "preview"))
    report(diff.summary())   # "Transform.position: 812 of 1000 entities differ, max 3.2, ..."
    stats["world_diff"] = diff.to_json()

Components are matched by their stable key (:func:`~engine.world.components.component_key`),
never by class object, so a world restored from a checkpoint, or running another version of
a module, compares with the live one. A component whose class is not loaded
(:class:`~engine.world.checkpoint.PendingComponent`) compares by its stored fields.

Fields are read with :func:`~engine.world.migration.component_state` (dataclasses, plain
objects), the same reading a checkpoint makes. A component that is itself a value (a numpy
array, a pyrr vector, a number, a tuple) is compared whole, under the field name ``""``.
For each field of each component type, over the entities holding that component in both
worlds:

* **numbers** (ints, floats, numpy scalars; numpy arrays and pyrr vectors; tuples and lists
  of numbers) give how many entities differ, the largest absolute difference and the mean
  of the differing entities' differences (an array's difference is its largest element's).
  NaN equals NaN; a difference that is not finite (inf against a number, NaN against one)
  counts as ``inf``. Arrays of the same shape are compared in one numpy operation; a large
  one (over :data:`BIG_ARRAY` elements) on its own, a :data:`CHUNK` of elements at a time.
* **other values** (strings, enums, objects) give how many differ (``==``; objects that do
  not define ``==`` compare by their fields, nested a few levels). A value whose ``==``
  raises or gives no truth value counts as differing.

The cost is a few Python operations per field per entity (``bench/world_diff.py``): a
10 000-entity world with 5 components diffs in well under a second, about what one
checkpoint of it costs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import esper
import numpy as np

from engine.world.checkpoint import PendingComponent
from engine.world.components import component_key
from engine.world.migration import component_state, field_names

__all__ = ["ComponentDiff", "FieldDiff", "WorldDiff", "diff_checkpoints", "diff_worlds"]

#: Entity ids listed in :meth:`WorldDiff.to_json` (the counts are always whole).
JSON_IDS = 20
#: Elements above which an array is compared on its own, a :data:`CHUNK` at a time, rather
#: than stacked with the others of its shape (which would copy it whole, several times).
BIG_ARRAY = 1 << 16
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One field of one component type, over the entities that hold it in both worlds."""

    component: str  #: the component's key, ``"module:QualName"``
    field: str  #: ``""`` when the component is itself one value (an array, a vector)
    compared: int  #: entities compared
    differing: int  #: of those, how many differ
    numeric: bool  #: whether the values were numbers (then the magnitudes mean something)
    max_abs: float = 0.0  #: the largest absolute difference (numbers only)
    mean_abs: float = 0.0  #: the mean absolute difference of the differing entities

    @property
    def name(self) -> str:
        """``Transform.position``: the class's own name (not its module or the classes and
        functions it is defined in) and the field's."""
        short = _short(self.component)
        return f"{short}.{self.field}" if self.field else short

    def line(self) -> str:
        """One line for a person: ``Transform.position: 812 of 1000 entities differ, max 3.2,
        mean 0.41``."""
        text = f"{self.name}: {self.differing} of {self.compared} entities differ"
        if self.numeric and self.differing:
            text += f", max {_num(self.max_abs)}, mean {_num(self.mean_abs)}"
        return text

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "field": self.field,
            "compared": self.compared,
            "differing": self.differing,
        }
        if self.numeric:
            d["max_abs"] = _json_float(self.max_abs)
            d["mean_abs"] = _json_float(self.mean_abs)
        return d


@dataclass(frozen=True, slots=True)
class ComponentDiff:
    """One component type: who holds it on each side, and each field compared."""

    component: str  #: the key, ``"module:QualName"``
    before: int  #: entities holding it in the first world
    after: int  #: entities holding it in the second world
    added_to: int = 0  #: entities in both worlds that hold it only in the second
    removed_from: int = 0  #: entities in both worlds that hold it only in the first
    fields: tuple[FieldDiff, ...] = ()  #: every field compared, differing or not

    @property
    def changed(self) -> bool:
        return bool(
            self.added_to
            or self.removed_from
            or not self.before
            or not self.after
            or any(f.differing for f in self.fields)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "before": self.before,
            "after": self.after,
            "added_to": self.added_to,
            "removed_from": self.removed_from,
            "fields": [f.to_json() for f in self.fields if f.differing],
            "unchanged_fields": [f.field for f in self.fields if not f.differing],
        }


@dataclass(frozen=True, slots=True)
class WorldDiff:
    """The difference between two worlds, ``before`` and ``after`` (e.g. live and preview).

    ``added``: ids of entities only in ``after``; ``removed``: only in ``before`` (sorted).
    ``components``: every component type found in either world, by key.
    """

    labels: tuple[str, str]
    entities_before: int
    entities_after: int
    added: tuple[int, ...]
    removed: tuple[int, ...]
    components: tuple[ComponentDiff, ...] = ()

    @property
    def empty(self) -> bool:
        """Whether the two worlds hold the same entities with equal components."""
        return not self.added and not self.removed and not any(c.changed for c in self.components)

    @property
    def types_added(self) -> list[str]:
        """Component types held by some entity in ``after`` and by none in ``before``."""
        return [c.component for c in self.components if not c.before]

    @property
    def types_removed(self) -> list[str]:
        """Component types held in ``before`` and by no entity in ``after``."""
        return [c.component for c in self.components if not c.after]

    def changed_fields(self) -> list[FieldDiff]:
        """Fields that differ somewhere, the most widespread first (then the largest)."""
        found = [f for c in self.components for f in c.fields if f.differing]
        found.sort(key=lambda f: (-f.differing, -f.max_abs, f.component, f.field))
        return found

    def field(self, name: str) -> FieldDiff | None:
        """The field named ``"Transform.position"`` (or by its full key,
        ``"systems.physics:Transform.position"``); ``None`` if no such field was compared."""
        for c in self.components:
            for f in c.fields:
                if name in (f.name, f"{c.component}.{f.field}" if f.field else c.component):
                    return f
        return None

    def summary(self, lines: int = 10) -> str:
        """At most ``lines`` lines for a person, the most telling first; the last one says
        how many were left out. ``lines`` below 1 counts as 1."""
        before, after = self.labels
        out = [
            f"{self.entities_before} entities in {before}, {self.entities_after} in {after}: "
            + (
                "no difference"
                if self.empty
                else f"{len(self.added)} added, {len(self.removed)} removed"
            )
        ]
        for c in self.components:
            if not c.before:
                out.append(f"{_short(c.component)}: only in {after} ({c.after} entities)")
            elif not c.after:
                out.append(f"{_short(c.component)}: only in {before} ({c.before} entities)")
            elif c.added_to or c.removed_from:
                out.append(
                    f"{_short(c.component)}: added to {c.added_to} entities, "
                    f"removed from {c.removed_from}"
                )
        out.extend(f.line() for f in self.changed_fields())
        limit = max(1, lines)
        if len(out) > limit:
            left = len(out) - (limit - 1)
            out = out[: limit - 1] + [f"... and {left} more"] if limit > 1 else out[:1]
        return "\n".join(out)

    def to_json(self, ids: int = JSON_IDS) -> dict[str, Any]:
        """Plain data (numbers, strings, lists) for the stats JSON; at most ``ids`` entity ids
        per list, the counts whole. An infinite difference is written as ``"inf"``."""
        return {
            "labels": list(self.labels),
            "empty": self.empty,
            "entities": {"before": self.entities_before, "after": self.entities_after},
            "added": {"count": len(self.added), "ids": list(self.added[:ids])},
            "removed": {"count": len(self.removed), "ids": list(self.removed[:ids])},
            "types_added": self.types_added,
            "types_removed": self.types_removed,
            "components": [c.to_json() for c in self.components if c.changed],
            "changed_fields": [
                {"name": f.name, **f.to_json(), "component": f.component}
                for f in self.changed_fields()
            ],
        }


# -- diffing ----------------------------------------------------------------------------------
def diff_worlds(
    before: Any, after: Any, labels: tuple[str, str] = ("before", "after")
) -> WorldDiff:
    """Compare two :class:`~engine.world.world.World` objects (or anything with ``activate``
    that owns an esper context). Neither is changed, and esper's current world is the same
    afterwards (code that calls ``esper.*`` directly still acts on its own world); entities
    marked for deletion count as gone. Raises nothing of its own: a value that cannot be
    compared counts as differing.
    """
    current = esper.current_world
    try:
        a_live, a_types = _read(before)
        b_live, b_types = _read(after)
    finally:
        if esper.current_world != current:
            esper.switch_world(current)
    common = a_live & b_live
    components = []
    for key in sorted(a_types.keys() | b_types.keys()):
        a_map = a_types.get(key, {})
        b_map = b_types.get(key, {})
        shared = [e for e in a_map if e in b_map]
        shared.sort()
        added_to = sum(1 for e in b_map if e in common and e not in a_map)
        removed_from = sum(1 for e in a_map if e in common and e not in b_map)
        fields = _diff_fields(key, [a_map[e] for e in shared], [b_map[e] for e in shared])
        components.append(
            ComponentDiff(key, len(a_map), len(b_map), added_to, removed_from, tuple(fields))
        )
    return WorldDiff(
        labels=labels,
        entities_before=len(a_live),
        entities_after=len(b_live),
        added=tuple(sorted(b_live - a_live)),
        removed=tuple(sorted(a_live - b_live)),
        components=tuple(components),
    )


def diff_checkpoints(
    before: bytes,
    after: bytes,
    resolve: Callable[[str], type | None] | None = None,
    labels: tuple[str, str] = ("before", "after"),
) -> WorldDiff:
    """Compare two checkpoints (the bytes of :meth:`World.checkpoint`), each restored into a
    world of its own with ``resolve`` (see :meth:`World.restore`) and freed afterwards.

    Raises :class:`~engine.world.checkpoint.CheckpointError` if either is unreadable.
    """
    from engine.world.world import World

    a = World.restore(before, resolve)
    try:
        b = World.restore(after, resolve)
        try:
            return diff_worlds(a, b, labels)
        finally:
            b.delete()
    finally:
        a.delete()


# -- reading a world ---------------------------------------------------------------------------
def _read(world: Any) -> tuple[set[int], dict[str, dict[int, dict[str, Any]]]]:
    """The live entities, and per component key: entity -> the component's fields."""
    world.activate()
    dead = esper._dead_entities
    by_key: dict[str, dict[int, dict[str, Any]]] = {}
    live: set[int] = set()
    # Per class, for this call only (a cache kept longer would keep old classes alive).
    readers: dict[type, tuple[str, Callable[[Any], dict[str, Any]]]] = {}
    for entity, comps in esper._entities.items():
        if entity in dead:
            continue
        live.add(entity)
        for ctype, instance in comps.items():
            known = readers.get(ctype)
            if known is None:
                known = readers[ctype] = _reader(ctype, instance)
            key, read = known
            if isinstance(instance, PendingComponent):
                key = instance.key
            slot = by_key.get(key)
            if slot is None:
                slot = by_key[key] = {}
            slot[entity] = read(instance)
    return live, by_key


_WHOLE_VALUES = (np.ndarray, numbers.Number, str, bytes, tuple, list, dict, set, frozenset)


def _reader(ctype: type, instance: Any) -> tuple[str, Callable[[Any], dict[str, Any]]]:
    """The key of a component class and how to read its fields."""
    if isinstance(instance, PendingComponent):
        return "", lambda c: c.fields
    key = component_key(ctype)
    if isinstance(instance, _WHOLE_VALUES):
        return key, lambda c: {"": c}
    names = field_names(type(instance))
    if names is None:
        return key, component_state

    def read(c: Any) -> dict[str, Any]:
        # Fields that are plain attributes are read in place: the diff never writes them.
        own = getattr(c, "__dict__", None)
        if own is not None and own.keys() >= names:
            return own
        return component_state(c, names)

    return key, read


# -- comparing columns -------------------------------------------------------------------------
_MISSING = object()
_NUM, _ARR, _OTHER = 0, 1, 2


def _kind_of(t: type) -> int:
    if t is bool or t is np.bool_:
        return _OTHER
    if issubclass(t, numbers.Real):
        return _NUM
    if issubclass(t, np.ndarray):
        return _ARR
    return _OTHER


#: Types whose ``==`` is exact and cheap (NaN aside, which takes the long way).
_EQ_FAST = frozenset({int, float, str, bytes, tuple, bool, type(None)})
_REALS = frozenset({int, float, np.float64, np.float32, np.int64, np.int32})


def _numbers_only(values: Any) -> bool:
    """Whether a tuple or list holds numbers only (not bools), and at least one."""
    return bool(values) and all(type(v) in _REALS or _kind_of(type(v)) == _NUM for v in values)


def _is_numeric(value: Any) -> bool:
    kind = _kind_of(type(value))
    if kind == _ARR:
        return np.asarray(value).dtype.kind in "biufc"
    return kind == _NUM or (type(value) in (tuple, list) and _numbers_only(value))


def _diff_fields(
    key: str, a_states: list[dict[str, Any]], b_states: list[dict[str, Any]]
) -> list[FieldDiff]:
    names: dict[str, None] = {}
    for states in (a_states, b_states):
        last: Any = None  # most instances of a class have the same fields as the one before
        for s in states:
            ks = s.keys()
            if ks != last:
                names.update(dict.fromkeys(ks))
                last = ks
    out = []
    for name in names:
        col_a = [s.get(name, _MISSING) for s in a_states]
        col_b = [s.get(name, _MISSING) for s in b_states]
        out.append(_diff_column(key, name, col_a, col_b))
    return out


def _diff_column(key: str, name: str, col_a: list[Any], col_b: list[Any]) -> FieldDiff:
    kinds: dict[type, int] = {}
    differing = 0
    magnitudes: list[float] = []  # of the differing numeric entities
    arrays: dict[tuple[tuple[int, ...], str], tuple[list[Any], list[Any]]] = {}
    numeric = bool(col_a) and _is_numeric(col_a[0])
    for x, y in zip(col_a, col_b, strict=True):
        if x is y:
            continue
        tx, ty = type(x), type(y)
        if tx is ty and tx in _EQ_FAST:  # the common case: an unchanged value
            try:
                if x == y:
                    continue
            except Exception:  # noqa: BLE001 - a tuple of arrays: compared below, item by item
                pass
        kx = kinds.get(tx)
        if kx is None:
            kx = kinds[tx] = _kind_of(tx)
        ky = kinds.get(ty)
        if ky is None:
            ky = kinds[ty] = _kind_of(ty)
        if kx == _NUM and ky == _NUM:
            numeric = True
            if x == y or (x != x and y != y):  # NaN equals NaN here
                continue
            differing += 1
            try:
                d = abs(x - y)
                d = float(d) if d == d else math.inf
            except (OverflowError, TypeError, ValueError):
                d = math.inf
            magnitudes.append(d)
            continue
        if kx == _OTHER and ky == _OTHER and tx is ty and (tx is tuple or tx is list):
            if len(x) == len(y) and _numbers_only(x) and _numbers_only(y):
                kx = ky = _ARR  # a tuple of numbers is a vector
        if kx == _ARR and ky == _ARR:
            xa, ya = np.asarray(x), np.asarray(y)
            if xa.shape == ya.shape and xa.dtype.kind in "biufc" and ya.dtype.kind in "biufc":
                numeric = True
                if xa.size > BIG_ARRAY:
                    worst = _diff_big_array(xa, ya)
                    if worst is not None:
                        differing += 1
                        magnitudes.append(worst)
                    continue
                wide = "c" if "c" in xa.dtype.kind + ya.dtype.kind else "f"
                group = arrays.get((xa.shape, wide))
                if group is None:
                    group = arrays[(xa.shape, wide)] = ([], [])
                group[0].append(xa)
                group[1].append(ya)
                continue
        if not _same(x, y, 3):
            differing += 1
    for xs, ys in arrays.values():
        d, mags = _diff_arrays(xs, ys)
        differing += d
        magnitudes.extend(mags)
    max_abs = max(magnitudes, default=0.0)
    mean_abs = math.fsum(magnitudes) / len(magnitudes) if magnitudes else 0.0
    if math.isnan(mean_abs):
        mean_abs = math.inf
    return FieldDiff(key, name, len(col_a), differing, numeric, max_abs, mean_abs)


def _diff_arrays(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[int, list[float]]:
    """How many of the same-shaped pairs differ, and each differing pair's largest
    element difference; one numpy operation for all of them."""
    a, b = np.stack(xs), np.stack(ys)
    n = len(xs)
    if a.size == 0:
        return 0, []
    with np.errstate(invalid="ignore", over="ignore"):
        same = a == b  # in their own dtypes: large int64s are compared exactly
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            same |= np.isnan(a) & np.isnan(b)
        wide = np.complex128 if "c" in (a.dtype.kind, b.dtype.kind) else np.float64
        d = np.abs(a.astype(wide) - b.astype(wide))
    d[same] = 0.0
    d[np.isnan(d)] = np.inf
    per = d.reshape(n, -1).max(axis=1)
    # A difference too small for float64 is still a difference: count by ``same``.
    differs = ~same.reshape(n, -1).all(axis=1)
    return int(differs.sum()), per[differs].tolist()


def _diff_big_array(a: np.ndarray, b: np.ndarray) -> float | None:
    """The largest element difference of two large arrays of one shape (``None``: equal),
    a chunk at a time, so a 200 MB component costs a few MB of scratch, not a gigabyte."""
    fa, fb = a.reshape(-1), b.reshape(-1)  # views when contiguous, as arrays mostly are
    worst: float | None = None
    for start in range(0, fa.size, CHUNK):
        ca, cb = fa[start : start + CHUNK], fb[start : start + CHUNK]
        if np.array_equal(ca, cb):
            continue  # one pass for the usual chunk; the measuring takes ten
        differs, mags = _diff_arrays([ca], [cb])
        if differs:
            worst = max(worst or 0.0, mags[0])
    return worst


def _same(x: Any, y: Any, depth: int) -> bool:
    """Whether two field values are equal; objects without ``==`` compare by their fields."""
    if x is y:
        return True
    if x is _MISSING or y is _MISSING:
        return False
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        try:
            return bool(np.array_equal(x, y, equal_nan=True))
        except TypeError:  # equal_nan on an array of objects or strings
            try:
                return bool(np.array_equal(x, y))
            except Exception:  # noqa: BLE001 - cannot be compared: counted as differing
                return False
    tx = type(x)
    if depth > 0 and tx is type(y):
        if tx is tuple or tx is list:
            return len(x) == len(y) and all(
                _same(p, q, depth - 1) for p, q in zip(x, y, strict=True)
            )
        if tx is dict:
            return x.keys() == y.keys() and all(_same(x[k], y[k], depth - 1) for k in x)
        if tx.__eq__ is object.__eq__ and not isinstance(x, type):
            sx, sy = component_state(x), component_state(y)
            if sx or sy:
                return _same(sx, sy, depth - 1)
    try:
        return bool(x == y)
    except Exception:  # noqa: BLE001 - an == that raises, or no truth value: differing
        return False


def _short(key: str) -> str:
    return key.rpartition(":")[2].rpartition(".")[2] or key


def _num(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"


def _json_float(value: float) -> float | str:
    return "inf" if math.isinf(value) else value

"""Moving live component instances from an old class to its reloaded version.

Rules (in order):

1. If the new class defines ``migrate(old)`` (a ``classmethod`` or ``staticmethod``), its
   result is the new instance — the hook sees the old instance with its old fields.
2. Otherwise fields with the same name are kept, new fields take their defaults, and fields
   that no longer exist are dropped.

A new field with no default cannot be filled: :class:`MigrationError` says which class and
field, and the reload that needed it is refused (the old module keeps running).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any


class MigrationError(Exception):
    """A component instance could not be moved to its new class."""


def field_names(cls: type) -> frozenset[str] | None:
    """The field names of a dataclass (None for another class), for :func:`component_state`."""
    if not hasattr(cls, "__dataclass_fields__"):
        return None
    return frozenset(f.name for f in dataclasses.fields(cls))


def component_state(instance: Any, names: frozenset[str] | None = None) -> dict[str, Any]:
    """The fields of a component instance as a plain dict (dataclass or ordinary object).

    ``names``: :func:`field_names` of its class, when the caller has it (a checkpoint
    asks once per class, not once per instance: ``dataclasses.fields`` is slow).
    """
    if names is not None:
        extra = getattr(instance, "__dict__", None)
        if extra is not None and extra.keys() >= names:
            return dict(extra)  # every field is a plain attribute: the common case, fast
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        state = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}
        # Attributes set outside the declared fields survive too.
        extra = getattr(instance, "__dict__", None)
        if extra:
            for k, v in extra.items():
                state.setdefault(k, v)
        return state
    if hasattr(instance, "__getstate__"):
        state = instance.__getstate__()
        if isinstance(state, dict):
            return dict(state)
    return dict(getattr(instance, "__dict__", {}))


def shells_in_address_order(cls: type, count: int) -> Iterator[Any] | None:
    """What to build ``count`` instances of ``cls`` into, one at a time: ``None`` (build
    the first the ordinary way) and then blank instances, lowest address first, for
    :func:`build_instance` to fill; they are made when the second is asked for. ``None``
    instead of the iterator where ``cls`` builds its instances itself (a ``__new__`` or
    metaclass of its own).

    A loop over components runs at the speed of memory: visited in address order, the
    CPU's prefetcher streams them in; scattered, every one is a cache miss. CPython never
    moves an object, and instances built one by one land wherever the heap has holes
    (after a day of play, all over it): the same loop over 10,000 freshly migrated bodies
    measured 1 ms or 4 ms depending on where they fell. Allocated first and handed out in
    address order, the instances a query visits one after the other lie one after the
    other (``bench/soak.py`` measures it).

    The first instance is built before the blank ones are made (ask for the next only
    once it is): CPython keeps a class's
    instance attributes in small arrays keyed by names shared across the class, and each
    new instance shrinks the room left for new names; 10,000 blank instances made first
    leave none, and every one of them would get a dict of its own (slower, and one more
    object to fetch).
    """
    if (
        count < 2
        or not dataclasses.is_dataclass(cls)
        or cls.__new__ is not object.__new__
        or type(cls).__call__ is not type.__call__
    ):
        return None
    return _shells(cls, count)


def _shells(cls: type, count: int) -> Iterator[Any]:
    yield None
    new = object.__new__
    shells = [new(cls) for _ in range(count - 1)]
    shells.sort(key=id)
    if scattered(shells):
        # The heap's holes of this size are spread over many pages: take them all (the
        # first shells, and more), so the next ones come from fresh pages, one after the
        # other; then give the holes back.
        fillers = [shells, [new(cls) for _ in range(HOLE_FILLERS * count)]]
        shells = [new(cls) for _ in range(count - 1)]
        del fillers
        shells.sort(key=id)
    yield from shells


#: Blank instances made per instance to migrate, when the first shells came out scattered,
#: to take up the heap's holes of their size before the shells are made again. A day of
#: play leaves about two per instance of each class of a size (the last migration's old
#: instances, and its partner's: ``Position`` and ``Velocity`` share one); with 2, the
#: bodies of ``bench/soak.py`` still spread from 159 to 178 pages over 30 migrations, with
#: 3 (and the first shells, 4 in all) they stayed at 159-162 over 60 (and at 160 -> 232
#: without).
HOLE_FILLERS = 3
#: Objects in address order spanning this many times the pages they would fill, packed,
#: are scattered.
SCATTERED_PAGES = 1.2


def scattered(objects: list[Any]) -> bool:
    """Whether ``objects`` (sorted by address, one size) span noticeably more memory pages
    than they would fill lying one after the other."""
    if len(objects) < 64:
        return False
    gaps = [b - a for a, b in zip(map(id, objects), map(id, objects[1:]), strict=False)]
    size = min(g for g in gaps if g > 0) if any(g > 0 for g in gaps) else 1
    pages = len({id(o) >> 12 for o in objects})
    return pages > SCATTERED_PAGES * (len(objects) * size / 4096) + 2


def build_instance(cls: type, state: dict[str, Any], shell: Any = None) -> Any:
    """A new ``cls`` instance from ``state``: same-named fields kept, others defaulted.

    ``shell``: a blank instance of ``cls`` to fill (see :func:`shells_in_address_order`);
    filling it is what ``cls(**fields)`` would do after allocating.
    """
    if dataclasses.is_dataclass(cls):
        kwargs: dict[str, Any] = {}
        late: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in state:
                (kwargs if f.init else late)[f.name] = state[f.name]
            elif (
                f.init
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ):
                raise MigrationError(
                    f"{cls.__module__}.{cls.__qualname__}: new field {f.name!r} has no default, "
                    "so existing instances cannot be migrated (give it a default or add "
                    "a migrate(old) hook)"
                )
        try:
            if shell is None:
                new = cls(**kwargs)
            else:
                cls.__init__(shell, **kwargs)
                new = shell
        except Exception as exc:  # a __post_init__ that rejects old data
            raise MigrationError(f"{cls.__qualname__}(**old fields) raised {exc!r}") from exc
        for k, v in late.items():
            object.__setattr__(new, k, v)
        return new
    new = cls.__new__(cls)
    new.__dict__.update(state)
    return new


def migrate_instance(old: Any, new_cls: type, shell: Any = None) -> Any:
    """Convert one live instance to ``new_cls`` following the rules above (into ``shell``,
    a blank ``new_cls`` instance, where given and the class has no ``migrate`` hook)."""
    hook = getattr(new_cls, "migrate", None)
    if callable(hook):
        try:
            result = hook(old)
        except Exception as exc:
            raise MigrationError(f"{new_cls.__qualname__}.migrate raised {exc!r}") from exc
        if not isinstance(result, new_cls):
            raise MigrationError(
                f"{new_cls.__qualname__}.migrate returned {type(result).__qualname__}, "
                f"not {new_cls.__qualname__}"
            )
        return result
    return build_instance(new_cls, component_state(old), shell)

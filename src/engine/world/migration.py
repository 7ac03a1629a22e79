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

from engine.world.heap import FEW, fresh_floats, made_in_order


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
    # Sorted by address, shells made from the heap's holes would have their objects in
    # order but not their attribute arrays: they are made until both come from fresh
    # memory (engine.world.heap), and used in the order made.
    if count < FEW:  # a loop over so few runs from the caches wherever they lie
        shells, ordered = [new(cls) for _ in range(count - 1)], False
    else:
        shells, ordered = made_in_order(
            lambda: [new(cls) for _ in range(count - 1)], lambda: new(cls), MIN_SHELLS_HELD
        )
    if not ordered:  # few, or more holes than are worth taking up
        shells.sort(key=id)  # the objects in order at least
    yield from shells


#: Blank instances kept at most to take up the heap's holes, at least (see
#: :func:`engine.world.heap.made_in_order`): in the swap's frame, about 0.3 µs each here.
MIN_SHELLS_HELD = 50_000


def lay_out_floats(instances: list[Any]) -> None:
    """Give the float fields of ``instances`` (one dataclass, in the order queries visit
    them) fresh floats of the same values, laid out in that order
    (:func:`engine.world.heap.fresh_floats`).

    Besides where they lie, this keeps a loop like ``p.x += v.dx * dt`` laying them out
    itself: each new float takes the block the one before it just freed (see
    :class:`engine.world.heap.FloatCycle`), but only while the float it replaces is
    freed. Migrated instances sharing their floats with the old ones, which the loader
    keeps for a while to roll back to, broke that chain at every reload: the floats took
    blocks from all over the heap, and kept them.
    """
    if not instances or not dataclasses.is_dataclass(instances[0]):
        return
    names = [f.name for f in dataclasses.fields(type(instances[0]))]
    width = len(names)
    values = [getattr(instance, name, None) for instance in instances for name in names]
    copied = [type(v) is float and v == v for v in values]  # a NaN keeps its own
    fresh = iter(fresh_floats([v for v, c in zip(values, copied, strict=True) if c]))
    values = [next(fresh) if c else v for v, c in zip(values, copied, strict=True)]
    setattr_ = object.__setattr__  # frozen dataclasses too: the value does not change
    for j, name in enumerate(names):
        if any(copied[j::width]):
            for instance, value in zip(instances, values[j::width], strict=True):
                setattr_(instance, name, value)


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

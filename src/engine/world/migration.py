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


def build_instance(cls: type, state: dict[str, Any]) -> Any:
    """A new ``cls`` instance from ``state``: same-named fields kept, others defaulted."""
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
            new = cls(**kwargs)
        except Exception as exc:  # a __post_init__ that rejects old data
            raise MigrationError(f"{cls.__qualname__}(**old fields) raised {exc!r}") from exc
        for k, v in late.items():
            object.__setattr__(new, k, v)
        return new
    new = cls.__new__(cls)
    new.__dict__.update(state)
    return new


def migrate_instance(old: Any, new_cls: type) -> Any:
    """Convert one live instance to ``new_cls`` following the rules above."""
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
    return build_instance(new_cls, component_state(old))

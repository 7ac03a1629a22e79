"""Marking component classes, and finding a class again by its stable key.

A component's *key* is ``"module:QualName"`` (``"systems.physics:Velocity"``). The key, not
the class object, is what survives a reload and what a checkpoint stores.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, overload

T = TypeVar("T", bound=type)

#: The newest class registered under each key, process-wide. An engine resolves through its
#: own loader first; this is the fallback for ``World.restore`` outside an engine.
REGISTRY: dict[str, type] = {}


def component_key(cls: type) -> str:
    """The stable key of a component class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def is_component(cls: Any) -> bool:
    return isinstance(cls, type) and bool(cls.__dict__.get("__engine_component__", False))


@overload
def component(cls: T) -> T: ...
@overload
def component(cls: None = None, **dataclass_options: Any) -> Any: ...


def component(cls: Any = None, **dataclass_options: Any) -> Any:
    """Mark a class as a component; plain classes become dataclasses.

    Components are plain data: fields with defaults, so that a new version of the class can
    be filled from an old instance (see migration). Options are passed to
    ``dataclasses.dataclass``.

    Example:
        >>> @component
        ... class Velocity:
        ...     dx: float = 0.0
        ...     dy: float = 0.0
        >>> Velocity(1.0).dx
        1.0
    """

    def wrap(c: type) -> type:
        if not dataclasses.is_dataclass(c):
            c = dataclasses.dataclass(**dataclass_options)(c)
        c.__engine_component__ = True
        REGISTRY[component_key(c)] = c
        return c

    return wrap if cls is None else wrap(cls)

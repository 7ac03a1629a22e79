"""Declaring systems: ``@engine.system`` on a plain function ``(world, dt)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """How a system wants to be scheduled.

    Attributes:
        name: unique within its module (defaults to the function name).
        order: lower runs earlier; ties keep the module's definition order.
        after: names of systems (``"name"`` in the same module or ``"module.name"``) that
            must run before this one, whatever their ``order``.
        budget_ms: this system's share of the frame; ``None`` means a fair share.
        hard_limit_ms: longest one call may run before the watchdog stops it; ``None``
            means the policy's hard limit (the whole frame). For work that may overrun a
            frame now and then without being a runaway (the render system).
        over_budget_frames: frames in a row over budget that disable it; ``None`` means
            the policy's. For a system whose slowness is better than its absence.
        essential: the game's picture depends on it (the render system): it is never
            disabled for time — a C call over its hard limit, or frames over its budget —
            since a late picture is shown reprojected by the compositor while none at all
            would restart the game; such slowness is noted at most every few seconds. A
            runaway in its Python code (the hard limit) or an exception still costs it
            as any system.
    """

    name: str
    order: int = 0
    after: tuple[str, ...] = ()
    budget_ms: float | None = None
    hard_limit_ms: float | None = None
    over_budget_frames: int | None = None
    essential: bool = False


@overload
def system(fn: F) -> F: ...
@overload
def system(
    fn: None = None,
    *,
    order: int = 0,
    after: str | Sequence[str] = (),
    budget_ms: float | None = None,
    hard_limit_ms: float | None = None,
    over_budget_frames: int | None = None,
    essential: bool = False,
    name: str | None = None,
) -> Callable[[F], F]: ...


def system(
    fn: Any = None,
    *,
    order: int = 0,
    after: str | Sequence[str] = (),
    budget_ms: float | None = None,
    hard_limit_ms: float | None = None,
    over_budget_frames: int | None = None,
    essential: bool = False,
    name: str | None = None,
) -> Any:
    """Mark a function ``(world, dt) -> None`` as a system of its module.

    Example:
        >>> @system(order=10, budget_ms=1.0)
        ... def gravity(world, dt):
        ...     pass
        >>> gravity.__engine_system__.budget_ms
        1.0
    """
    if isinstance(after, str):
        after = (after,)
    for label, value in (("budget_ms", budget_ms), ("hard_limit_ms", hard_limit_ms)):
        if value is not None and value <= 0:
            raise ValueError(f"{label} must be positive, got {value}")

    def wrap(f: F) -> F:
        f.__engine_system__ = SystemSpec(  # type: ignore[attr-defined]
            name or f.__name__,
            order,
            tuple(after),
            budget_ms,
            hard_limit_ms,
            over_budget_frames,
            essential,
        )
        return f

    return wrap if fn is None else wrap(fn)

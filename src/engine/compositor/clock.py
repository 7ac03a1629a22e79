"""The display's timetable: when each refresh happens and when composing for it must start.

Time itself comes from :mod:`engine.scheduler.pacing` (``MonotonicClock`` sleeps coarsely
and spins the last stretch; ``ManualClock`` for tests). This module only does arithmetic
on it, so the compositor's pacing is tested without sleeping.

A *slot* is one display refresh. Slot ``n`` is shown at ``vsync(n) = origin + n * period``;
the compositor wakes at ``compose_deadline(n) = vsync(n) - compose_lead`` to sample the
pose and compose, and its present is *on time* if it finishes by ``vsync(n)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.scheduler.pacing import DISPLAY_HZ

#: How long before a refresh composing starts, by default: room for a CPU compose of two
#: 1280x720 eyes on llvmpipe with a margin. A GPU compositor needs far less.
DEFAULT_COMPOSE_LEAD_NS = 4_000_000


@dataclass(frozen=True, slots=True)
class DisplaySchedule:
    """Refresh times at a fixed rate, anchored at ``origin_ns`` (the vsync of slot 0).

    Example:
        >>> s = DisplaySchedule.at_rate(100.0, origin_ns=0, compose_lead_ns=2_000_000)
        >>> s.vsync(3), s.compose_deadline(3), s.first_slot_not_before(25_000_000)
        (30000000, 28000000, 3)
    """

    period_ns: int
    origin_ns: int
    compose_lead_ns: int = DEFAULT_COMPOSE_LEAD_NS

    def __post_init__(self) -> None:
        if self.period_ns <= 0:
            raise ValueError(f"period must be positive, got {self.period_ns} ns")
        if not 0 <= self.compose_lead_ns < 2 * self.period_ns:
            raise ValueError("compose lead must be at least 0 and less than two periods")

    @classmethod
    def at_rate(
        cls,
        rate_hz: float = DISPLAY_HZ,
        *,
        origin_ns: int,
        compose_lead_ns: int = DEFAULT_COMPOSE_LEAD_NS,
    ) -> DisplaySchedule:
        """A schedule at ``rate_hz`` refreshes per second (raises ``ValueError`` if <= 0)."""
        if rate_hz <= 0:
            raise ValueError(f"display rate must be positive, got {rate_hz}")
        return cls(round(1e9 / rate_hz), origin_ns, compose_lead_ns)

    def vsync(self, slot: int) -> int:
        """When slot ``slot`` reaches the eyes."""
        return self.origin_ns + slot * self.period_ns

    def compose_deadline(self, slot: int) -> int:
        """When composing for ``slot`` starts."""
        return self.vsync(slot) - self.compose_lead_ns

    @property
    def slots_per_frame(self) -> int:
        """Refreshes per composed frame: 1, or 2 once the lead is a period or more (a frame
        composed from its deadline ends after the next slot's deadline has passed)."""
        return 1 + self.compose_lead_ns // self.period_ns

    def first_slot_not_before(self, t_ns: int) -> int:
        """The first slot whose compose deadline is at or after ``t_ns``."""
        lead_origin = self.origin_ns - self.compose_lead_ns
        return max(0, -(-(t_ns - lead_origin) // self.period_ns))

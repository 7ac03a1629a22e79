"""The live systems table a user sees in the terminal while the game runs.

The table is drawn from a plain dict, so it knows nothing of the scheduler object (and
a test, or another process, can feed it). Snapshot shape — every key optional, a
missing value is drawn as ``—``::

    {
        "systems": [                       # in schedule order; or {name: row}
            {
                "name": "physics",         # free-form ("esper cache rebuild" too)
                "state": "enabled",        # "enabled" | "disabled" | "probation"
                "version": 3,              # int or None
                "mean_ms": 1.21,           # over the last 90 frames
                "p99_ms": 2.05,
                "share": 0.42,             # mean / this system's budget (0.42 = 42 %)
                "budget_ms": 2.0,          # this system's budget
                "strikes": 1,              # the scheduler's count against it
                "reason": "",              # why it is disabled: text, or a dict
                                           # {"limit": ..., "detail": ...}; "" or None
                "last_error": "",          # shown when there is no reason
                "retry_in_s": 12.0,        # a disabled system retried later: when
                ...                        # anything else (e.g. the rest of
            },                             # SystemStats.snapshot()) is ignored
        ],
        "esper_cache": {...},              # a SystemStats.snapshot(): last row
        "frame": {                         # FrameStats.snapshot(); its keys may also
            "frames": 5400,                # sit at the top level instead
            "frame_ms_p50": 6.1, "frame_ms_p99": 9.8, "frames_over_budget": 3, ...
        },
        "swaps": [                         # oldest first; the last few are shown
            {"module": "physics", "version": 3, "ok": True, "latency_ms": 12.5,
             "error": None},               # error: short text when ok is False
        ],
    }

A scheduler builds a row as ``{**stats.snapshot(), "state": ..., "version": ...,
"strikes": ..., "reason": ...}``; ``Scheduler.snapshot()`` plus a ``"swaps"`` list
is a valid snapshot as it is.

:class:`SystemsTable` turns a snapshot into a ``rich`` table (pure): one row per system
with a status lamp (running / probation / disabled / error), version, mean and p99 ms,
budget and why; readable at 100 columns. :class:`LiveConsole` redraws it in place at most
4 times a second; swap events (the engine's report lines) print above it. When the output
is not a terminal (CI logs, a pipe) it prints plain lines instead: one per event (a
system's status or version changing) and a short frame summary every few seconds.

Drawing a table costs milliseconds (rich lays it out and writes the escape codes), so a
running game draws on a console thread (``background=True``, what
:func:`attach_live_console` uses): the frame thread only hands over a callable that builds
the snapshot, right after its frame, when it is about to wait for the next one.

Example::

    with LiveConsole() as live:
        while running:
            step()
            live.update(scheduler_snapshot())
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

Snapshot = Mapping[str, Any]
#: What :meth:`LiveConsole.update` takes: a snapshot, or a callable that builds one when
#: (and where) it is drawn.
SnapshotSource = Snapshot | Callable[[], Snapshot]

_MISSING = "—"
#: A row's status, as :func:`status` names it: its lamp and style.
LAMPS = {
    "running": ("●", "green"),
    "probation": ("◐", "yellow"),
    "disabled": ("○", "red"),
    "error": ("✖", "bold red"),
    "engine": ("·", "dim"),
}
#: Disable reasons that mean the code failed (an error), not that it was too slow.
_ERROR_LIMITS = ("exception", "rolled-back", "rolling-back")


def _ms(value: Any) -> str:
    """A time in ms, or "" for none (a system that did not run has no time to show)."""
    if value is None:
        return ""
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"  # keep tens of µs visible


def _swap_text(swap: Mapping[str, Any]) -> str:
    version = swap.get("version")
    name = f"{swap.get('module', '?')} v{version if version is not None else '?'}"
    if not swap.get("ok"):  # a failed swap took no time worth showing: say why instead
        return f"{name} failed: {swap.get('error') or 'unknown error'}"
    latency = swap.get("latency_ms")
    return f"{name} ok" + (f" in {_ms(latency)} ms" if latency is not None else "")


def status(row: Mapping[str, Any]) -> str:
    """``running``, ``probation``, ``disabled`` (too slow, or by hand), ``error`` (disabled
    because it raised), ``engine`` (the esper cache row), else the row's own state."""
    state = str(row.get("state") or "")
    if state == "enabled":
        return "running"
    if state == "disabled":
        reason = row.get("reason")
        limit = reason.get("limit") if isinstance(reason, Mapping) else None
        return "error" if limit in _ERROR_LIMITS else "disabled"
    return state or "?"


def priority_words(priority: Any) -> str:
    """The compositor's priorities (``{"cpu": ..., "gpu": ..., "gpu_reset": ...}``) as
    words: ``CPU SCHED_FIFO 10; GPU not offered (...)``; anything else as its text."""
    if not isinstance(priority, Mapping):
        return str(priority)
    names = {"cpu": "CPU", "gpu": "GPU", "gpu_reset": "on a GPU reset"}
    return "; ".join(f"{names.get(k, k)} {v}" for k, v in priority.items())


def system_rows(snapshot: Snapshot) -> list[Mapping[str, Any]]:
    """The snapshot's systems as rows, each with a ``name``, then the esper cache row.

    ``systems`` may be a list of rows or a dict of rows by name (a row's own ``name``
    wins). The ``esper_cache`` entry, if any, comes last with state ``engine``.
    """
    systems = snapshot.get("systems") or []
    if isinstance(systems, Mapping):
        rows = [{"name": name, **row} for name, row in systems.items()]
    else:
        rows = list(systems)
    cache = snapshot.get("esper_cache")
    if cache:
        rows.append({"name": "esper cache", "state": "engine", **cache})
    return rows


def reason_text(row: Mapping[str, Any]) -> str:
    """Why a row is disabled (``limit: detail`` for a dict), else its last error, else "";
    with when it comes back if it is retried (``retry_in_s``, on the row or the reason)."""
    reason = row.get("reason")
    retry = row.get("retry_in_s")
    if isinstance(reason, Mapping):
        limit, detail = reason.get("limit"), reason.get("detail")
        text = ": ".join(str(part) for part in (limit, detail) if part)
        retry = reason.get("retry_in_s", retry)
    else:
        text = str(reason or row.get("last_error") or "")
    if retry is not None and status(row) in ("disabled", "error"):
        text += f" (retried in {float(retry):.0f} s)"
    return text


def frame_line(snapshot: Snapshot) -> str:
    """Frame totals on one line: count, p50 and p99 frame time, frames over budget."""
    frame = snapshot.get("frame") or snapshot
    return " | ".join(
        (
            f"frames {frame.get('frames', 0)}",
            f"frame p50 {_ms(frame.get('frame_ms_p50'))} ms",
            f"p99 {_ms(frame.get('frame_ms_p99'))} ms",
            f"over budget {frame.get('frames_over_budget', 0)}",
        )
    )


def latest_swaps(snapshot: Snapshot, max_swaps: int = 3) -> list[str]:
    """The newest ``max_swaps`` swaps, oldest of them first, one short text each."""
    swaps = list(snapshot.get("swaps") or [])
    return [_swap_text(s) for s in swaps[-max_swaps:]] if max_swaps > 0 else []


def plain_line(snapshot: Snapshot, max_swaps: int = 3) -> str:
    """The whole snapshot on one line (frame totals, swaps, each system): for a log that
    wants everything at once. :class:`LiveConsole` prints :func:`event_lines` instead."""
    systems = []
    for row in system_rows(snapshot):
        text = f"{row.get('name', '?')} {status(row)}"
        if row.get("mean_ms") is not None:
            text += f" {_ms(row.get('mean_ms'))}/{_ms(row.get('p99_ms'))} ms"
        if reason := reason_text(row):
            text += f" ({reason})"
        systems.append(text)
    parts = [frame_line(snapshot)]
    swaps = latest_swaps(snapshot, max_swaps)
    if swaps:
        parts.append("swaps: " + "; ".join(swaps))
    if systems:
        parts.append(", ".join(systems))
    return " || ".join(parts)


def event_lines(before: Mapping[str, tuple], snapshot: Snapshot) -> tuple[list[str], dict]:
    """One line per system whose status or version changed since ``before`` (what the
    last call returned; ``{}`` at first: every system is new). Returns the lines and the
    new ``before``."""
    now: dict[str, tuple] = {}
    lines = []
    for row in system_rows(snapshot):
        name = str(row.get("name", "?"))
        key = (status(row), row.get("version"))
        now[name] = key
        if before.get(name) != key:
            version = f" v{key[1]}" if key[1] is not None else ""
            why = reason_text(row) if key[0] != "running" else ""
            lines.append(f"{name}{version}: {key[0]}" + (f" ({why})" if why else ""))
    return lines, now


class SystemsTable:
    """Builds the systems table from a snapshot dict (see the module docstring)."""

    COLUMNS = ("", "system", "v", "mean ms", "p99 ms", "budget", "why")

    def __init__(self, title: str = "systems", max_swaps: int = 0) -> None:
        """``max_swaps``: how many of the latest swaps the footer lists (0, the default:
        none; swaps print as lines above the table)."""
        self.title = title
        self.max_swaps = max_swaps

    def render(self, snapshot: Snapshot) -> Table:
        """Return a new table for ``snapshot``; nothing is printed or kept.

        Names and reasons are shown literally (never parsed as rich markup). A system
        with no time yet (it never ran, or failed before finishing) has empty time cells:
        the why column says what happened.
        """
        # One footer line each, cut (not wrapped) at the table's width.
        footer = [frame_line(snapshot)] + [
            f"swap {text}" for text in latest_swaps(snapshot, self.max_swaps)
        ]
        table = Table(
            title=self.title,
            caption=Text("\n".join(footer), no_wrap=True, overflow="ellipsis"),
            caption_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        table.add_column("", no_wrap=True)  # the lamp and the status word
        table.add_column("system", no_wrap=True, overflow="ellipsis", max_width=28)
        for column in ("v", "mean ms", "p99 ms", "budget"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("why", overflow="fold", ratio=1)
        for row in system_rows(snapshot):
            state = status(row)
            lamp, style = LAMPS.get(state, ("?", ""))
            version = row.get("version")
            budget = row.get("budget_ms")
            mean = row.get("mean_ms")
            share = row.get("share")
            mean_style = "bold red" if share and share > 1.0 else ""
            table.add_row(
                Text(f"{lamp} {state}", style=style),
                Text(str(row.get("name", "?"))),
                "" if version is None else str(version),
                Text(_ms(mean), style=mean_style),
                _ms(row.get("p99_ms")),
                _ms(budget),
                Text(reason_text(row)),
            )
        return table


class LiveConsole:
    """Keeps the systems table on screen, redrawn at most ``max_hz`` times a second.

    A context manager: nothing is drawn outside ``with`` (``update`` then only remembers
    the snapshot), and ``enabled=False`` makes every call a no-op, so callers never need
    an ``if``. Updates arriving faster than the limit are skipped; the newest skipped one
    is drawn on exit, so the final state always shows.

    On a terminal the table is redrawn in place (``rich.live.Live``, no refresh thread);
    what the process prints meanwhile (the engine's swap lines) shows above it.
    Otherwise (``console.is_terminal`` false, or ``plain=True``) each draw prints
    :func:`event_lines` (a line per system whose status or version changed), and the
    frame totals (:func:`frame_line`) at most every ``plain_every_s`` seconds, and once
    more on exit. ``clock`` returns seconds; tests inject their own.

    With ``background=True`` the snapshot is built and drawn on a console thread started
    on entering ``with``: :meth:`update` only hands it over (and returns False); the
    thread draws the newest one it was handed, no more than ``max_hz`` times a second.
    On exit the thread is stopped and the newest snapshot not drawn yet is drawn.
    """

    def __init__(
        self,
        table: SystemsTable | None = None,
        *,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_hz: float = 4.0,
        plain_every_s: float = 10.0,
        plain: bool | None = None,
        enabled: bool = True,
        background: bool = False,
    ) -> None:
        """Raise ``ValueError`` if ``max_hz`` is not positive."""
        if max_hz <= 0:
            raise ValueError(f"max_hz must be > 0, got {max_hz}")
        self.table = table or SystemsTable()
        self.console = console or Console()
        self.clock = clock
        self.plain = (not self.console.is_terminal) if plain is None else plain
        self.min_interval_s = 1.0 / max_hz
        self.plain_every_s = plain_every_s
        self._systems_seen: dict[str, tuple] = {}
        self._last_summary: float | None = None
        self._last_snapshot: Snapshot | None = None
        self.enabled = enabled
        self.background = background
        self.draws = 0
        self._live: Live | None = None
        self._active = False
        self._last_draw: float | None = None
        self._pending: SnapshotSource | None = None
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def __enter__(self) -> LiveConsole:
        """Start drawing (on a terminal, take over the bottom of the screen)."""
        if self.enabled:
            self._active = True
            if not self.plain:
                self._live = Live(console=self.console, auto_refresh=False, transient=False)
                self._live.start()
            if self.background:
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._draw_loop, name="live-console", daemon=True
                )
                self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Draw the last skipped snapshot, if any, and give the terminal back."""
        if not self._active:
            return
        if self._thread is not None:
            with self._wake:
                self._stopping = True
                self._wake.notify()
            self._thread.join()
            self._thread = None
        pending = self._take()
        if pending is not None:
            self._draw(pending)
        if self.plain and self._last_snapshot is not None:
            self._print(frame_line(self._last_snapshot))  # where the run ended
        if self._live is not None:
            self._live.stop()
            self._live = None
        self._active = False

    def update(self, snapshot: SnapshotSource) -> bool:
        """Offer a new snapshot (or a callable building one); return True if drawn now.

        Skipped (and kept for later) when the last draw was less than the minimum
        interval ago, or when not inside ``with``. In ``background`` mode it is only
        handed to the console thread: nothing is built or drawn on the calling thread.
        """
        if not self.enabled:
            return False
        with self._wake:
            self._pending = snapshot
            if self._thread is not None:
                self._wake.notify()
                return False
        if not self._active:
            return False
        now = self.clock()
        if self._last_draw is not None and now - self._last_draw < self.min_interval_s:
            return False
        self._last_draw = now
        self._draw(self._take())
        return True

    def _take(self) -> SnapshotSource | None:
        with self._wake:
            pending, self._pending = self._pending, None
        return pending

    def _draw_loop(self) -> None:
        """The console thread: draw the newest snapshot, at most every min interval."""
        while True:
            with self._wake:
                while self._pending is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                if self._last_draw is not None:
                    wait_s = self._last_draw + self.min_interval_s - self.clock()
                    if wait_s > 0:
                        self._wake.wait(wait_s)  # a stop, or a newer snapshot, may come
                        continue
                pending, self._pending = self._pending, None
            self._last_draw = self.clock()
            if pending is not None:
                self._draw(pending)

    def _draw(self, source: SnapshotSource | None) -> None:
        if source is None:
            return
        snapshot = source() if callable(source) else source
        self.draws += 1
        if self._live is not None:
            self._live.update(self.table.render(snapshot), refresh=True)
        else:
            lines, self._systems_seen = event_lines(self._systems_seen, snapshot)
            for line in lines:
                self._print(line)
            now = self.clock()
            if self._last_summary is None or now - self._last_summary >= self.plain_every_s:
                self._last_summary = now
                self._print(frame_line(snapshot))
            else:
                self._last_snapshot = snapshot  # its totals print on exit
                return
        self._last_snapshot = None

    def _print(self, line: str) -> None:
        # soft_wrap: one log line however long; names are never parsed as markup.
        self.console.print(line, soft_wrap=True, markup=False, highlight=False)


def attach_live_console(engine: Any, enabled: bool = True, every_s: float = 0.25) -> LiveConsole:
    """Show ``engine``'s systems table while it runs: use the result as a context manager.

    An ``after_frame`` hook hands the console thread, at most every ``every_s``, a
    callable that builds the snapshot (the scheduler's numbers and the few newest swaps
    the table shows); building and drawing happen on that thread, in the time the frame
    thread spends waiting for its next frame. The frame thread pays a clock read per
    frame and a notify per update.
    """
    live = LiveConsole(enabled=enabled, background=True)
    shown = live.table.max_swaps
    last = [float("-inf")]

    def build() -> Snapshot:
        # The scheduler replaces (never mutates) its lists and a swap log copies its
        # ring in one C call, so reading them from the console thread is safe.
        swaps = [s.to_json() for s in engine.swaps.last(shown)]
        return {**engine.scheduler.snapshot(), "swaps": swaps}

    def show(eng: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            live.update(build)

    if enabled:
        engine.after_frame.append(show)
    return live

"""Scripted input: a file of timed key and mouse events that drives a game without a window.

``engine run --input-script FILE`` (tests, replays, demos). One JSON object per line;
blank lines and lines starting with ``#`` are skipped::

    # when                  what
    {"frame": 30, "press": "SPACE"}
    {"frame": 32, "release": "SPACE"}
    {"frame": 40, "tap": ["LSHIFT", "A"]}        press and release in the same frame
    {"t": 0.5, "mouse": [320, 240]}             pointer position, window pixels
    {"t": 0.6, "button_press": "LEFT"}
    {"t": 0.7, "button_release": "LEFT"}
    {"t": 0.8, "click": "RIGHT"}                 button press and release at once
    {"t": 1.0, "scroll": [0, -1]}

*When* is exactly one of ``frame`` (compositor frames, an integer ≥ 0) or ``t`` (seconds,
≥ 0), counted from the frame the game's layer is first shown (so a slow start-up does not
eat the script); events due at the same frame apply in file order. *What* is one or more
of ``press``, ``release``, ``tap`` (key names as in :data:`engine.contracts.input.KEY_NAMES`,
one or a list), ``button_press``, ``button_release``, ``click`` (``LEFT``, ``MIDDLE``,
``RIGHT``, ``MOUSE4``, ``MOUSE5``), ``mouse`` ``[x, y]`` and ``scroll`` ``[dx, dy]``;
within a line, presses come before moves, scrolls and releases.

:func:`load_script` refuses a malformed file with :class:`InputScriptError` naming the
file and line; a loaded script cannot fail while it plays.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.contracts.input import InputWriter, button_index, key_index

_KEY_ACTIONS = ("press", "tap", "release")
_BUTTON_ACTIONS = ("button_press", "click", "button_release")
_PAIR_ACTIONS = ("mouse", "scroll")
ACTIONS = _KEY_ACTIONS + _BUTTON_ACTIONS + _PAIR_ACTIONS


class InputScriptError(ValueError):
    """A script line that is not valid: ``str()`` reads ``FILE:LINE: what is wrong``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass(frozen=True, slots=True)
class ScriptEvent:
    """One line of a script: when (``frame`` or ``t_ns``) and its actions, in order.

    ``actions`` are ``(kind, value)``: ``("key", (index, down))``,
    ``("button", (index, down))``, ``("mouse", (x, y))``, ``("scroll", (dx, dy))``.
    """

    line: int
    frame: int | None
    t_ns: int | None
    actions: tuple[tuple[str, tuple], ...]

    def apply(self, writer: InputWriter) -> None:
        """Make the line's events happen in ``writer`` (never raises)."""
        for kind, value in self.actions:
            if kind == "key":
                writer.key(*value)
            elif kind == "button":
                writer.button(*value)
            elif kind == "mouse":
                writer.move(*value)
            else:
                writer.scroll(*value)


def _names(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _pair(value: Any, what: str) -> tuple[float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise ValueError(f"{what} takes two numbers, [x, y]; got {value!r}")
    return float(value[0]), float(value[1])


def parse_line(obj: Any) -> tuple[int | None, int | None, tuple[tuple[str, tuple], ...]]:
    """``(frame, t_ns, actions)`` of one decoded line. Raises ``ValueError`` saying why."""
    if not isinstance(obj, dict):
        raise ValueError('each line is one JSON object, e.g. {"frame": 30, "press": "SPACE"}')
    unknown = set(obj) - {"frame", "t", *ACTIONS}
    if unknown:
        raise ValueError(
            f"unknown field(s) {sorted(unknown)}; known: frame, t, {', '.join(ACTIONS)}"
        )
    if ("frame" in obj) == ("t" in obj):
        raise ValueError('give exactly one of "frame" or "t" (seconds)')
    frame = t_ns = None
    if "frame" in obj:
        frame = obj["frame"]
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise ValueError(f'"frame" is a whole number >= 0; got {frame!r}')
    else:
        t = obj["t"]
        if not isinstance(t, int | float) or isinstance(t, bool) or not 0 <= t < math.inf:
            raise ValueError(f'"t" is seconds >= 0; got {t!r}')
        t_ns = round(t * 1e9)
    if not any(a in obj for a in ACTIONS):
        raise ValueError(f"nothing to do: give one of {', '.join(ACTIONS)}")
    downs: list[tuple[str, tuple]] = []
    middles: list[tuple[str, tuple]] = []
    ups: list[tuple[str, tuple]] = []
    for action in _KEY_ACTIONS:
        for name in _names(obj.get(action, [])):
            if not isinstance(name, str):
                raise ValueError(f'{action}: keys are names such as "SPACE"; got {name!r}')
            index = key_index(name)  # KeyError for a name that is not a key
            if action in ("press", "tap"):
                downs.append(("key", (index, True)))
            if action in ("release", "tap"):
                ups.append(("key", (index, False)))
    for action in _BUTTON_ACTIONS:
        for name in _names(obj.get(action, [])):
            if not isinstance(name, str):
                raise ValueError(f'{action}: buttons are names such as "LEFT"; got {name!r}')
            index = button_index(name)
            if action in ("button_press", "click"):
                downs.append(("button", (index, True)))
            if action in ("button_release", "click"):
                ups.append(("button", (index, False)))
    for action in _PAIR_ACTIONS:
        if action in obj:
            middles.append((action, _pair(obj[action], action)))
    return frame, t_ns, tuple(downs + middles + ups)


def load_script(path: str | Path) -> list[ScriptEvent]:
    """Every event of the script at ``path``, in file order.

    Raises :class:`InputScriptError` (``FILE:LINE: why``) for a malformed line and
    ``OSError`` when the file cannot be read.
    """
    path = Path(path)
    events = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            frame, t_ns, actions = parse_line(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InputScriptError(str(path), number, f"not JSON: {exc.msg}") from None
        except KeyError as exc:
            raise InputScriptError(str(path), number, str(exc.args[0])) from None
        except ValueError as exc:
            raise InputScriptError(str(path), number, str(exc)) from None
        events.append(ScriptEvent(number, frame, t_ns, actions))
    return events


class ScriptPlayer:
    """Plays a script's events at their frames and times, from :meth:`start` on.

    ``due(frame, time_ns)`` returns the events that have come due since the last call,
    in file order: cheap per call (two sorted queues), so a long replay costs the
    compositor only the events it plays.

    Example:
        >>> player = ScriptPlayer([ScriptEvent(1, 2, None, ()), ScriptEvent(2, None, 0, ())])
        >>> player.start(frame=10, time_ns=5)
        >>> [e.line for e in player.due(10, 5)], [e.line for e in player.due(12, 6)]
        ([2], [1])
    """

    def __init__(self, events: list[ScriptEvent]) -> None:
        self._by_frame = sorted((e for e in events if e.frame is not None), key=_frame_key)
        self._by_time = sorted((e for e in events if e.t_ns is not None), key=_time_key)
        self._frame_keys = [_frame_key(e) for e in self._by_frame]
        self._time_keys = [_time_key(e) for e in self._by_time]
        self._next_frame = self._next_time = 0
        self.start_frame: int | None = None
        self.start_ns = 0
        self.played = 0

    @property
    def started(self) -> bool:
        return self.start_frame is not None

    @property
    def finished(self) -> bool:
        return self._next_frame == len(self._by_frame) and self._next_time == len(self._by_time)

    def start(self, frame: int, time_ns: int) -> None:
        """Count script frames and times from here (script frame 0 is ``frame``)."""
        self.start_frame, self.start_ns = frame, time_ns

    def due(self, frame: int, time_ns: int) -> list[ScriptEvent]:
        """Events due by ``frame``/``time_ns`` not returned before; ``[]`` before start."""
        if self.start_frame is None:
            return []
        end_frame = bisect.bisect_right(self._frame_keys, (frame - self.start_frame, 1 << 62))
        end_time = bisect.bisect_right(self._time_keys, (time_ns - self.start_ns, 1 << 62))
        out = (
            self._by_frame[self._next_frame : end_frame] + self._by_time[self._next_time : end_time]
        )
        self._next_frame = max(self._next_frame, end_frame)
        self._next_time = max(self._next_time, end_time)
        out.sort(key=lambda e: e.line)
        self.played += len(out)
        return out


def _frame_key(event: ScriptEvent) -> tuple[int, int]:
    return (event.frame or 0, event.line)


def _time_key(event: ScriptEvent) -> tuple[int, int]:
    return (event.t_ns or 0, event.line)


def drive_engine(engine: Any, events: list[ScriptEvent]) -> Any:
    """Play a script into ``engine``'s ``world.input`` with no compositor (one process).

    Script frames count the engine's frames from its first; ``t`` its clock. Makes a
    private input block, feeds it before each frame and reads it back through the same
    tracker a game under the compositor uses. Returns the tracker.
    """
    from engine.contracts.input import InputReader
    from engine.contracts.shm import create_block_fd
    from engine.input.state import attach_input

    fd = create_block_fd("input-script")
    writer, reader = InputWriter(fd), InputReader(fd)
    os.close(fd)  # both mappings keep the block alive
    writer.publish(0, 0, force=True)
    player = ScriptPlayer(events)

    def feed(eng: Any) -> None:
        now = eng.clock.now_ns()
        if not player.started:
            player.start(eng.frame, now)
        for event in player.due(eng.frame, now):
            event.apply(writer)
        writer.publish(eng.frame, now)

    engine.before_frame.append(feed)
    return attach_input(engine, reader)

"""The input a system sees: ``world.input``, refreshed once per frame before systems run.

Example (a system)::

    @engine.system
    def jump(world, dt):
        if world.input.pressed("SPACE"):          # pressed since the previous frame
            ...
        if world.input.down("LEFT"):              # held now
            ...
        x, y = world.input.mouse.position         # window pixels, origin bottom left
        if world.input.mouse.pressed("LEFT"): ...
        head = world.input.head                   # the pose this frame renders with

Under ``engine run`` the compositor writes the input block and :class:`InputTracker`
reads it once per frame (:func:`attach_input`); elsewhere (``Engine`` in a test, ``engine
run --single-process`` without a script) ``world.input`` is an :class:`Input` on which
nothing is ever pressed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from engine.contracts.input import (
    BUTTON_NAMES,
    BUTTON_SLOTS,
    KEY_NAMES,
    KEY_SLOTS,
    InputReader,
    button_index,
    key_index,
)

if TYPE_CHECKING:
    from engine.pose.base import Pose


class Mouse:
    """The pointer this frame: ``position``, ``window`` size, buttons, ``scroll``.

    ``position`` is in the mirror window's pixels (both eyes side by side), origin bottom
    left; a scripted position is whatever the script says. ``window`` is ``(0, 0)`` when
    there is no window. ``scroll`` is what the wheel turned since the previous frame.
    Buttons are named ``"LEFT"``, ``"MIDDLE"``, ``"RIGHT"``, ``"MOUSE4"``, ``"MOUSE5"`` or
    given as pyglet constants (``pyglet.window.mouse.LEFT``); any other raises ``KeyError``.
    """

    __slots__ = ("position", "window", "scroll", "_buttons", "_presses", "_releases")

    def __init__(self) -> None:
        self.position: tuple[float, float] = (0.0, 0.0)
        self.window: tuple[int, int] = (0, 0)
        self.scroll: tuple[float, float] = (0.0, 0.0)
        self._buttons = 0
        self._presses = [0] * BUTTON_SLOTS
        self._releases = [0] * BUTTON_SLOTS

    @property
    def x(self) -> float:
        return self.position[0]

    @property
    def y(self) -> float:
        return self.position[1]

    def down(self, button: str | int = "LEFT") -> bool:
        """Whether ``button`` is held now."""
        return bool(self._buttons >> button_index(button) & 1)

    def pressed(self, button: str | int = "LEFT") -> bool:
        """Whether ``button`` went down since the previous frame (even if already up)."""
        return self._presses[button_index(button)] > 0

    def released(self, button: str | int = "LEFT") -> bool:
        """Whether ``button`` went up since the previous frame."""
        return self._releases[button_index(button)] > 0

    @property
    def buttons(self) -> frozenset[str]:
        """The names of the buttons held now."""
        return frozenset(n for i, n in enumerate(BUTTON_NAMES) if self._buttons >> i & 1)

    def __repr__(self) -> str:
        return f"Mouse(position={self.position}, buttons={sorted(self.buttons)})"


class Input:
    """Keyboard and mouse as of this frame: the resource behind ``world.input``.

    Keys are pyglet's key names (``"SPACE"``, ``"A"``, ``"LSHIFT"``, ``"F1"``, ``"UP"``;
    any case; ``"1"`` for the digit) or pyglet symbols (``pyglet.window.key.SPACE``); the
    full list is :data:`engine.contracts.input.KEY_NAMES`. A name that is not a key raises
    ``KeyError``; a pyglet symbol outside the list is never down.

    ``pressed``/``released`` are true on the frame after the key went down/up, however
    short the press: a key pressed and released between two frames is ``pressed`` and
    ``released`` on one frame and never ``down``. :meth:`presses` counts them.

    Example:
        >>> Input().pressed("SPACE")
        False
    """

    def __init__(self, world: Any = None) -> None:
        self._world = world
        #: The compositor frame of the newest input change seen (0: none yet).
        self.frame = 0
        #: Input events the compositor has counted (presses, releases, moves, scrolls).
        self.events = 0
        self.mouse = Mouse()
        self._down = np.zeros(KEY_SLOTS, bool)
        self._presses = np.zeros(KEY_SLOTS, np.int64)
        self._releases = np.zeros(KEY_SLOTS, np.int64)

    def down(self, key: str | int) -> bool:
        """Whether ``key`` is held now."""
        return bool(self._down[key_index(key)])

    def pressed(self, key: str | int) -> bool:
        """Whether ``key`` went down since the previous frame."""
        return self.presses(key) > 0

    def released(self, key: str | int) -> bool:
        """Whether ``key`` went up since the previous frame."""
        return self.releases(key) > 0

    def presses(self, key: str | int) -> int:
        """How many times ``key`` went down since the previous frame."""
        index = key_index(key)
        return int(self._presses[index]) if index else 0

    def releases(self, key: str | int) -> int:
        """How many times ``key`` went up since the previous frame."""
        index = key_index(key)
        return int(self._releases[index]) if index else 0

    @property
    def keys_down(self) -> frozenset[str]:
        """The names of the keys held now."""
        return frozenset(KEY_NAMES[i] for i in np.flatnonzero(self._down))

    @property
    def head(self) -> Pose | None:
        """The head pose this frame renders with (from ``FrameInfo``), or ``None`` when the
        engine has no pose source."""
        from engine.game import FrameInfo

        info = self._world.resources.get(FrameInfo) if self._world is not None else None
        return info.pose.head if info is not None and info.pose is not None else None

    def __repr__(self) -> str:
        return f"Input(frame={self.frame}, down={sorted(self.keys_down)}, mouse={self.mouse!r})"


def _unpack_bits(words: np.ndarray) -> np.ndarray:
    """Bit i of the little-endian u64 words, as KEY_SLOTS booleans."""
    return np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little").astype(bool)


class InputTracker:
    """Fills an :class:`Input` once per frame from the input block.

    Each :meth:`update` compares the block with the previous settled read, so the counts
    are what happened in between; a read that finds the compositor mid-write (``None``)
    leaves this frame with no presses and catches them up at the next read, and the first
    read is the baseline (a game started late does not replay what was pressed before it).
    """

    def __init__(self, reader: InputReader) -> None:
        self.reader = reader
        self._last: np.ndarray | None = None
        self._changed = True
        #: Frames whose read found nothing settled (never written, or mid-write).
        self.missed_reads = 0

    def update(self, input: Input) -> None:
        """Make ``input`` say what happened since the previous update."""
        record = self.reader.read()
        if self._changed:  # last frame's presses are over
            input._presses[:] = 0
            input._releases[:] = 0
            input.mouse._presses = [0] * BUTTON_SLOTS
            input.mouse._releases = [0] * BUTTON_SLOTS
            input.mouse.scroll = (0.0, 0.0)
            self._changed = False
        if record is None:
            self.missed_reads += 1
            return
        last = self._last if self._last is not None else record
        if last is not record and record.tobytes() == last.tobytes():
            return  # no input since the last read: most frames
        self._changed = True
        mouse = input.mouse
        # Counters are u32 and wrap: the difference modulo 2**32 is the count.
        input._presses[:] = (record["key_presses"] - last["key_presses"]).astype(np.uint32)
        input._releases[:] = (record["key_releases"] - last["key_releases"]).astype(np.uint32)
        input._down[:] = _unpack_bits(record["keys_down"])
        presses = (record["button_presses"] - last["button_presses"]).astype(np.uint32)
        releases = (record["button_releases"] - last["button_releases"]).astype(np.uint32)
        mouse._presses = [int(n) for n in presses]
        mouse._releases = [int(n) for n in releases]
        mouse._buttons = int(record["buttons"])
        mouse.position = (float(record["mouse"][0]), float(record["mouse"][1]))
        mouse.window = (int(record["window"][0]), int(record["window"][1]))
        scroll = record["scroll"] - last["scroll"]
        mouse.scroll = (float(scroll[0]), float(scroll[1]))
        input.frame = int(record["frame"])
        input.events = int(record["events"])
        self._last = record


def attach_input(engine: Any, reader: InputReader) -> InputTracker:
    """Refresh ``engine.world.input`` from ``reader`` before every frame's systems run.

    Returns the tracker (its ``missed_reads`` is a health figure).
    """
    tracker = InputTracker(reader)
    engine.before_frame.append(lambda eng: tracker.update(eng.world.input))
    return tracker

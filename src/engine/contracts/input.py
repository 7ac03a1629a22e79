"""The input block: keyboard and mouse state, compositor → game, behind the one seqlock.

The window lives in the compositor process, so what a player presses crosses the process
boundary the way the pose does: the compositor (its window's events, or a scripted input
file) keeps the state and writes it, whole, into one 4 KiB block; the game reads it once
per frame. Nothing waits: a write is one copy of ~1.2 KiB between the seqlock's two
stores; a read that meets a write in progress retries a bounded number of times.

Layout (little-endian, offsets in bytes)::

    0    magic "ASEINPT1", version u32, reserved u32
    16   seq u64                  odd while the compositor writes, even when settled
    24   frame u64                the compositor frame of the newest change
    32   events u64               input events so far (every press, release, move, scroll)
    40   time_ns i64              when the newest change was written (compositor clock)
    48   mouse 2 f64              pointer x, y in window pixels, origin bottom left
    64   scroll 2 f64             scroll x, y summed since the compositor started
    80   window 2 u32             mirror window width, height in pixels (0, 0: no window)
    88   buttons u32              mouse buttons down, bit i = button i (see BUTTON_NAMES)
    92   reserved u32
    96   keys_down 2 u64          bit i of the 128-bit set = key i (see KEY_NAMES) is down
    112  key_presses 128 u32      presses of key i so far (wraps at 2**32)
    624  key_releases 128 u32     releases of key i so far
    1136 button_presses 8 u32     presses of button i so far
    1168 button_releases 8 u32    releases of button i so far

Presses and releases are **counters**, not flags: a reader that compares two reads sees
every press made between them, even a key pressed and released again before the game's
next frame (``down`` then says up, the counter says it was pressed). Counters start at 0
for each compositor; a reader takes its first read as the baseline.

**Key codes.** A key is an index into :data:`KEY_NAMES` (0 is unused: keys outside the
table are not tracked). Each name is pyglet's name for the key (``pyglet.window.key``),
and :data:`KEY_SYMBOLS` holds pyglet's symbol for each index, so the compositor maps a
window's ``on_key_press(symbol, ...)`` with :func:`key_index` and the game can be asked
by name (``"SPACE"``) or by pyglet symbol (``key.SPACE``) alike. The values are copied
here rather than imported: importing ``pyglet.window`` opens a GL context, which neither
side wants just to name a key (``tests/test_input.py`` checks them against pyglet).
"""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from engine.contracts.seqlock import Seqlock
from engine.contracts.shm import BLOCK_BYTES

INPUT_MAGIC = b"ASEINPT1"
VERSION = 1
KEY_SLOTS = 128
BUTTON_SLOTS = 8
_HEADER = struct.Struct("<8sII")
_SEQ_OFFSET = 16
_RECORD_OFFSET = 24

#: One input record, as it lies in the block from offset 24.
RECORD = np.dtype(
    [
        ("frame", "<u8"),
        ("events", "<u8"),
        ("time_ns", "<i8"),
        ("mouse", "<f8", (2,)),
        ("scroll", "<f8", (2,)),
        ("window", "<u4", (2,)),
        ("buttons", "<u4"),
        ("reserved", "<u4"),
        ("keys_down", "<u8", (2,)),
        ("key_presses", "<u4", (KEY_SLOTS,)),
        ("key_releases", "<u4", (KEY_SLOTS,)),
        ("button_presses", "<u4", (BUTTON_SLOTS,)),
        ("button_releases", "<u4", (BUTTON_SLOTS,)),
    ]
)
assert _RECORD_OFFSET + RECORD.itemsize <= BLOCK_BYTES

# (name, pyglet symbol) for key indices 1.. ; index 0 is "not a tracked key".
_KEYS: tuple[tuple[str, int], ...] = (
    *((chr(c), c + 0x20) for c in range(ord("A"), ord("Z") + 1)),  # pyglet: lowercase ASCII
    *((f"_{d}", 0x30 + d) for d in range(10)),
    *((f"F{n}", 0xFFBD + n) for n in range(1, 13)),
    ("SPACE", 0x20),
    ("ENTER", 0xFF0D),
    ("ESCAPE", 0xFF1B),
    ("TAB", 0xFF09),
    ("BACKSPACE", 0xFF08),
    ("DELETE", 0xFFFF),
    ("INSERT", 0xFF63),
    ("HOME", 0xFF50),
    ("END", 0xFF57),
    ("PAGEUP", 0xFF55),
    ("PAGEDOWN", 0xFF56),
    ("LEFT", 0xFF51),
    ("RIGHT", 0xFF53),
    ("UP", 0xFF52),
    ("DOWN", 0xFF54),
    ("LSHIFT", 0xFFE1),
    ("RSHIFT", 0xFFE2),
    ("LCTRL", 0xFFE3),
    ("RCTRL", 0xFFE4),
    ("LALT", 0xFFE9),
    ("RALT", 0xFFEA),
    ("LMETA", 0xFFE7),
    ("RMETA", 0xFFE8),
    ("LWINDOWS", 0xFFEB),
    ("RWINDOWS", 0xFFEC),
    ("LCOMMAND", 0xFFED),
    ("RCOMMAND", 0xFFEE),
    ("LOPTION", 0xFFEF),
    ("ROPTION", 0xFFF0),
    ("CAPSLOCK", 0xFFE5),
    ("MINUS", 0x2D),
    ("EQUAL", 0x3D),
    ("BRACKETLEFT", 0x5B),
    ("BRACKETRIGHT", 0x5D),
    ("SEMICOLON", 0x3B),
    ("APOSTROPHE", 0x27),
    ("GRAVE", 0x60),
    ("BACKSLASH", 0x5C),
    ("COMMA", 0x2C),
    ("PERIOD", 0x2E),
    ("SLASH", 0x2F),
    *((f"NUM_{d}", 0xFFB0 + d) for d in range(10)),
    ("NUM_ENTER", 0xFF8D),
    ("NUM_ADD", 0xFFAB),
    ("NUM_SUBTRACT", 0xFFAD),
    ("NUM_MULTIPLY", 0xFFAA),
    ("NUM_DIVIDE", 0xFFAF),
    ("NUM_DECIMAL", 0xFFAE),
    ("PAUSE", 0xFF13),
    ("PRINT", 0xFF61),
    ("SCROLLLOCK", 0xFF14),
    ("NUMLOCK", 0xFF7F),
    ("MENU", 0xFF67),
)
assert len(_KEYS) < KEY_SLOTS

#: Key index -> pyglet's key name ("" for index 0).
KEY_NAMES: tuple[str, ...] = ("", *(name for name, _ in _KEYS))
#: Key index -> pyglet's key symbol (0 for index 0).
KEY_SYMBOLS: tuple[int, ...] = (0, *(symbol for _, symbol in _KEYS))
_BY_NAME = {name: i for i, name in enumerate(KEY_NAMES) if name}
# Other spellings: pyglet's RETURN, digits without the underscore.
_BY_NAME.update({"RETURN": _BY_NAME["ENTER"], **{str(d): _BY_NAME[f"_{d}"] for d in range(10)}})
_BY_SYMBOL = {symbol: i for i, symbol in enumerate(KEY_SYMBOLS) if symbol}

#: Mouse button index -> name; pyglet's button constant for index i is ``1 << i``.
BUTTON_NAMES: tuple[str, ...] = ("LEFT", "MIDDLE", "RIGHT", "MOUSE4", "MOUSE5")


def key_index(key: str | int) -> int:
    """The index of a key given by name (``"SPACE"``, ``"a"``, ``"ENTER"``/``"RETURN"``,
    ``"7"``/``"_7"``; any case) or by pyglet symbol (``pyglet.window.key.SPACE``).

    A pyglet symbol outside :data:`KEY_NAMES` gives 0 (not tracked). Raises ``KeyError``
    for a name that is not a key (a typo should not read as "never pressed").
    """
    if isinstance(key, str):
        index = _BY_NAME.get(key.upper())
        if index is None:
            raise KeyError(f"unknown key {key!r} (names: pyglet.window.key's, e.g. 'SPACE', 'A')")
        return index
    return _BY_SYMBOL.get(int(key), 0)


def button_index(button: str | int) -> int:
    """The index of a mouse button by name (``"LEFT"``, any case) or by pyglet constant
    (``pyglet.window.mouse.LEFT`` is 1, ``RIGHT`` 4). Raises ``KeyError`` for anything else.
    """
    if isinstance(button, str):
        try:
            return BUTTON_NAMES.index(button.upper())
        except ValueError:
            raise KeyError(f"unknown mouse button {button!r} (use {BUTTON_NAMES})") from None
    value = int(button)
    if value <= 0 or value & (value - 1) or value.bit_length() > len(BUTTON_NAMES):
        raise KeyError(f"unknown mouse button {button!r}")
    return value.bit_length() - 1


def new_record() -> np.ndarray:
    """A zeroed record (a 0-d structured array of :data:`RECORD`)."""
    return np.zeros((), RECORD)


def _map(fd: int, writable: bool) -> mmap.mmap:
    if os.fstat(fd).st_size < BLOCK_BYTES:
        raise ValueError(f"block is smaller than {BLOCK_BYTES} bytes")
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    return mmap.mmap(fd, BLOCK_BYTES, flags=mmap.MAP_SHARED, prot=prot)


class InputWriter:
    """The compositor's side: keeps the input state and publishes it whole.

    Event methods (:meth:`key`, :meth:`button`, :meth:`move`, :meth:`scroll`) change a
    private copy and count one event each; :meth:`publish` copies it into the block if
    anything changed since the last publish. Neither ever waits or raises for odd input:
    an untracked key (index 0) or a button index out of range is ignored.

    Example:
        >>> from engine.contracts.shm import create_block_fd
        >>> fd = create_block_fd("input-doc")
        >>> writer, reader = InputWriter(fd), InputReader(fd)
        >>> writer.key(key_index("SPACE"), down=True)
        >>> writer.publish(frame=7, time_ns=0)
        True
        >>> record = reader.read()
        >>> int(record["frame"]), int(record["key_presses"][key_index("SPACE")])
        (7, 1)
    """

    def __init__(self, fd: int) -> None:
        self._mm = _map(fd, writable=True)
        self._u64 = np.frombuffer(self._mm, dtype="<u8", count=BLOCK_BYTES // 8)
        self._shared = np.frombuffer(self._mm, RECORD, count=1, offset=_RECORD_OFFSET)
        self._seq = Seqlock(self._u64, _SEQ_OFFSET // 8)
        self.state = new_record()
        self.dirty = False
        _HEADER.pack_into(self._mm, 0, INPUT_MAGIC, VERSION, 0)

    # -- events ------------------------------------------------------------------------
    def key(self, index: int, down: bool) -> None:
        """A key went down (``down``) or up. Index 0 (untracked) and repeats of the
        current state (a press while already down) change nothing."""
        if not 0 < index < KEY_SLOTS:
            return
        s = self.state
        word, bit = divmod(index, 64)
        mask = np.uint64(1 << bit)
        is_down = bool(s["keys_down"][word] & mask)
        if down == is_down:
            return
        if down:
            s["keys_down"][word] |= mask
            _count(s["key_presses"], index)
        else:
            s["keys_down"][word] &= ~mask
            _count(s["key_releases"], index)
        self._event()

    def button(self, index: int, down: bool) -> None:
        """A mouse button went down or up (same rules as :meth:`key`)."""
        if not 0 <= index < BUTTON_SLOTS:
            return
        s = self.state
        mask = 1 << index
        if down == bool(int(s["buttons"]) & mask):
            return
        if down:
            s["buttons"] = int(s["buttons"]) | mask
            _count(s["button_presses"], index)
        else:
            s["buttons"] = int(s["buttons"]) & ~mask
            _count(s["button_releases"], index)
        self._event()

    def move(self, x: float, y: float) -> None:
        """The pointer is at ``(x, y)`` window pixels."""
        self.state["mouse"] = (x, y)
        self._event()

    def scroll(self, dx: float, dy: float) -> None:
        """The wheel turned by ``(dx, dy)`` (summed into the record's running total)."""
        self.state["scroll"] += (dx, dy)
        self._event()

    def window_size(self, width: int, height: int) -> None:
        """The mirror window's size, so a reader can normalise pointer positions."""
        if tuple(self.state["window"]) != (width, height):
            self.state["window"] = (max(0, width), max(0, height))
            self.dirty = True

    def _event(self) -> None:
        self.state["events"] += np.uint64(1)
        self.dirty = True

    # -- publishing --------------------------------------------------------------------
    def publish(self, frame: int, time_ns: int, force: bool = False) -> bool:
        """Copy the state into the block (if it changed, or ``force``), stamped with the
        compositor ``frame`` and ``time_ns``; returns whether it wrote."""
        if not (self.dirty or force):
            return False
        self.state["frame"] = frame
        self.state["time_ns"] = time_ns
        odd = self._seq.begin_write()
        self._shared[0] = self.state
        self._seq.end_write(odd)
        self.dirty = False
        return True

    def close(self) -> None:
        del self._u64, self._shared, self._seq
        self._mm.close()


def _count(counters: np.ndarray, index: int) -> None:
    """One more at ``index`` of a u32 counter array, wrapping at 2**32 (readers take the
    difference modulo 2**32)."""
    counters[index] = (int(counters[index]) + 1) & 0xFFFFFFFF


class InputReader:
    """The game's side of the block, mapped read-only.

    :meth:`read` never blocks and never raises for bad contents: a block that is not
    stamped, never written, or never settles reads as ``None``.
    """

    def __init__(self, fd: int) -> None:
        self._mm = _map(fd, writable=False)
        self._u64 = np.frombuffer(self._mm, dtype="<u8", count=BLOCK_BYTES // 8)
        self._shared = np.frombuffer(self._mm, RECORD, count=1, offset=_RECORD_OFFSET)
        self._seq = Seqlock(self._u64, _SEQ_OFFSET // 8)

    def read(self) -> np.ndarray | None:
        """A settled copy of the record (0-d :data:`RECORD` array), or ``None``."""
        if self._mm[0:8] != INPUT_MAGIC:
            return None
        return self._seq.read(lambda: self._shared.copy().reshape(()))

    def close(self) -> None:
        del self._u64, self._shared, self._seq
        self._mm.close()

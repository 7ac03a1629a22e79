"""The status block: a few lines of text the live game publishes for the mirror's HUD.

The compositor's HUD shows how each system of the game is doing (per-system times beside
its own frame rate), but the compositor runs no game code and never waits on the game. So
the game writes its systems table, a few short lines, into this block every
``STATUS_PERIOD_NS`` (:class:`StatusWriter`), and the compositor copies whatever is there
when it lays its text out (:class:`StatusReader`), under the one seqlock.

Layout (little-endian), in a :data:`~engine.contracts.shm.BLOCK_BYTES` block made by the
supervisor (the compositor gets a read-only fd)::

    0   u64  seq      the seqlock counter (0: nothing written)
    8   u32  length   bytes of text that follow (at most TEXT_BYTES)
    12  u32  reserved
    16  ...  text     UTF-8, lines separated by "\\n"

A reader never trusts ``length`` beyond the block, and text that is not UTF-8 is read with
replacements: a game can only make its own HUD lines wrong.

Example:
    >>> from engine.contracts.shm import create_block_fd
    >>> fd = create_block_fd("status")
    >>> StatusWriter(fd).publish(["move   0.12 ms"])
    >>> StatusReader(fd).read()
    ('move   0.12 ms',)
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from engine.contracts.seqlock import Seqlock

HEADER_BYTES = 16
#: Most text bytes kept (longer text is cut at a line end where it can be).
TEXT_BYTES = 2048
#: How often the game writes its lines.
STATUS_PERIOD_NS = 250_000_000
#: Most lines kept.
MAX_LINES = 12


class StatusWriter:
    """The game's side: ``publish(lines)`` replaces the text. Never raises for the text
    (it is cut to :data:`MAX_LINES` lines and :data:`TEXT_BYTES` bytes)."""

    def __init__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size < HEADER_BYTES + TEXT_BYTES:
            raise ValueError(f"status block is {size} bytes, needs {HEADER_BYTES + TEXT_BYTES}")
        self._mm = mmap.mmap(fd, HEADER_BYTES + TEXT_BYTES, mmap.MAP_SHARED)
        self._bytes = np.frombuffer(self._mm, np.uint8)
        self._lock = Seqlock(self._bytes[:8].view("<u8"), 0)
        self._u32 = self._bytes[:HEADER_BYTES].view("<u4")

    def publish(self, lines: list[str] | tuple[str, ...]) -> None:
        data = "\n".join(lines[:MAX_LINES]).encode("utf-8", "replace")
        if len(data) > TEXT_BYTES:
            cut = data.rfind(b"\n", 0, TEXT_BYTES)
            data = data[: cut if cut > 0 else TEXT_BYTES]
        odd = self._lock.begin_write()
        self._mm[HEADER_BYTES : HEADER_BYTES + len(data)] = data
        self._u32[2] = len(data)
        self._lock.end_write(odd)

    def close(self) -> None:
        del self._bytes, self._u32, self._lock
        self._mm.close()


class StatusReader:
    """The compositor's side: ``read()`` -> the lines, or ``None`` (nothing yet, or the
    writer kept changing them). Maps read-only; never waits."""

    def __init__(self, fd: int) -> None:
        size = min(os.fstat(fd).st_size, HEADER_BYTES + TEXT_BYTES)
        self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot=mmap.PROT_READ)
        self._bytes = np.frombuffer(self._mm, np.uint8)
        self._lock = Seqlock(self._bytes[:8].view("<u8"), 0)
        self._u32 = self._bytes[:HEADER_BYTES].view("<u4")
        self._size = size

    def read(self) -> tuple[str, ...] | None:
        def copy() -> bytes:
            length = min(int(self._u32[2]), self._size - HEADER_BYTES)
            return bytes(self._mm[HEADER_BYTES : HEADER_BYTES + length])

        data = self._lock.read(copy)
        if data is None:
            return None
        text = data.decode("utf-8", "replace")
        return tuple(text.split("\n")[:MAX_LINES]) if text else ()

    def close(self) -> None:
        del self._bytes, self._u32, self._lock
        self._mm.close()


def systems_lines(snapshot: dict, most: int = MAX_LINES - 1) -> list[str]:
    """The HUD's systems table from a scheduler snapshot: the slowest systems first, each
    ``name  state  mean/p99 ms of budget``, plus a line for the rest."""
    rows = []
    for key, s in snapshot.get("systems", {}).items():
        rows.append((float(s.get("mean_ms", 0.0)), key, s))
    rows.sort(reverse=True)
    lines = []
    for mean, key, s in rows[:most]:
        state = str(s.get("state", ""))
        mark = "" if state in ("enabled", "") else f" [{state}]"
        lines.append(
            f"{key[:24]:<24} {mean:5.2f}/{float(s.get('p99_ms', 0.0)):5.2f} ms "
            f"of {float(s.get('budget_ms', 0.0)):.1f}{mark}"
        )
    if len(rows) > most:
        lines.append(f"... {len(rows) - most} more systems")
    return lines

"""The last minute of the world: a ring of checkpoint files, one per checkpoint taken.

A version that deletes every entity, or calls ``world.clear_database()``, runs without a
fault: the engine cannot know it was wrong. The ring lets the user take the world back
(``engine rewind PROJECT SECONDS``): it keeps the newest checkpoints as files in one
folder, each named by the moment its world was taken and its frame::

    .engine/checkpoints/00000001234567890123-f000000000451.ckpt

Bounded both ways: at most ``keep`` files and ``max_bytes`` on disk (the oldest go first;
the newest is always kept, however large), and in memory one small :class:`RingEntry`
per file. Removing the last name of a large file costs the kernel tens of milliseconds
(200 MB: about 25 ms here, freeing its cached pages), so a game's ring removes files on a
thread of its own (``remove_in_background``); :meth:`close` waits for those removals.

The folder is read back when a ring is opened, so a game restarted after a crash can
still be rewound to before the crash. Times are ``clock()`` nanoseconds
(``time.monotonic_ns``: one clock for every process of a machine since boot); files dated
in the future (a previous boot) are removed.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".ckpt"
_NAME = re.compile(r"^(\d{20})-f(\d+)\.ckpt$")

#: Defaults: a minute of checkpoints, and at most 2 GiB of them on disk.
DEFAULT_KEEP = 61
DEFAULT_MAX_BYTES = 2 * 1024**3


@dataclass(frozen=True, slots=True)
class RingEntry:
    """One checkpoint in the ring: its file, when its world was taken, its frame, size."""

    path: Path
    time_ns: int
    frame: int
    size: int


class CheckpointRing:
    """The newest checkpoint files of one game, oldest first.

    Example:
        >>> ring = CheckpointRing(Path(".engine/checkpoints"), keep=60)    # doctest: +SKIP
        >>> path = ring.slot(time.monotonic_ns(), frame=90)                # doctest: +SKIP
        >>> write_the_checkpoint(path); ring.add(path)                     # doctest: +SKIP
        >>> ring.read(ring.find(seconds=10))                               # doctest: +SKIP

    Raises ``ValueError`` if ``keep`` is below 1. Only one process adds to a ring at a
    time (the game process); reading is safe from anywhere.
    """

    def __init__(
        self,
        directory: Path,
        *,
        keep: int = DEFAULT_KEEP,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], int] = time.monotonic_ns,
        fresh: bool = False,
        remove_in_background: bool = False,
    ) -> None:
        """Open (or create) the ring in ``directory``; ``fresh`` empties it first."""
        if keep < 1:
            raise ValueError(f"a checkpoint ring keeps at least 1 checkpoint, not {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: deque[RingEntry] = deque()
        self._bytes = 0
        self._background = remove_in_background
        self._remover: concurrent.futures.ThreadPoolExecutor | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._scan(fresh)

    # -- writing -------------------------------------------------------------------------
    def slot(self, time_ns: int, frame: int) -> Path:
        """The file a checkpoint of the world at ``time_ns`` and ``frame`` is written to.

        Write it atomically (a temporary name, then ``os.replace``), then :meth:`add` it.
        """
        return self.directory / f"{time_ns:020d}-f{frame:012d}{SUFFIX}"

    def add(self, path: Path) -> RingEntry:
        """Take a written checkpoint file (named by :meth:`slot`) into the ring.

        Then drops the oldest files beyond ``keep`` or ``max_bytes``. Raises
        ``ValueError`` for a name :meth:`slot` did not make and ``OSError`` if the file is
        missing.
        """
        entry = self._entry(Path(path))
        if entry is None:
            raise ValueError(f"{path} is not a checkpoint ring file name")
        self._entries.append(entry)
        self._bytes += entry.size
        self._prune()
        return entry

    def clear(self) -> None:
        """Remove every checkpoint of the ring (a new world starts)."""
        while self._entries:
            self._drop_oldest()

    def close(self) -> None:
        """Wait for the files being removed in the background (the ring stays usable)."""
        if self._remover is not None:
            self._remover.shutdown(wait=True)
            self._remover = None

    # -- reading -------------------------------------------------------------------------
    @property
    def entries(self) -> list[RingEntry]:
        """Every checkpoint kept, oldest first."""
        return list(self._entries)

    @property
    def bytes(self) -> int:
        """The size of every checkpoint kept, together."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, seconds: float, at_ns: int | None = None) -> RingEntry:
        """The checkpoint of the world as it was ``seconds`` before ``at_ns`` (default now).

        That is the newest one taken at or before that moment. Raises ``LookupError``
        when the ring is empty or its oldest checkpoint is younger than that, and
        ``ValueError`` for a negative or non-finite ``seconds``.
        """
        if not seconds >= 0 or seconds == float("inf"):
            raise ValueError(f"seconds must be a finite number >= 0, not {seconds!r}")
        now = self.clock() if at_ns is None else at_ns
        wanted = now - round(seconds * 1e9)
        for entry in reversed(self._entries):
            if entry.time_ns <= wanted:
                return entry
        if not self._entries:
            raise LookupError("no checkpoint has been taken yet")
        oldest = (now - self._entries[0].time_ns) / 1e9
        raise LookupError(
            f"the oldest checkpoint kept is {oldest:.1f} s old; cannot go back {seconds:g} s "
            f"(the ring keeps {self.keep} checkpoints, at most {self.max_bytes >> 20} MiB)"
        )

    def age_s(self, entry: RingEntry, at_ns: int | None = None) -> float:
        """How long before ``at_ns`` (default now), in seconds, ``entry``'s world was taken."""
        return ((self.clock() if at_ns is None else at_ns) - entry.time_ns) / 1e9

    def read(self, entry: RingEntry) -> bytes:
        """The checkpoint's bytes; raises ``OSError`` if its file is gone."""
        return entry.path.read_bytes()

    # -- internals -----------------------------------------------------------------------
    def _entry(self, path: Path) -> RingEntry | None:
        m = _NAME.match(path.name)
        if m is None:
            return None
        return RingEntry(path, int(m.group(1)), int(m.group(2)), path.stat().st_size)

    def _scan(self, fresh: bool) -> None:
        now = self.clock()
        found = []
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):  # a write cut short by a crash
                path.unlink(missing_ok=True)
                continue
            try:
                entry = self._entry(path)
            except FileNotFoundError:
                continue
            if entry is None:
                continue
            if fresh or entry.time_ns > now:  # emptied, or dated by an earlier boot
                path.unlink(missing_ok=True)
                continue
            found.append(entry)
        for entry in sorted(found, key=lambda e: e.time_ns):
            self._entries.append(entry)
            self._bytes += entry.size
        self._prune()

    def _prune(self) -> None:
        while len(self._entries) > 1 and (
            len(self._entries) > self.keep or self._bytes > self.max_bytes
        ):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        entry = self._entries.popleft()
        self._bytes -= entry.size
        if not self._background:
            _remove(entry.path)
            return
        if self._remover is None:
            self._remover = concurrent.futures.ThreadPoolExecutor(1, "checkpoint-ring")
        self._remover.submit(_remove, entry.path)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

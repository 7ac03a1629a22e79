"""The pose handoff and the game's heartbeat: two small shared blocks, each behind a seqlock.

**Pose block** (compositor → every client), written once per display frame::

    0    magic "ASEPOSE1", version u32, reserved u32
    16   seq u64               odd while the compositor writes, even when settled
    24   frame u64             the display frame a client should render for
    32   display_time_ns i64   when that frame is predicted to reach the eyes
    40   period_ns i64         the display period
    48   published_ns i64      when this record was written
    56   head pose             7 f64: position xyz, orientation xyzw
    112  eyes                  2 x 11 f64: position xyz, orientation xyzw, fov l r u d

**Heartbeat block** (game → supervisor): the record is written after every game frame; the
*running-now* words as the game moves between systems and engine phases, from its start::

    0    magic "ASEBEAT1", version u32, pid u32
    16   seq u64
    24   frame u64             the game's frame number (0: no frame finished yet)
    32   time_ns i64           when that frame finished
    40   published_frame u64   the last frame whose layer image was published (0: none)
    48   checkpoints u64       checkpoints taken so far
    56   checkpoint_frame u64  frame of the newest checkpoint
    64   checkpoint_ns i64     how long serializing the newest checkpoint took
    72   checkpoint_bytes u64
    128  running_main u64      what the main thread runs now: a Phase or a name id
    136  running_other u64     the module code another thread (the loader's) runs now; 0: none
    144  exit_from u64         what ran when the game signalled its own end (0: it did not)
    152  exit_signal u64       the signal it sent itself then
    160  main_thread u64       the main thread's ident (faulthandler dumps name threads so)
    168  other_thread u64      the ident of the thread of running_other
    4096 name table            NAME_BYTES-byte entries: what each id > 63 names (see below)

The running-now words are not behind the seqlock: each is one aligned 8-byte store, which
a reader never sees torn, so the scheduler pays one store per system call
(``running.main[0] = handle.running_id``). Ids below :data:`FIRST_NAME_ID` are
:class:`Phase` values; larger ids name code, each described once in the name table
(kind, module, version, name, file, line) *before* the id is first stored, with the id
itself written last, so a reader never takes a half-written entry for it. Entries are
reused round-robin; a reader checks the entry still holds its id.

The supervisor creates the heartbeat block (:func:`create_heartbeat_fd`, a sealed memfd of
:data:`HEARTBEAT_BYTES`; pages nobody wrote cost no memory) with ``running_main`` at
:attr:`Phase.IMPORT`, so a game that dies before its first own store is blamed on its
start-up. The pose block is a 4 KiB memfd (:func:`engine.contracts.shm.create_block_fd`).
Each has exactly one writer and its record is guarded by the engine's one seqlock
(:mod:`engine.contracts.seqlock`), so neither side ever waits for the other and a writer
stopped half-way recovers on its next write.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from engine.contracts.seqlock import Seqlock
from engine.contracts.shm import BLOCK_BYTES, sealed_memfd
from engine.pose.base import EyeView, Fov, Pose, PoseSample

POSE_MAGIC = b"ASEPOSE1"
HEARTBEAT_MAGIC = b"ASEBEAT1"
VERSION = 1
_SEQ_OFFSET = 16
_RECORD_OFFSET = 24
_HEADER = struct.Struct("<8sII")
# frame, display_time_ns, period_ns, published_ns, head (7), eyes (2 x 11)
_POSE_RECORD = struct.Struct("<Qqqq" + "7d" + "11d" * 2)
# frame, time_ns, published_frame, checkpoints, checkpoint_frame, checkpoint_ns, bytes
_BEAT_RECORD = struct.Struct("<QqQQQqQ")


class _SeqlockBlock:
    """A mapped block (4 KiB, or up to ``most`` bytes) with a seqlock around one record."""

    def __init__(
        self,
        fd: int,
        magic: bytes,
        record: struct.Struct,
        writable: bool,
        most: int = BLOCK_BYTES,
    ) -> None:
        size = os.fstat(fd).st_size
        if size < BLOCK_BYTES:
            raise ValueError(f"block is smaller than {BLOCK_BYTES} bytes")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self.size = min(size, most)
        self._mm = mmap.mmap(fd, self.size, flags=mmap.MAP_SHARED, prot=prot)
        self._u64 = np.frombuffer(self._mm, dtype="<u8", count=BLOCK_BYTES // 8)
        self._magic = magic
        self._record = record
        self._seq = Seqlock(self._u64, _SEQ_OFFSET // 8)

    # -- writer ------------------------------------------------------------------------
    def _stamp(self, extra: int = 0) -> None:
        _HEADER.pack_into(self._mm, 0, self._magic, VERSION, extra)

    def _write(self, values: tuple) -> None:
        odd = self._seq.begin_write()
        self._record.pack_into(self._mm, _RECORD_OFFSET, *values)
        self._seq.end_write(odd)

    # -- reader ------------------------------------------------------------------------
    def _read(self) -> tuple | None:
        """The settled record, or ``None`` if the block is not stamped or never settles."""
        if self._mm[0:8] != self._magic:
            return None
        raw = self._seq.read(lambda: self._mm[_RECORD_OFFSET : _RECORD_OFFSET + self._record.size])
        return None if raw is None else self._record.unpack(raw)

    def header_extra(self) -> int:
        return _HEADER.unpack_from(self._mm, 0)[2]

    def close(self) -> None:
        del self._u64, self._seq
        self._mm.close()


# --- pose block -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandoffFrame:
    """One pose-block record: the frame a client should render and how to render it."""

    frame: int
    display_time_ns: int
    period_ns: int
    published_ns: int
    sample: PoseSample


def _pose_values(p: Pose) -> tuple[float, ...]:
    return (*p.position, *p.orientation)


def _eye_values(e: EyeView) -> tuple[float, ...]:
    return (*_pose_values(e.pose), *e.fov.as_tuple())


class PoseHandoffWriter:
    """The compositor's side of the pose block: :meth:`publish` once per display frame."""

    def __init__(self, fd: int) -> None:
        self._block = _SeqlockBlock(fd, POSE_MAGIC, _POSE_RECORD, writable=True)
        self._block._stamp()

    def publish(self, sample: PoseSample, period_ns: int, published_ns: int) -> None:
        """Make ``sample`` (frame, display time, head and eyes) the current record."""
        values = (
            sample.frame,
            sample.display_time_ns,
            period_ns,
            published_ns,
            *_pose_values(sample.head),
            *_eye_values(sample.eyes[0]),
            *_eye_values(sample.eyes[1]),
        )
        self._block._write(values)

    def close(self) -> None:
        self._block.close()


class PoseHandoffReader:
    """A client's side of the pose block, mapped read-only.

    :meth:`read` never blocks and never raises for bad contents: a block that is not
    stamped yet, never settles, or holds non-finite numbers reads as ``None``.
    """

    def __init__(self, fd: int) -> None:
        self._block = _SeqlockBlock(fd, POSE_MAGIC, _POSE_RECORD, writable=False)

    def read(self) -> HandoffFrame | None:
        v = self._block._read()
        if v is None or not all(math.isfinite(x) for x in v[4:]):
            return None
        frame, display_ns, period_ns, published_ns = v[:4]
        head = Pose(tuple(v[4:7]), tuple(v[7:11]))
        eyes = tuple(
            EyeView(Pose(tuple(v[i : i + 3]), tuple(v[i + 3 : i + 7])), Fov(*v[i + 7 : i + 11]))
            for i in (11, 22)
        )
        sample = PoseSample(frame, display_ns, head, eyes)  # type: ignore[arg-type]
        return HandoffFrame(frame, display_ns, period_ns, published_ns, sample)

    def close(self) -> None:
        self._block.close()


# --- heartbeat block ------------------------------------------------------------------

#: Where the name table starts, how big an entry is, and how many the full block holds.
NAME_TABLE_OFFSET = BLOCK_BYTES
NAME_BYTES = 256
NAME_ENTRIES = 1024
#: Size of the heartbeat block the supervisor creates (260 KiB, mostly never touched).
HEARTBEAT_BYTES = NAME_TABLE_OFFSET + NAME_ENTRIES * NAME_BYTES
#: Ids from here on name code (the name table); below, they are :class:`Phase` values.
FIRST_NAME_ID = 64

# Word indices (8-byte words from the block's start) of the running-now words.
_RUNNING_MAIN, _RUNNING_OTHER, _EXIT_FROM, _EXIT_SIGNAL, _MAIN_THREAD, _OTHER_THREAD = range(16, 22)
_RUNNING_MAIN_OFFSET = 8 * _RUNNING_MAIN
# id (written last), version (-1: none), line, kind, user flag, module, name, file
_NAME = struct.Struct("<QqIBBxx48s48s136s")
assert _NAME.size == NAME_BYTES
_ID = struct.Struct("<Q")


class Phase(IntEnum):
    """The engine's own phases, as ``running_main`` holds them (below FIRST_NAME_ID)."""

    IMPORT = 1  # the interpreter starts and imports the engine (set by the supervisor)
    START = 2  # containment, faulthandler, GL context
    RESTORE = 3  # reading the checkpoint
    LOAD = 4  # the loader's own work between modules (module code is named)
    SETUP = 5  # game.py's setup(world)
    RENDER = 6  # the layer's renderer draws and publishes
    SHADER = 7  # shader compile and link
    CHECKPOINT = 8  # serializing the world
    IDLE = 9  # waiting for the compositor's next frame
    FRAME = 10  # the frame loop's own work: swaps, policy, after-frame hooks
    STOP = 11  # shutting down: final checkpoint, stats
    STANDBY = 12  # a warm standby: ready, waiting to be told to take over

    @property
    def text(self) -> str:
        return _PHASE_TEXT[self]


_PHASE_TEXT = {
    Phase.IMPORT: "import",
    Phase.START: "start",
    Phase.RESTORE: "restore",
    Phase.LOAD: "load",
    Phase.SETUP: "setup",
    Phase.RENDER: "render",
    Phase.SHADER: "shader compile",
    Phase.CHECKPOINT: "checkpoint",
    Phase.IDLE: "frame idle",
    Phase.FRAME: "frame",
    Phase.STOP: "stop",
    Phase.STANDBY: "standby",
}


#: The exit status of a game that ended itself because a thread of its user code would
#: not stop (the policy's ``unstoppable``): its running-now words name that code.
EXIT_UNSTOPPABLE = 75


class CodeKind(IntEnum):
    """What a name-table entry names."""

    SYSTEM = 1  # a system call (name: the system's)
    HOOK = 2  # a module hook (name: "on_load" / "on_unload")
    MODULE = 3  # a module's own code, run while it is imported (name: None)
    SHADER = 4  # a shader stage the GPU runs (module: its file name, e.g. "basic.frag")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One heartbeat record (see the module doc for the fields)."""

    pid: int
    frame: int
    time_ns: int
    published_frame: int
    checkpoints: int
    checkpoint_frame: int
    checkpoint_ns: int
    checkpoint_bytes: int


@dataclass(frozen=True, slots=True)
class Running:
    """What one thread of the game was running: user code, engine code, or a phase.

    Attributes:
        phase: ``"system"``, a hook's name (``"on_load"``), ``"load"`` (a module's own
            code at import), ``"shader"`` (a shader stage the GPU runs; ``module`` is its
            file name, ``line`` its first loop), or an engine :class:`Phase`'s text
            (``"frame idle"``).
        module / version / name: the code (``None`` for a phase).
        file / line: where that code is defined (``None`` / 0 when unknown).
        user: the code comes from the project's ``systems/`` (not the engine's own).
    """

    phase: str
    module: str | None = None
    version: int | None = None
    name: str | None = None
    file: str | None = None
    line: int = 0
    user: bool = False

    @property
    def system(self) -> str | None:
        """``module.name`` for a system or hook, else ``None``."""
        return f"{self.module}.{self.name}" if self.module and self.name else None


@dataclass(frozen=True, slots=True)
class RunningReport:
    """Everything the running-now words said when they were read.

    ``exit_from`` is what ran when the game sent itself a fatal signal (``exit_signal``).
    The thread idents name threads as faulthandler's dumps do.
    """

    main: Running | None
    other: Running | None
    exit_from: Running | None
    exit_signal: int
    main_thread: int
    other_thread: int


def create_heartbeat_fd(name: str = "heartbeat") -> int:
    """A sealed :data:`HEARTBEAT_BYTES` memfd whose main thread "runs" :attr:`Phase.IMPORT`
    until the game says otherwise. The caller owns it; raises ``OSError`` if refused."""
    fd = sealed_memfd(name, HEARTBEAT_BYTES)
    os.pwrite(fd, struct.pack("<Q", Phase.IMPORT), _RUNNING_MAIN_OFFSET)
    return fd


class RunningNow:
    """The game's side of the running-now words (see the module doc).

    The hot path is one store: :attr:`main` is a one-word view, and the scheduler writes
    ``main[0] = handle.running_id`` before each system call (ids come from
    :meth:`name_handles`). Everything else here runs a few times per frame at most.

    Also works over a private ``bytearray`` (no supervisor: single process, tests), so
    callers never check for one.

    Args:
        buffer: the mapped heartbeat block (writable), or any buffer at least 4 KiB long.
        user_dir: code defined under this folder is the user's (``PROJECT/systems``).
    """

    def __init__(self, buffer: Any | None = None, user_dir: str | os.PathLike | None = None):
        self._buffer = buffer if buffer is not None else bytearray(BLOCK_BYTES)
        self._view = memoryview(self._buffer)
        self.words = self._view[:BLOCK_BYTES].cast("Q")
        #: The word the scheduler stores a handle's ``running_id`` into.
        self.main = self._view[_RUNNING_MAIN_OFFSET : _RUNNING_MAIN_OFFSET + 8].cast("Q")
        self.capacity = max(0, (len(self._view) - NAME_TABLE_OFFSET) // NAME_BYTES)
        self.user_dir = os.fspath(user_dir) if user_dir else None
        self._main_ident = threading.main_thread().ident or 0
        self.words[_MAIN_THREAD] = self._main_ident
        self._next_id = FIRST_NAME_ID
        self._named: dict[int, tuple] = {}  # live id -> what it names (handles)
        self._named_order: object = None
        self._lock = threading.Lock()

    # -- phases and code -----------------------------------------------------------------
    def phase(self, phase: Phase) -> None:
        """The main thread is in engine ``phase`` now."""
        self.main[0] = phase

    def now(self) -> int:
        """The id the calling thread's word holds."""
        return int(self.words[self._slot()])

    def enter(self, running_id: int) -> int:
        """The calling thread runs ``running_id`` now; returns what it ran before, for
        :meth:`leave`."""
        slot = self._slot()
        before = int(self.words[slot])
        if slot == _RUNNING_OTHER:
            self.words[_OTHER_THREAD] = threading.get_ident()
        self.words[slot] = running_id
        return before

    def leave(self, before: int) -> None:
        """Back to what :meth:`enter` returned."""
        self.words[self._slot()] = before

    def _slot(self) -> int:
        return _RUNNING_MAIN if threading.get_ident() == self._main_ident else _RUNNING_OTHER

    def register(
        self,
        kind: CodeKind,
        module: str,
        version: int | None,
        name: str | None,
        file: str | os.PathLike | None,
        line: int = 0,
        user: bool | None = None,
    ) -> int:
        """Describe some code in the name table; returns its id (0 if the buffer has no
        table). ``user``: whether the code is the user's (default: whether ``file`` is
        under :attr:`user_dir`). Never raises for odd text: names and paths are cut to fit."""
        if not self.capacity:
            return 0
        path = os.fspath(file) if file else ""
        if user is None:
            user = bool(self.user_dir and path.startswith(self.user_dir + os.sep))
        with self._lock:
            running_id = self._next_id
            self._next_id += 1
        offset = NAME_TABLE_OFFSET + ((running_id - FIRST_NAME_ID) % self.capacity) * NAME_BYTES
        _NAME.pack_into(
            self._view,
            offset,
            0,  # the entry is invalid while it is rewritten
            -1 if version is None else version,
            max(0, min(line, 2**32 - 1)),
            kind,
            user,
            _cut(module, 48),
            _cut(name or "", 48),
            _cut(path, 136, keep_end=True),
        )
        _ID.pack_into(self._view, offset, running_id)  # last: the entry is whole
        return running_id

    def is_fresh(self, running_id: int) -> bool:
        """Whether ``running_id`` is recent enough to keep naming its code: an older one's
        entry is rewritten soon (half the table has been registered since), so whoever
        holds it registers its code again."""
        return running_id >= self._next_id - self.capacity // 2

    def name_handles(self, scheduler: Any) -> None:
        """Give every system handle of ``scheduler`` a ``running_id`` naming its version.

        Cheap when nothing changed: the scheduler makes a new ``order`` list whenever its
        systems change, and only then are handles looked at. An id old enough to be
        overwritten soon (half the table registered since) is renewed.
        """
        order = scheduler.order
        if order is self._named_order:
            return
        self._named_order = order
        renew_before = self._next_id - self.capacity // 2
        for h in order:
            key = (h.module, h.version, h.name)
            if (
                h.running_id
                and h.running_id >= renew_before
                and self._named.get(h.running_id) == key
            ):
                continue
            self._named.pop(h.running_id, None)
            code = getattr(h.fn, "__code__", None)
            h.running_id = self.register(
                CodeKind.SYSTEM,
                h.module,
                h.version,
                h.name,
                code.co_filename if code else None,
                code.co_firstlineno if code else 0,
            )
            self._named[h.running_id] = key

    def note_exit(self, signal_number: int, file: str | None = None, line: int = 0) -> None:
        """The game is about to end itself (``signal_number`` to itself; 0: an exception
        escaping the frame loop): remember what asked — at ``file:line``, if given."""
        running_id = self.now() or int(self.words[_RUNNING_MAIN])
        if file and running_id >= FIRST_NAME_ID and self.capacity:
            offset = NAME_TABLE_OFFSET + ((running_id - FIRST_NAME_ID) % self.capacity) * NAME_BYTES
            entry_id, version, _, kind, _, module, name, _ = _NAME.unpack_from(self._view, offset)
            if entry_id == running_id:  # the same code, named with the line that asked
                running_id = self.register(
                    CodeKind(kind),
                    _decode(module),
                    None if version < 0 else version,
                    _decode(name) or None,
                    file,
                    line,
                )
        self.words[_EXIT_FROM] = running_id
        self.words[_EXIT_SIGNAL] = signal_number

    def close(self) -> None:
        """Release the views (the block's mapping can then be closed)."""
        for view in (self.main, self.words, self._view):
            view.release()


def _cut(text: str, size: int, keep_end: bool = False) -> bytes:
    data = text.encode("utf-8", "replace")
    if len(data) <= size:
        return data
    return data[-size:] if keep_end else data[:size]


def _decode(data: bytes) -> str:
    return data.rstrip(b"\0").decode("utf-8", "replace")


class HeartbeatWriter:
    """The game's side: :meth:`beat` after every frame; :attr:`running` all the time."""

    def __init__(self, fd: int, pid: int | None = None) -> None:
        self._block = _SeqlockBlock(
            fd, HEARTBEAT_MAGIC, _BEAT_RECORD, writable=True, most=HEARTBEAT_BYTES
        )
        self._block._stamp(pid if pid is not None else os.getpid())
        #: What runs now (see :class:`RunningNow`); the game starts in :attr:`Phase.START`.
        self.running = RunningNow(self._block._mm)
        self.running.phase(Phase.START)
        self.published_frame = 0
        self.checkpoints = 0
        self.checkpoint_frame = 0
        self.checkpoint_ns = 0
        self.checkpoint_bytes = 0

    def beat(self, frame: int, time_ns: int | None = None) -> None:
        """Record that ``frame`` finished (now, unless ``time_ns`` is given)."""
        t = time.monotonic_ns() if time_ns is None else time_ns
        self._block._write(
            (
                frame,
                t,
                self.published_frame,
                self.checkpoints,
                self.checkpoint_frame,
                self.checkpoint_ns,
                self.checkpoint_bytes,
            )
        )

    def close(self) -> None:
        self.running.close()
        self._block.close()


class HeartbeatReader:
    """The supervisor's side; :meth:`read` is ``None`` until the game's first beat."""

    def __init__(self, fd: int) -> None:
        self._block = _SeqlockBlock(
            fd, HEARTBEAT_MAGIC, _BEAT_RECORD, writable=False, most=HEARTBEAT_BYTES
        )
        self._capacity = max(0, (self._block.size - NAME_TABLE_OFFSET) // NAME_BYTES)

    def read(self) -> Heartbeat | None:
        v = self._block._read()
        if v is None:
            return None
        return Heartbeat(self._block.header_extra(), *v)

    def running_main_id(self) -> int:
        """The main thread's running-now word, raw (one load; for polling)."""
        return int(self._block._u64[_RUNNING_MAIN])

    def running(self) -> RunningReport:
        """What the game runs now (or ran when it died). Never raises for bad contents:
        an id that names nothing (overwritten, garbage) reads as phase ``"unknown"``."""
        words = self._block._u64
        return RunningReport(
            main=self.describe(int(words[_RUNNING_MAIN])),
            other=self.describe(int(words[_RUNNING_OTHER])),
            exit_from=self.describe(int(words[_EXIT_FROM])),
            exit_signal=int(words[_EXIT_SIGNAL]),
            main_thread=int(words[_MAIN_THREAD]),
            other_thread=int(words[_OTHER_THREAD]),
        )

    def describe(self, running_id: int) -> Running | None:
        """What ``running_id`` names: ``None`` for 0, a phase, or a name-table entry."""
        if running_id == 0:
            return None
        if running_id < FIRST_NAME_ID:
            try:
                return Running(Phase(running_id).text)
            except ValueError:
                return Running("unknown")
        if not self._capacity:
            return Running("unknown")
        offset = NAME_TABLE_OFFSET + ((running_id - FIRST_NAME_ID) % self._capacity) * NAME_BYTES
        entry_id, version, line, kind, user, module, name, file = _NAME.unpack_from(
            self._block._mm, offset
        )
        if entry_id != running_id:
            return Running("unknown")
        name_text = _decode(name) or None
        phase = {
            CodeKind.SYSTEM: "system",
            CodeKind.MODULE: "load",
            CodeKind.SHADER: "shader",
        }.get(kind, name_text)
        return Running(
            phase=phase or "unknown",
            module=_decode(module) or None,
            version=None if version < 0 else version,
            name=name_text,
            file=_decode(file) or None,
            line=line,
            user=bool(user),
        )

    def close(self) -> None:
        self._block.close()

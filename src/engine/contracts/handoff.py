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

**Heartbeat block** (game → supervisor), written after every game frame::

    0    magic "ASEBEAT1", version u32, pid u32
    16   seq u64
    24   frame u64             the game's frame number (0: no frame finished yet)
    32   time_ns i64           when that frame finished
    40   published_frame u64   the last frame whose layer image was published (0: none)
    48   checkpoints u64       checkpoints taken so far
    56   checkpoint_frame u64  frame of the newest checkpoint
    64   checkpoint_ns i64     how long serializing the newest checkpoint took
    72   checkpoint_bytes u64

Both are 4 KiB memfds (:func:`engine.contracts.shm.create_block_fd`) created by the
supervisor and handed to children by fd. Each has exactly one writer and is guarded by the
engine's one seqlock (:mod:`engine.contracts.seqlock`), so neither side ever waits for the
other and a writer stopped half-way recovers on its next write.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import time
from dataclasses import dataclass

import numpy as np

from engine.contracts.seqlock import Seqlock
from engine.contracts.shm import BLOCK_BYTES
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
    """A mapped 4 KiB block with a seqlock around one fixed-size record."""

    def __init__(self, fd: int, magic: bytes, record: struct.Struct, writable: bool) -> None:
        if os.fstat(fd).st_size < BLOCK_BYTES:
            raise ValueError(f"block is smaller than {BLOCK_BYTES} bytes")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self._mm = mmap.mmap(fd, BLOCK_BYTES, flags=mmap.MAP_SHARED, prot=prot)
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


class HeartbeatWriter:
    """The game's side: :meth:`beat` after every frame."""

    def __init__(self, fd: int, pid: int | None = None) -> None:
        self._block = _SeqlockBlock(fd, HEARTBEAT_MAGIC, _BEAT_RECORD, writable=True)
        self._block._stamp(pid if pid is not None else os.getpid())
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
        self._block.close()


class HeartbeatReader:
    """The supervisor's side; :meth:`read` is ``None`` until the game's first beat."""

    def __init__(self, fd: int) -> None:
        self._block = _SeqlockBlock(fd, HEARTBEAT_MAGIC, _BEAT_RECORD, writable=False)

    def read(self) -> Heartbeat | None:
        v = self._block._read()
        if v is None:
            return None
        return Heartbeat(self._block.header_extra(), *v)

    def close(self) -> None:
        self._block.close()

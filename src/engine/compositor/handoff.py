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

Both are 4 KiB memfds created by the supervisor and handed to children by fd. Each has
exactly one writer. A reader copies the record between two reads of ``seq`` and retries a
bounded number of times, so neither side ever waits for the other. Counters are aligned
8-byte numpy stores; x86 keeps stores (and loads) in program order, which is what the
seqlock needs. (On a weakly ordered CPU the writer would need fences; Python gives none.)
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import time
from dataclasses import dataclass
from multiprocessing import reduction

import numpy as np

from engine.compositor.layer import sealed_memfd
from engine.pose.base import EyeView, Fov, Pose, PoseSample
from engine.render.camera import eyes_from_head
from engine.scheduler.pacing import Clock, MonotonicClock

BLOCK_BYTES = 4096
POSE_MAGIC = b"ASEPOSE1"
HEARTBEAT_MAGIC = b"ASEBEAT1"
VERSION = 1
READ_ATTEMPTS = 16
_SEQ_OFFSET = 16
_RECORD_OFFSET = 24
_HEADER = struct.Struct("<8sII")
# frame, display_time_ns, period_ns, published_ns, head (7), eyes (2 x 11)
_POSE_RECORD = struct.Struct("<Qqqq" + "7d" + "11d" * 2)
# frame, time_ns, published_frame, checkpoints, checkpoint_frame, checkpoint_ns, bytes
_BEAT_RECORD = struct.Struct("<QqQQQqQ")

#: Where the head is before the compositor has said anything: standing, looking down -Z.
DEFAULT_HEAD = Pose((0.0, 1.6, 0.0))


def create_block_fd(name: str) -> int:
    """A zeroed 4 KiB memfd (close-on-exec) for a pose or heartbeat block. Caller owns it.

    Its size is sealed, so no process holding it can shrink it under a reader's mapping
    (which would kill the reader with SIGBUS).
    """
    return sealed_memfd(name, BLOCK_BYTES)


def read_only_fd(fd: int) -> int:
    """A new fd for the same block that can only be mapped read-only (for untrusted readers).

    Reopens the file through ``/proc/self/fd``; the caller owns the result.
    """
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


class PassedFd:
    """An fd to hand to a ``spawn``-context child as a ``Process`` argument.

    Pickling it (which ``Process.start`` does) registers the fd to be inherited by the
    child; the child receives a plain ``int`` naming its copy. Pickling outside
    ``Process.start`` raises (multiprocessing then has no child to pass it to).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        return (_detach, (reduction.DupFd(self.fd),))


def _detach(dup: object) -> int:
    return dup.detach()  # type: ignore[attr-defined]


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

    # -- writer ------------------------------------------------------------------------
    def _stamp(self, extra: int = 0) -> None:
        _HEADER.pack_into(self._mm, 0, self._magic, VERSION, extra)

    def _write(self, values: tuple) -> None:
        seq = int(self._u64[_SEQ_OFFSET // 8])
        self._u64[_SEQ_OFFSET // 8] = seq | 1  # odd: readers retry
        self._record.pack_into(self._mm, _RECORD_OFFSET, *values)
        self._u64[_SEQ_OFFSET // 8] = (seq | 1) + 1

    # -- reader ------------------------------------------------------------------------
    def _read(self) -> tuple | None:
        """The settled record, or ``None`` if the block is not stamped or never settles."""
        if self._mm[0:8] != self._magic:
            return None
        for _ in range(READ_ATTEMPTS):
            seq = int(self._u64[_SEQ_OFFSET // 8])
            if seq == 0:
                return None  # stamped, nothing written yet
            if seq & 1:
                continue  # the writer is mid-record
            raw = self._mm[_RECORD_OFFSET : _RECORD_OFFSET + self._record.size]
            if int(self._u64[_SEQ_OFFSET // 8]) == seq:
                return self._record.unpack(raw)
        return None

    def header_extra(self) -> int:
        return _HEADER.unpack_from(self._mm, 0)[2]

    def close(self) -> None:
        del self._u64
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


class HandoffPoseSource:
    """A :class:`~engine.pose.base.PoseSource` for the game: the compositor's prediction.

    ``sample`` ignores the frame and time it is asked for and returns the newest record the
    compositor published (its frame number and predicted display time included), so the
    game renders with the pose predicted for when its image will be shown. Before the
    compositor has published anything it returns a default standing pose.
    """

    def __init__(self, reader: PoseHandoffReader) -> None:
        self.reader = reader
        self.last: PoseSample | None = None

    def sample(self, frame: int, display_time_ns: int) -> PoseSample:
        record = self.reader.read()
        if record is not None:
            self.last = record.sample
        if self.last is None:
            return PoseSample(frame, display_time_ns, DEFAULT_HEAD, eyes_from_head(DEFAULT_HEAD))
        return self.last


class HandoffPacer:
    """A :class:`~engine.game.Pacer` that starts each game frame when the compositor says.

    ``wait()`` returns as soon as the pose block holds a frame newer than the last one it
    returned for (like ``xrWaitFrame``). It sleeps coarsely until just before the next
    record is due, then polls every ``poll_ns``. If nothing new arrives within
    ``timeout_ns`` (a dead or stalled compositor) it returns anyway, so the game keeps
    running at roughly ``timeout_ns`` per frame instead of hanging; ``timeouts`` counts
    those. ``skipped`` counts compositor frames the game was too slow to start.
    """

    def __init__(
        self,
        reader: PoseHandoffReader,
        clock: Clock | None = None,
        *,
        period_ns: int = 11_111_111,
        timeout_ns: int = 100_000_000,
        poll_ns: int = 500_000,
        early_ns: int = 1_000_000,
    ) -> None:
        self.reader = reader
        self.clock: Clock = clock or MonotonicClock(spin_ns=0)  # sleep only: never spin
        self.period_ns = period_ns
        self.timeout_ns = timeout_ns
        self.poll_ns = poll_ns
        self.early_ns = early_ns
        self.last_frame: int | None = None
        self.skipped = 0
        self.timeouts = 0

    def wait(self) -> int:
        start = self.clock.now_ns()
        give_up = start + self.timeout_ns
        while True:
            record = self.reader.read()
            now = self.clock.now_ns()
            if record is not None:
                self.period_ns = record.period_ns or self.period_ns
                if self.last_frame is None or record.frame > self.last_frame:
                    if self.last_frame is not None:
                        self.skipped += max(0, record.frame - self.last_frame - 1)
                    self.last_frame = record.frame
                    return now
            if now >= give_up:
                self.timeouts += 1
                return now
            due = record.published_ns + record.period_ns - self.early_ns if record else 0
            self.clock.sleep_until(min(give_up, max(now + self.poll_ns, due)))


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

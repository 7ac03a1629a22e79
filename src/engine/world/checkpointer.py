"""Checkpoints taken at frame boundaries and written without stalling the frame.

A checkpoint must be *consistent* (the world of one frame boundary, never half of a frame)
and *atomic* on disk (a reader sees the old file or the new one). Serializing on the frame
thread is consistent but costs the frame everything: a component holding a 200 MB array
took longer than a frame to pickle, and the compositor missed frames. So the
:class:`Checkpointer` **forks** at the frame boundary:

* the parent (the game) pays for the ``fork`` only, a fraction of a millisecond here for a
  200 MB world (page tables are copied, memory is not), and goes on with its next frame;
* the child holds a copy-on-write image of the world exactly as it was at that boundary;
  it pickles it straight into a temporary file (large arrays go from their own memory to
  the file, never through one big ``bytes``), renames it into the checkpoint ring, links
  it as the newest checkpoint, and exits with ``os._exit`` (no cleanup of the parent's
  objects, no GL, no threads: the child only has the thread that forked);
* the child dies with the game (``PR_SET_PDEATHSIG``), is reaped by :meth:`poll` on the
  next frames (a ``waitpid(WNOHANG)``), and one that runs past ``timeout_s`` is killed.
  One child at a time: a checkpoint due while the last one is still being written waits
  for it.

Copy-on-write also makes the *next* fork dearer. numpy keeps a large array in huge pages
(2 MiB each, ``MADV_HUGEPAGE``); the game's first write to one that a child shares splits
it into 4 KiB pages, so a game that rewrites its 200 MB array maps it with 51 200
page-table entries instead of 100, and forking it cost 6.0-6.8 ms of the frame thread's
CPU here instead of 0.8-1.1 ms. So once a child is gone, a background thread asks the
kernel to put such memory back into huge pages (:func:`collapse_huge_pages`,
``MADV_COLLAPSE``, Linux 6.1+): about 50 ms of that thread's CPU for 200 MB, none of the
frame's, and the fork is cheap again. No checkpoint forks while it runs (a fork would
wait for the kernel's memory lock it holds).

What copy-on-write costs the parent instead: the first write to each page the child still
shares copies that page, so a frame that rewrites a large array right after a fork pays for
copying it once (``bench/checkpoint_frames.py`` measures both cases).

What the child's copy costs the compositor: writing 200 MB to its file streams it through
the memory bus and the caches the compositor shares, and on this 2-core VM with a CPU
renderer a compose that overlapped it ran over its lead by 0.3-0.5 ms (3 frames missed in
~380 where a bare pacing loop missed 2, in 5 of 8 runs of ``bench/faults.py --kinds
huge-component``). So the child writes large buffers in 1 MiB pieces, each started only
if it ends before the compositor's next compose, which it reads from the pose block the
game already maps (:class:`~engine.scheduler.pacing.YieldingWriter`): 15 of 15 runs
within the bare loop's misses (0-2). Pacing the pieces at a fixed rate instead made it
worse (more composes overlap a slower copy).

A fork is not free either: copying the page tables of a game with a GL context costs 1-3 ms
here, while a small world serializes in well under a millisecond. So the checkpointer
measures what serializing costs (the child reports its own CPU time) and serializes in the
game when that is below ``inline_below_ns`` (1 ms), on the frame thread, writing the bytes
on a thread; above it, or before it knows (the first checkpoint), it forks. A world that
grows suddenly from small to huge costs one slow frame before the next checkpoint forks.

Why not pickle on a thread (protocol 5, out-of-band buffers, a little every frame)? The
world would have to be copied first to stay consistent (the frame mutates it meanwhile),
and pickling Python objects holds the GIL, taking it from the frame. Where ``fork`` is
missing (not Linux), the checkpoint is serialized on the frame thread and written by a
thread, as before (``fork=False``).

When the game stops, its final checkpoint supersedes one still being written: that child
is killed, not waited for (at nice 10 on a busy machine it may take seconds), and the
final world is streamed to its file like a child's, never held as one big ``bytes``.

Every checkpoint written joins a :class:`~engine.world.ring.CheckpointRing` (the last
minute, for ``engine rewind``); the newest is also at ``path`` (a hard link), where a
restarted game finds it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import gc
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.launcher.containment import die_with_parent
from engine.scheduler.pacing import ComposeTimes, YieldingWriter, run_on_surplus
from engine.world.ring import CheckpointRing

#: Fork a child per checkpoint where that is safe (Linux); elsewhere serialize in-process.
FORK_AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "fork")

_ERROR_MAX_BYTES = 4096


MADV_COLLAPSE = 25  # <linux/mman.h>, Linux 6.1
_HUGE_PAGE = 2 * 1024 * 1024


def collapse_huge_pages(min_bytes: int = 4 * 1024 * 1024) -> int:
    """Put this process's memory that asked for huge pages back into them; the bytes asked.

    Only private anonymous mappings marked ``MADV_HUGEPAGE`` (``hg`` in
    ``/proc/self/smaps``: numpy marks its large arrays so) of at least ``min_bytes``,
    nearly all present, and with 4 KiB pages among them (split by copy-on-write) are
    asked, in whole 2 MiB pieces. Never raises: where ``MADV_COLLAPSE`` is missing (before
    Linux 6.1, not Linux) or refused, nothing changes and 0 is returned.
    """
    try:
        text = Path("/proc/self/smaps").read_text()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    asked = 0
    for first, last in _split_huge_ranges(text, min_bytes):
        if last > first and madvise(first, last - first, MADV_COLLAPSE) == 0:
            asked += last - first
    return asked


_SMAPS_BLOCK = re.compile(r"\n(?=[0-9a-f]+-[0-9a-f]+ )")
_SMAPS_HEAD = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+\S+\s+\S+\s+\S+[ \t]*(.*)$", re.M)
_SMAPS_FIELD = re.compile(r"^(Anonymous|AnonHugePages):\s+(\d+) kB$", re.M)
_SMAPS_HG = re.compile(r"^VmFlags:.*\bhg\b", re.M)


def _split_huge_ranges(smaps: str, min_bytes: int) -> list[tuple[int, int]]:
    """The whole 2 MiB pieces ``(start, end)`` of the mappings :func:`collapse_huge_pages`
    asks about (missing at least one huge page inside). Only the few blocks marked ``hg``
    are parsed (the rest is skipped at C speed: this runs beside the frame, under the GIL)."""
    found = []
    for block in _SMAPS_BLOCK.split(smaps):
        if " hg" not in block or not _SMAPS_HG.search(block):
            continue
        head = _SMAPS_HEAD.match(block)
        if head is None or head.group(4) or not head.group(3).startswith("rw"):
            continue  # a file's mapping, or not writable
        lo, hi = int(head.group(1), 16), int(head.group(2), 16)
        fields = {k: int(v) * 1024 for k, v in _SMAPS_FIELD.findall(block)}
        first = -(-lo // _HUGE_PAGE) * _HUGE_PAGE
        last = hi // _HUGE_PAGE * _HUGE_PAGE
        if (
            hi - lo >= min_bytes
            and fields.get("Anonymous", 0) >= (hi - lo) * 9 // 10
            and fields.get("AnonHugePages", 0) < last - first - _HUGE_PAGE // 2
        ):
            found.append((first, last))
    return found


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: readers see the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def link_atomically(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` (a hard link; a copy where links fail).

    Readers of ``target`` see the old file or the new one, never half. Raises ``OSError``
    if ``source`` cannot be read or ``target``'s folder written.
    """
    tmp = target.with_name(target.name + ".link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _write_world(
    world: Any,
    slot: Path,
    latest: Path,
    skipped: list[str],
    compose_times: Callable[[], ComposeTimes | None] | None = None,
) -> int:
    """Write the world's checkpoint; returns the CPU time it took (ns). Components left out
    (they cannot be pickled) are described in ``skipped``. With ``compose_times``, large
    buffers go out in pieces between the compositor's composes (:class:`YieldingWriter`)."""
    tmp = slot.with_name(slot.name + ".tmp")
    cpu0 = time.thread_time_ns()
    with open(tmp, "wb") as f:
        out = f if compose_times is None else YieldingWriter(f, compose_times)
        world.checkpoint_to(out, skipped)
    cpu_ns = time.thread_time_ns() - cpu0
    os.replace(tmp, slot)
    link_atomically(slot, latest)
    return cpu_ns


def _child_main(
    world: Any,
    slot: Path,
    latest: Path,
    error_fd: int,
    parent_pid: int,
    compose_times: Callable[[], ComposeTimes | None] | None = None,
) -> None:
    """The forked child: write the world it was born with, then ``os._exit``. Never returns."""
    code = 1
    try:
        die_with_parent(parent_pid)
        # The game's handlers stop its frame loop; the child just stops.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        # Yield the CPU to the game and the compositor: the frame has a deadline, this not.
        with contextlib.suppress(OSError):
            os.nice(10)
        gc.disable()  # a collection would touch (and copy) every page of the parent's heap
        skipped: list[str] = []
        cpu_ns = _write_world(world, slot, latest, skipped, compose_times)
        # What serializing costs (for the next choice), then what was left out, a line each.
        said = "\n".join([f"ok {cpu_ns}", *skipped]).encode("utf-8", "replace")
        os.write(error_fd, said[:_ERROR_MAX_BYTES])
        code = 0
    except BaseException as exc:  # noqa: BLE001 - the child reports everything, then exits
        with contextlib.suppress(BaseException):
            text = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
            os.write(error_fd, text[:_ERROR_MAX_BYTES])
    finally:
        os._exit(code)


@dataclass
class _Job:
    """A checkpoint being written: by a forked child (``pid``) or by a thread (``future``)."""

    slot: Path
    frame: int
    started_s: float
    pid: int = 0
    error_fd: int = -1
    future: concurrent.futures.Future[None] | None = None


class Checkpointer:
    """Takes a checkpoint at most every ``interval_ns``, at a frame boundary, off the frame.

    Call :meth:`maybe_take` after each frame (main thread): it reaps a finished writer and
    starts a new checkpoint when one is due, forked, or serialized in the game when that
    costs less than a fork (see the module doc). Counters for the heartbeat: ``taken``
    (written), ``failed``, ``last_dump_ns`` (what the newest one cost the frame thread),
    ``last_bytes`` and ``last_frame`` (the newest one written); ``forked`` counts forks.

    Args:
        path: where the newest checkpoint always is (a restarted game reads it).
        interval_ns: the least time between two checkpoints.
        ring: the checkpoints kept for rewinding (default: ``path``'s folder's
            ``checkpoints/``, a minute's worth).
        fork: write in a forked child (default where available; see the module doc).
        inline_below_ns: serialize in the game instead when that costs less than this
            (0: always fork).
        timeout_s: a child writing for longer is killed (its checkpoint is lost, the
            previous ones are kept).
        report: where failures are said (once per distinct reason).
        collapse: after each forked writer, put memory that copy-on-write split back
            into huge pages on a background thread (see the module doc).
        compose_times: when the compositor composes (read from the pose block), for a
            forked writer to write large buffers between its composes (see the module
            doc); None: at once.
    """

    def __init__(
        self,
        path: Path,
        interval_ns: int,
        *,
        ring: CheckpointRing | None = None,
        fork: bool | None = None,
        inline_below_ns: int = 1_000_000,
        timeout_s: float = 60.0,
        collapse: bool = True,
        report: Callable[[str], None] = lambda message: None,
        compose_times: Callable[[], ComposeTimes | None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval_ns = interval_ns
        self.compose_times = compose_times
        self.ring = ring if ring is not None else CheckpointRing(self.path.parent / "checkpoints")
        self.fork = FORK_AVAILABLE if fork is None else fork
        self.inline_below_ns = inline_below_ns
        #: What serializing the world cost last time (ns; None before the first).
        self.dump_ns: int | None = None
        self.forked = 0
        self.timeout_s = timeout_s
        self.report = report
        self._said_left_out: set[str] = set()
        self.last_ns: int | None = None
        self.started = 0
        self.taken = 0
        self.failed = 0
        self.last_dump_ns = 0
        self.last_bytes = 0
        self.last_frame = 0
        self.last_error: str | None = None
        self._job: _Job | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self.collapse = collapse
        self._collapser: concurrent.futures.ThreadPoolExecutor | None = None
        self._collapsing: concurrent.futures.Future[int] | None = None
        #: Bytes put back into huge pages so far (0 where the kernel cannot).
        self.collapsed_bytes = 0

    # -- the frame boundary ------------------------------------------------------------------
    def maybe_take(self, engine: Any, now_ns: int) -> bool:
        """Start a checkpoint of ``engine.world`` if the interval has passed; True if started.

        Call between frames on the main thread. A checkpoint due while the previous one is
        still being written starts as soon as that one is done. A ``fork`` that fails (no
        memory, no process left) is reported as a failed checkpoint and tried again at
        the next interval, as is a world that cannot be pickled; nothing is raised.
        """
        self.poll()
        if self.last_ns is not None and now_ns - self.last_ns < self.interval_ns:
            return False
        if self._job is not None or not self._collapse_done():
            return False
        slot = self.ring.slot(now_ns, engine.frame)
        t0 = time.perf_counter_ns()
        if self.fork and (self.dump_ns is None or self.dump_ns >= self.inline_below_ns):
            self.forked += 1
            try:
                self._job = self._fork(engine.world, slot, engine.frame)
            except OSError as exc:  # no memory or no process left for a child: try later
                self.last_ns = now_ns
                self._finish(_Job(slot, engine.frame, time.monotonic()), f"cannot fork: {exc}")
                return False
        else:
            try:
                skipped: list[str] = []
                data = engine.world.checkpoint(skipped)
                self._left_out(skipped)
            except Exception as exc:  # a world that cannot be saved: the game goes on
                self.last_ns = now_ns
                error = f"{type(exc).__name__}: {exc}"
                self._finish(_Job(slot, engine.frame, time.monotonic()), error)
                return False
            self.dump_ns = time.perf_counter_ns() - t0
            if self._writer is None:
                self._writer = concurrent.futures.ThreadPoolExecutor(1, "checkpoint")
            future = self._writer.submit(self._write_bytes, data, slot)
            self._job = _Job(slot, engine.frame, time.monotonic(), future=future)
        self.last_dump_ns = time.perf_counter_ns() - t0
        self.last_ns = now_ns
        self.started += 1
        return True

    def _fork(self, world: Any, slot: Path, frame: int) -> _Job:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)  # read once the child has exited: never wait
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:
            os.close(read_fd)
            _child_main(world, slot, self.path, write_fd, parent, self.compose_times)
        os.close(write_fd)
        return _Job(slot, frame, time.monotonic(), pid=pid, error_fd=read_fd)

    def _write_bytes(self, data: bytes, slot: Path) -> None:
        write_atomically(slot, data)
        link_atomically(slot, self.path)

    def poll(self) -> bool:
        """Reap a finished (or overdue) writer; True when no checkpoint is being written
        (nor huge pages put back after one)."""
        job = self._job
        if job is None:
            return self._collapse_done()
        if job.future is not None:
            if not job.future.done():
                return False
            exc = job.future.exception()
            self._finish(job, None if exc is None else f"{type(exc).__name__}: {exc}")
            return True
        try:
            pid, status = os.waitpid(job.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: judge by the file
            pid, status = job.pid, 0 if job.slot.exists() else 1 << 8
        if pid == 0:
            if time.monotonic() - job.started_s <= self.timeout_s:
                return False
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(job.pid, 0)
            self._finish(job, f"the writer ran over {self.timeout_s:g} s and was killed")
            return True
        code = os.waitstatus_to_exitcode(status)
        said = _read_all(job.error_fd).decode("utf-8", "replace").strip()
        why = None
        if code == 0 and said.startswith("ok "):
            first, *skipped = said.splitlines()
            self.dump_ns = int(first[3:])
            self._left_out(skipped)
        elif code != 0:
            why = said or (f"the writer died of signal {-code}" if code < 0 else f"exit {code}")
        self._finish(job, why)
        if self.collapse and code == 0:
            self._start_collapse()
        return self._collapse_done()

    def _start_collapse(self) -> None:
        """Put split huge pages back, on a thread of low priority (the child is gone: the
        memory is the game's alone again)."""
        if self._collapser is None:
            self._collapser = concurrent.futures.ThreadPoolExecutor(
                1, "checkpoint-collapse", initializer=run_on_surplus
            )
        self._collapsing = self._collapser.submit(collapse_huge_pages)

    def _collapse_done(self) -> bool:
        future = self._collapsing
        if future is None:
            return True
        if not future.done():
            return False
        self._collapsing = None
        with contextlib.suppress(Exception):
            self.collapsed_bytes += future.result()
        return True

    def _left_out(self, lines: list[str]) -> None:
        """Say, once each, which components a checkpoint left out (they cannot be pickled:
        the rest of the world is kept, and a restart comes back without them)."""
        for line in lines:
            if line not in self._said_left_out and len(self._said_left_out) < 256:
                self._said_left_out.add(line)
                self.report(f"game: {line}")

    def _finish(self, job: _Job, error: str | None, quiet: bool = False) -> None:
        """Record ``job`` as written (``error`` None) or failed; ``quiet``: not a failure
        to count or say (a checkpoint abandoned on purpose)."""
        self._job = None
        if job.error_fd >= 0:
            os.close(job.error_fd)
            job.error_fd = -1  # finished once: never closed again
        if error is None:
            try:
                entry = self.ring.add(job.slot)
            except (OSError, ValueError) as exc:
                error = f"written but not found: {exc}"
            else:
                self.taken += 1
                self.last_bytes, self.last_frame = entry.size, entry.frame
                self.last_error = None
                return
        job.slot.with_name(job.slot.name + ".tmp").unlink(missing_ok=True)
        job.slot.unlink(missing_ok=True)
        if quiet:
            return
        self.failed += 1
        if error != self.last_error:  # once per reason, not once a second
            self.report(
                f"game: checkpoint of frame {job.frame} failed (the previous one is kept): {error}"
            )
        self.last_error = error

    # -- the end -------------------------------------------------------------------------------
    def close(self, final: bytes | None = None, frame: int = 0, *, world: Any = None) -> None:
        """Finish, writing a final checkpoint as the newest if one is given.

        ``final`` is the world's bytes at the last frame boundary (the game stopping
        cleanly), or ``world`` the world itself (streamed to the file, as a child writes
        it; components that cannot be pickled are left out and said); ``frame`` its
        frame. A forked writer still running is killed when a final checkpoint follows
        (its world is older), else waited for; one running after ``timeout_s`` is killed.
        Raises ``OSError`` if the final checkpoint cannot be written.
        """
        superseded = final is not None or world is not None
        # poll() may reap the writer and still say "busy" (huge pages being put back):
        # only a writer that is still the current job is killed.
        busy = not self.poll()
        job = self._job
        if superseded and busy and job is not None and job.pid:  # still writing
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(job.pid, 0)
            self._finish(job, "superseded by the final checkpoint", quiet=True)
        while not self.poll():
            time.sleep(0.005)
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._collapser is not None:
            self._collapser.shutdown(wait=True)  # one madvise call: it cannot be stopped
            self._collapser = None
            self._collapse_done()
        if final is not None or world is not None:
            slot = self.ring.slot(self.ring.clock(), frame)
            if world is not None:
                skipped: list[str] = []
                _write_world(world, slot, self.path, skipped)
                self._left_out(skipped)
            else:
                assert final is not None
                self._write_bytes(final, slot)
            entry = self.ring.add(slot)
            self.taken += 1
            self.last_bytes, self.last_frame = entry.size, entry.frame
        self.ring.close()


def _read_all(fd: int) -> bytes:
    """What the child wrote to its error pipe (it has exited: the pipe ends there)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)

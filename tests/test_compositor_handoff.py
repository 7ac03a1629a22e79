"""The pose handoff and heartbeat blocks: seqlock reads across real processes, the pacer and
pose source the game uses (manual clock), and the read-only mapping a game gets."""

from __future__ import annotations

import math
import mmap
import multiprocessing
import os
import time

import pytest

from engine.contracts.handoff import (
    HeartbeatReader,
    HeartbeatWriter,
    PoseHandoffReader,
    PoseHandoffWriter,
)
from engine.contracts.shm import PassedFd, create_block_fd, read_only_fd
from engine.pose.base import EyeView, Fov, Pose, PoseSample
from engine.pose.handoff import HandoffPacer, HandoffPoseSource
from engine.scheduler.pacing import ManualClock

SPAWN = multiprocessing.get_context("spawn")
PERIOD = 11_111_111


def pattern_sample(n: int) -> PoseSample:
    """A pose in which every number is derived from ``n``, so a torn read is detectable."""
    a = (n % 1000) * 0.001
    q = (math.sin(a), 0.0, 0.0, math.cos(a))
    eye = EyeView(Pose((n, -n, 2.0 * n), q), Fov(-a - 0.1, a + 0.1, a + 0.2, -a - 0.2))
    return PoseSample(n, 10 * n, Pose((n, n, n), q), (eye, eye))


def consistent(record) -> bool:  # noqa: ANN001
    n = record.frame
    expected = pattern_sample(n)
    return (
        record.display_time_ns == 10 * n
        and record.published_ns == 3 * n
        and record.sample.head == expected.head
        and record.sample.eyes == expected.eyes
    )


def write_patterns_as_fast_as_possible(fd: int, frames: int) -> None:
    writer = PoseHandoffWriter(fd)
    for n in range(1, frames + 1):
        writer.publish(pattern_sample(n), PERIOD, 3 * n)


def beat_as_fast_as_possible(fd: int, frames: int) -> None:
    writer = HeartbeatWriter(fd)
    for n in range(1, frames + 1):
        writer.published_frame = writer.checkpoints = writer.checkpoint_frame = n
        writer.checkpoint_ns = writer.checkpoint_bytes = n
        writer.beat(n, n)


def test_pose_reader_never_sees_a_torn_record_from_another_process():
    fd = create_block_fd("pose-test")
    reader = PoseHandoffReader(fd)
    frames = 200_000
    child = SPAWN.Process(target=write_patterns_as_fast_as_possible, args=(PassedFd(fd), frames))
    child.start()
    seen, frames_seen = 0, set()
    give_up = time.monotonic() + 60
    while child.is_alive() and time.monotonic() < give_up:
        record = reader.read()
        if record is None:
            continue
        assert consistent(record), record
        seen += 1
        frames_seen.add(record.frame)
    child.join(10)
    assert child.exitcode == 0
    assert seen > 1000 and len(frames_seen) > 100  # the reads really raced the writer
    last = reader.read()
    assert last is not None and last.frame == frames and consistent(last)


def test_heartbeat_reader_never_sees_a_torn_beat_from_another_process():
    fd = create_block_fd("beat-test")
    reader = HeartbeatReader(fd)
    frames = 200_000
    child = SPAWN.Process(target=beat_as_fast_as_possible, args=(PassedFd(fd), frames))
    child.start()
    seen = 0
    give_up = time.monotonic() + 60
    while child.is_alive() and time.monotonic() < give_up:
        beat = reader.read()
        if beat is None:
            continue
        values = {beat.frame, beat.time_ns, beat.published_frame, beat.checkpoints}
        values |= {beat.checkpoint_frame, beat.checkpoint_ns, beat.checkpoint_bytes}
        assert len(values) == 1, beat
        assert beat.pid == child.pid
        seen += 1
    child.join(10)
    assert child.exitcode == 0 and seen > 100


def test_a_game_gets_a_block_it_cannot_write():
    fd = create_block_fd("pose-ro")
    ro = read_only_fd(fd)
    with pytest.raises(PermissionError):
        mmap.mmap(ro, 4096, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    with pytest.raises(OSError):
        os.ftruncate(fd, 0)  # sealed: nobody can shrink it under a reader
    PoseHandoffWriter(fd).publish(pattern_sample(7), PERIOD, 21)
    record = PoseHandoffReader(ro).read()
    assert record is not None and consistent(record)


def test_an_unwritten_or_foreign_block_reads_as_nothing():
    fd = create_block_fd("empty")
    assert PoseHandoffReader(fd).read() is None
    assert HeartbeatReader(fd).read() is None
    PoseHandoffWriter(fd)  # stamped, nothing published yet
    assert PoseHandoffReader(fd).read() is None
    assert HeartbeatReader(fd).read() is None  # a pose block is not a heartbeat


def test_pose_source_returns_the_compositors_prediction_and_a_default_before_it():
    fd = create_block_fd("pose-src")
    writer = PoseHandoffWriter(fd)
    source = HandoffPoseSource(PoseHandoffReader(fd))
    before = source.sample(5, 123)
    assert before.frame == 5 and before.head.position == (0.0, 1.6, 0.0)
    writer.publish(pattern_sample(42), PERIOD, 1)
    after = source.sample(6, 999)
    assert (after.frame, after.display_time_ns) == (42, 420)


class PublishingClock(ManualClock):
    """A manual clock that, while the pacer sleeps, lets the 'compositor' publish on time."""

    def __init__(self, writer: PoseHandoffWriter, publish_at: list[int]) -> None:
        super().__init__(0)
        self.writer, self.publish_at, self.frame = writer, publish_at, 0
        self.sleeps: list[int] = []

    def sleep_until(self, deadline_ns: int) -> None:
        self.sleeps.append(deadline_ns)
        super().sleep_until(deadline_ns)
        while self.publish_at and self.publish_at[0] <= self.t:
            self.frame += 1
            when = self.publish_at.pop(0)
            self.writer.publish(pattern_sample(self.frame), PERIOD, when)


def test_pacer_returns_when_the_compositor_publishes_and_sleeps_until_just_before():
    fd = create_block_fd("pacer")
    writer = PoseHandoffWriter(fd)
    writer.publish(pattern_sample(1), PERIOD, 0)
    clock = PublishingClock(writer, [PERIOD, 2 * PERIOD])
    clock.frame = 1  # frame 1 is published already
    pacer = HandoffPacer(PoseHandoffReader(fd), clock, early_ns=1_000_000, poll_ns=500_000)
    pacer.wait()  # frame 1 is already there
    assert pacer.last_frame == 1
    t = pacer.wait()
    assert pacer.last_frame == 2 and t == PERIOD
    # First sleep: coarse, to 1 ms before the next publish is due; then short polls.
    assert clock.sleeps[0] == PERIOD - 1_000_000
    assert all(b - a == 500_000 for a, b in zip(clock.sleeps[1:], clock.sleeps[2:], strict=False))
    assert pacer.timeouts == 0


def test_pacer_gives_up_after_its_timeout_when_the_compositor_is_gone():
    fd = create_block_fd("pacer-dead")
    writer = PoseHandoffWriter(fd)
    writer.publish(pattern_sample(1), PERIOD, 0)
    clock = PublishingClock(writer, [])
    pacer = HandoffPacer(PoseHandoffReader(fd), clock, timeout_ns=50_000_000)
    pacer.wait()
    t = pacer.wait()
    assert t == 50_000_000 and pacer.timeouts == 1


def test_pacer_counts_compositor_frames_the_game_missed():
    fd = create_block_fd("pacer-skip")
    writer = PoseHandoffWriter(fd)
    pacer = HandoffPacer(PoseHandoffReader(fd), ManualClock(0))
    writer.publish(pattern_sample(1), PERIOD, 0)
    pacer.wait()
    writer.publish(pattern_sample(4), PERIOD, 0)
    pacer.wait()
    assert pacer.skipped == 2

"""The cross-process contracts: the one seqlock, and writers that recover from a write
stopped half-way (a process killed, or an interrupt between two stores)."""

from __future__ import annotations

import os
import signal
import struct
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.contracts.handoff import HeartbeatReader, HeartbeatWriter
from engine.contracts.layer import LayerReader, LayerSpec, LayerWriter, create_layer_fd
from engine.contracts.seqlock import U64_MAX, Seqlock
from engine.contracts.shm import create_block_fd
from engine.pose.base import EyeView, Fov, Pose
from engine.scheduler.watchdog import FrameWatchdog, Overrun

PUBLISH_SEQ_OFFSET = 56  # docs/layer-format.md
SEQ_OFFSET = 16  # docs of engine.contracts.handoff


def eyes(n: int = 1) -> tuple[EyeView, ...]:
    return tuple(EyeView(Pose((0.0, 1.6, 0.0)), Fov(-0.7, 0.7, 0.7, -0.7)) for _ in range(n))


@given(st.integers(0, U64_MAX), st.integers(0, 2**32))
def test_a_write_always_ends_on_a_new_even_counter_whatever_it_started_from(start, value):
    words = np.array([start, 0], dtype="<u8")
    lock = Seqlock(words, 0)
    odd = lock.begin_write()
    assert odd & 1 and lock.read(lambda: 1) is None  # readers keep out mid-write
    words[1] = value
    lock.end_write(odd)
    after = lock.load()
    assert after % 2 == 0 and after != start
    assert lock.read(lambda: int(words[1])) == (value if after else None)


def test_a_reader_gives_up_on_a_counter_that_stays_odd_and_never_waits():
    words = np.array([5, 0], dtype="<u8")
    t0 = time.perf_counter()
    assert Seqlock(words, 0).read(lambda: 1) is None
    assert time.perf_counter() - t0 < 0.01


def test_a_layer_publish_stopped_half_way_recovers_on_the_next_publish():
    spec = LayerSpec(width=4, height=2, eyes=1)
    fd = create_layer_fd(spec)
    writer, reader = LayerWriter(fd, spec), LayerReader(fd)
    slot = writer.acquire()
    writer.publish(slot, frame=1, eyes=eyes(), completed_ns=1)
    assert reader.read().frame == 1
    # The producer was stopped between the two stores of publish_seq: it stays odd.
    odd = os.pread(fd, 8, PUBLISH_SEQ_OFFSET)
    (seq,) = struct.unpack("<Q", odd)
    os.pwrite(fd, struct.pack("<Q", seq + 1), PUBLISH_SEQ_OFFSET)
    assert reader.read() is None and "mid-publish" in reader.last_error
    slot = writer.acquire()
    writer.publish(slot, frame=2, eyes=eyes(), completed_ns=2)
    frame = reader.read()
    assert frame is not None and frame.frame == 2
    reader.close(), writer.close(), os.close(fd)


def test_a_heartbeat_left_mid_write_by_a_dead_game_reads_again_after_the_next_beat():
    fd = create_block_fd("test-beat")
    writer, reader = HeartbeatWriter(fd, pid=7), HeartbeatReader(fd)
    writer.beat(3, 100)
    (seq,) = struct.unpack("<Q", os.pread(fd, 8, SEQ_OFFSET))
    os.pwrite(fd, struct.pack("<Q", seq + 1), SEQ_OFFSET)  # odd: died mid-write
    assert reader.read() is None
    writer.beat(4, 200)
    beat = reader.read()
    assert beat is not None and (beat.frame, beat.pid) == (4, 7)
    reader.close(), writer.close(), os.close(fd)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_the_watchdog_never_interrupts_a_publish_half_way():
    """A system that publishes in a loop until it is interrupted: the interrupt lands in
    the system's own code, never between publish's stores, so the layer stays readable.
    (Unprotected, about one interrupt in 25 left the layer unreadable.)"""
    spec = LayerSpec(width=64, height=64, eyes=2)
    fd = create_layer_fd(spec)
    writer, reader = LayerWriter(fd, spec), LayerReader(fd)
    views = eyes(2)
    wd = FrameWatchdog(1_000_000, retry_ns=10**10, max_interrupts=100_000)  # one per attempt
    assert wd.install()
    try:
        for attempt in range(300):
            frame = attempt * 1_000_000
            wd.start_frame()
            wd.enter("test.publisher", time.perf_counter_ns())
            try:
                while True:
                    frame += 1
                    writer.publish(writer.acquire(), frame, views, frame)
            except Overrun:
                pass
            finally:
                wd.leave()
                wd.end_frame()
            got = reader.read()
            assert got is not None, f"attempt {attempt}: {reader.last_error}"
            assert got.frame in (frame, frame - 1)
    finally:
        wd.uninstall()
        reader.close(), writer.close(), os.close(fd)

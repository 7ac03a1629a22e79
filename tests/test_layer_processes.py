"""The layer protocol across real processes: a producer racing the reader, a producer trying
to resize the block, and what the seal and the read-only mapping protect against.

Children are started with the ``spawn`` context (a fresh interpreter, as the engine starts
its game process) and get the block's fd over a Unix socket (``send_layer_fd``) or, in one
test, through ``subprocess``'s ``pass_fds``."""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import engine.contracts.layer as layer_module
from engine.contracts.layer import (
    LayerReader,
    LayerSpec,
    LayerWriter,
    create_layer_fd,
    recv_layer_fd,
    send_layer_fd,
)
from engine.pose.base import EyeView, Pose

SPAWN = multiprocessing.get_context("spawn")
SPEC = LayerSpec(width=256, height=128, eyes=2, images=3)
CHILD_TIMEOUT_S = 60


def frame_eyes(frame: int, eyes: int) -> tuple[EyeView, ...]:
    return tuple(EyeView(Pose((float(frame), 0.0, float(e)))) for e in range(eyes))


# --- children (module level, so spawned interpreters can import them) -----------------


def receive_layer(address: str) -> tuple[int, LayerSpec]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        return recv_layer_fd(sock)


def produce_frames_as_fast_as_possible(address: str, stop, published) -> None:
    """Fill every byte of each image with ``frame & 0xFF`` and publish it, until told to stop."""
    fd, spec = receive_layer(address)
    writer = LayerWriter(fd, spec)
    frame, give_up = 0, time.monotonic() + CHILD_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < give_up:
        slot = writer.acquire()
        slot.pixels.fill(frame & 0xFF)
        writer.publish(slot, frame, frame_eyes(frame, spec.eyes), time.monotonic_ns())
        frame += 1
    published.value = frame


def try_to_resize(address: str, outcomes) -> None:
    fd, spec = receive_layer(address)
    for size in (0, 4096, spec.block_size - 1, spec.block_size * 2):
        try:
            os.ftruncate(fd, size)
            outcomes.put((size, "resized"))
        except OSError as exc:
            outcomes.put((size, type(exc).__name__))


def read_after_truncating_an_unsealed_block() -> None:
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.ftruncate(fd, 1 << 16)
    view = mmap.mmap(fd, 1 << 16, prot=mmap.PROT_READ)
    os.ftruncate(fd, 0)  # what a misbehaving producer could do without the seal
    view[60000]  # the page is gone: SIGBUS
    os._exit(0)  # not reached


def write_through_a_readers_pointer() -> None:
    spec = LayerSpec(width=4, height=4, eyes=1)
    fd = create_layer_fd(spec)
    writer = LayerWriter(fd, spec)
    slot = writer.acquire()
    writer.publish(slot, 1, frame_eyes(1, 1), 0)
    frame = LayerReader(fd).read()
    ctypes.memset(frame.pixels.ctypes.data, 0xFF, 1)  # PROT_READ page: SIGSEGV
    os._exit(0)  # not reached


# --- helpers --------------------------------------------------------------------------


def start_with_layer(fd: int, spec: LayerSpec, target, *args):
    """Start ``target(address, *args)`` in a spawned process and hand it the layer's fd."""
    address = f"\0ase-layer-test-{os.getpid()}-{uuid.uuid4().hex}"  # abstract: no file
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(address)
        listener.listen(1)
        listener.settimeout(CHILD_TIMEOUT_S)
        child = SPAWN.Process(target=target, args=(address, *args), daemon=True)
        child.start()
        conn, _ = listener.accept()
        with conn:
            send_layer_fd(conn, fd, spec)
    return child


def first_frame(reader: LayerReader):
    give_up = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < give_up:
        got = reader.read()
        if got is not None:
            return got
        time.sleep(0.001)
    pytest.fail(f"the producer published nothing: {reader.last_error}")


def stop_and_join(child, stop) -> None:
    stop.set()
    child.join(CHILD_TIMEOUT_S)
    assert child.exitcode == 0


# --- tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["zero-copy", "copy"])
def test_a_reader_never_accepts_a_torn_image_from_a_racing_producer(path):
    min_reads, min_frames = 5000, 10
    fd = create_layer_fd(SPEC, name="race")
    reader = LayerReader(fd)
    stop, published = SPAWN.Event(), SPAWN.Value("q", 0)
    child = start_with_layer(fd, SPEC, produce_frames_as_fast_as_possible, stop, published)
    try:
        last = first_frame(reader).frame
        dst = np.empty(SPEC.shape, np.uint8)
        accepted, missed, overwritten, seen, reads = 0, 0, 0, set(), 0
        give_up = time.monotonic() + CHILD_TIMEOUT_S
        while reads < min_reads or (len(seen) < min_frames and time.monotonic() < give_up):
            reads += 1
            got = reader.read() if path == "zero-copy" else reader.read_into(dst)
            if got is None:
                missed += 1
                assert "attempts" in reader.last_error, reader.last_error
                continue
            expected = got.frame & 0xFF
            uniform = bool((got.pixels == expected).all())
            if path == "zero-copy" and not reader.still_valid(got):
                overwritten += 1  # the producer came round again while we looked
                continue
            assert uniform, f"torn image: frame {got.frame} holds {np.unique(got.pixels)}"
            assert got.eyes[0].pose.position[0] == float(got.frame)
            assert got.frame >= last, "frame numbers went backwards"
            last = got.frame
            accepted += 1
            seen.add(got.frame)
    finally:
        stop_and_join(child, stop)
        reader.close()
        os.close(fd)
    print(
        f"{path}: {reads} reads, {accepted} accepted ({len(seen)} distinct frames), "
        f"{overwritten} overwritten while checked, {missed} unsettled, "
        f"{published.value} frames published"
    )
    assert len(seen) >= min_frames
    assert published.value > len(seen)  # the producer really was racing the reader


def test_a_producer_cannot_resize_the_sealed_block_and_the_reader_reads_on():
    fd = create_layer_fd(SPEC, name="sealed")
    reader = LayerReader(fd)
    with LayerWriter(fd, SPEC) as writer:
        slot = writer.acquire()
        slot.pixels.fill(9)
        writer.publish(slot, 9, frame_eyes(9, 2), 0)
    outcomes = SPAWN.Queue()
    child = start_with_layer(fd, SPEC, try_to_resize, outcomes)
    child.join(CHILD_TIMEOUT_S)
    assert child.exitcode == 0
    results = dict(outcomes.get(timeout=CHILD_TIMEOUT_S) for _ in range(4))
    assert set(results.values()) == {"PermissionError"}, results
    assert os.fstat(fd).st_size == SPEC.block_size
    got = reader.read()
    assert got is not None and got.frame == 9 and (got.pixels == 9).all()
    reader.close()
    os.close(fd)


def test_without_the_seal_a_truncated_block_kills_its_reader_with_sigbus():
    child = SPAWN.Process(target=read_after_truncating_an_unsealed_block, daemon=True)
    child.start()
    child.join(CHILD_TIMEOUT_S)
    assert child.exitcode == -signal.SIGBUS


def test_the_readers_pages_are_read_only_even_through_a_raw_pointer():
    child = SPAWN.Process(target=write_through_a_readers_pointer, daemon=True)
    child.start()
    child.join(CHILD_TIMEOUT_S)
    assert child.exitcode == -signal.SIGSEGV


def test_a_program_spawned_with_pass_fds_can_produce_into_the_block():
    spec = LayerSpec(width=16, height=8, eyes=2)
    fd = create_layer_fd(spec, name="pass-fds")
    producer = (
        "import sys\n"
        "from engine.contracts.layer import LayerSpec, LayerWriter\n"
        "from engine.pose.base import EyeView, Pose\n"
        "writer = LayerWriter(int(sys.argv[1]), LayerSpec(16, 8, eyes=2))\n"
        "slot = writer.acquire()\n"
        "slot.pixels.fill(77)\n"
        "writer.publish(slot, 5, (EyeView(Pose()), EyeView(Pose())), 123)\n"
    )
    src = str(Path(layer_module.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run(
        [sys.executable, "-c", producer, str(fd)],
        pass_fds=[fd],
        env=env,
        check=True,
        timeout=CHILD_TIMEOUT_S,
    )
    reader = LayerReader(fd)
    got = reader.read()
    assert got is not None, reader.last_error
    assert (got.frame, got.completed_ns) == (5, 123) and (got.pixels == 77).all()
    reader.close()
    os.close(fd)

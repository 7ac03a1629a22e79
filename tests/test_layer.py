"""The layer protocol in one process: round trips, seqlock rules, and a reader that survives
any bytes. Every block here is a real memfd; malformed blocks are written into one with
``os.pwrite`` and read through the reader's read-only mapping."""

from __future__ import annotations

import ctypes
import fcntl
import math
import mmap
import os
import socket
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.contracts.layer import (
    ALIGNMENT,
    MAGIC,
    MAX_DIMENSION,
    NO_IMAGE,
    READ_ATTEMPTS,
    VERSION,
    ImageSlot,
    ImageStorage,
    LayerFrame,
    LayerReader,
    LayerSpec,
    LayerWriter,
    PixelFormat,
    create_layer_fd,
    recv_layer_fd,
    send_layer_fd,
)
from engine.pose.base import EyeView, Fov, Pose

SPEC = LayerSpec(width=8, height=4, eyes=2, images=3)
HYPOTHESIS = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def eye_views(frame: int, eyes: int = 2) -> tuple[EyeView, ...]:
    """Eye views that encode the frame number, so a torn record would show."""
    return tuple(
        EyeView(
            Pose((float(frame), 1.6, -float(e)), (0.0, math.sin(0.1), 0.0, math.cos(0.1))),
            Fov(-0.7, 0.8 + e * 0.01, 0.75, -0.65),
        )
        for e in range(eyes)
    )


def publish(writer: LayerWriter, frame: int, fill: int | None = None) -> ImageSlot:
    slot = writer.acquire()
    slot.pixels.fill(frame & 0xFF if fill is None else fill)
    writer.publish(slot, frame=frame, eyes=eye_views(frame, writer.spec.eyes), completed_ns=frame)
    return slot


def sealed_memfd(size: int) -> int:
    fd = os.memfd_create("test-layer", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def published_block() -> bytes:
    """The bytes of a valid block whose latest image is index 2 (frame 12)."""
    fd = create_layer_fd(SPEC)
    with LayerWriter(fd, SPEC) as writer:
        for frame in (10, 11, 12):
            publish(writer, frame)
    data = os.pread(fd, SPEC.block_size, 0)
    os.close(fd)
    return data


VALID_BLOCK = published_block()
LATEST = 2
SLOT = 128 + LATEST * 256


@pytest.fixture
def layer():
    fd = create_layer_fd(SPEC, name="test")
    writer, reader = LayerWriter(fd, SPEC), LayerReader(fd)
    yield fd, writer, reader
    reader.close()
    writer.close()
    os.close(fd)


def assert_no_frame(reader: LayerReader, result: LayerFrame | None) -> None:
    assert result is None
    assert isinstance(reader.last_error, str) and reader.last_error
    assert not reader.last_error.startswith("internal error"), reader.last_error


def assert_sane(reader: LayerReader, result: LayerFrame | None, block_size: int) -> None:
    """A reader's answer to arbitrary bytes: no frame with a reason, or a frame in bounds."""
    if result is None:
        assert_no_frame(reader, result)
        return
    spec = result.spec
    assert spec.block_size <= block_size
    if result.storage is ImageStorage.GPU_MEMORY:  # the header says: images on the GPU
        assert result.pixels is None
    else:
        assert result.pixels.shape == spec.shape and not result.pixels.flags.writeable
    assert 0 <= result.index < spec.images and result.seq % 2 == 0 and result.seq > 0
    assert len(result.eyes) == spec.eyes
    for eye in result.eyes:
        values = (*eye.pose.position, *eye.pose.orientation, *eye.fov.as_tuple())
        assert all(math.isfinite(v) for v in values)


# --- the spec -------------------------------------------------------------------------


def test_rgba_order_turns_each_format_into_rgba_and_back():
    rgba = np.array([10, 20, 30, 40], np.uint8)
    bgra = np.array([30, 20, 10, 40], np.uint8)
    assert (rgba[PixelFormat.RGBA8.rgba_order] == rgba).all()
    assert (bgra[PixelFormat.BGRA8.rgba_order] == rgba).all()
    assert (rgba[PixelFormat.BGRA8.rgba_order] == bgra).all()  # its own inverse


def test_spec_sizes_are_page_aligned_and_cover_every_image():
    spec = LayerSpec(width=1280, height=720, eyes=2, images=3, format=PixelFormat.RGBA8)
    assert spec.eye_bytes == 1280 * 720 * 4
    assert spec.image_bytes == 2 * spec.eye_bytes
    assert spec.images_offset % ALIGNMENT == 0 and spec.image_stride % ALIGNMENT == 0
    assert spec.images_offset >= 128 + 3 * 256
    assert spec.block_size == spec.images_offset + 3 * spec.image_stride
    assert spec.shape == (2, 720, 1280, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 0, "height": 1},
        {"width": MAX_DIMENSION + 1, "height": 1},
        {"width": 1, "height": 1, "eyes": 3},
        {"width": 1, "height": 1, "images": 1},
        {"width": 1, "height": 1, "format": 0},
    ],
)
def test_spec_outside_the_format_limits_is_a_value_error(kwargs):
    with pytest.raises(ValueError):
        LayerSpec(**kwargs)


# --- round trip -----------------------------------------------------------------------


def test_reader_gets_the_newest_frame_with_its_pixels_and_poses(layer):
    _, writer, reader = layer
    for frame in range(1, 6):
        slot = writer.acquire()
        slot.eye(0).fill(frame)
        slot.eye(1).fill(100 + frame)
        slot.eye(1)[0, 0] = (1, 2, 3, 4)  # bottom-left pixel of the right eye
        writer.publish(slot, frame=frame, eyes=eye_views(frame), completed_ns=1000 + frame)

    got = reader.read()
    assert got is not None, reader.last_error
    assert reader.last_error is None
    assert (got.frame, got.completed_ns, got.spec) == (5, 1005, SPEC)
    assert got.eyes == eye_views(5)
    assert (got.pixels[0] == 5).all()
    assert tuple(got.pixels[1, 0, 0]) == (1, 2, 3, 4)
    assert (got.pixels[1, 1:] == 105).all()
    assert reader.still_valid(got)


def test_acquire_never_returns_the_last_published_image(layer):
    _, writer, _ = layer
    last = None
    for frame in range(20):
        slot = writer.acquire()
        assert slot.index != last
        writer.publish(slot, frame=frame, eyes=eye_views(frame), completed_ns=0)
        last = slot.index
    assert {publish(writer, f).index for f in range(3)} == {0, 1, 2}


def test_acquire_again_before_publish_returns_the_same_unfinished_slot(layer):
    _, writer, reader = layer
    publish(writer, 1)
    first = writer.acquire()
    assert writer.acquire() is first
    assert reader.read().frame == 1  # the unfinished slot is never what the reader sees


def test_slot_addresses_point_into_the_shared_image(layer):
    _, writer, reader = layer
    slot = writer.acquire()
    for eye in range(SPEC.eyes):
        view = np.ctypeslib.as_array(
            (ctypes.c_uint8 * SPEC.eye_bytes).from_address(slot.address(eye))
        )
        view[:] = 40 + eye  # as glReadPixels would write through the pointer
    assert slot.address(1) - slot.address(0) == SPEC.eye_bytes
    writer.publish(slot, frame=3, eyes=eye_views(3), completed_ns=0)
    got = reader.read()
    assert (got.pixels[0] == 40).all() and (got.pixels[1] == 41).all()


def test_publish_rejects_what_a_reader_would_refuse(layer):
    _, writer, reader = layer
    slot = writer.acquire()
    with pytest.raises(ValueError):
        writer.publish(slot, frame=1, eyes=eye_views(1, eyes=1), completed_ns=0)
    nan_pose = EyeView(Pose((math.nan, 0.0, 0.0)))
    with pytest.raises(ValueError, match="not finite"):
        writer.publish(slot, frame=1, eyes=(nan_pose, nan_pose), completed_ns=0)
    with pytest.raises(ValueError):
        writer.publish(slot, frame=-1, eyes=eye_views(1), completed_ns=0)
    other = ImageSlot(slot.index, slot.pixels)
    with pytest.raises(ValueError, match="acquire"):
        writer.publish(other, frame=1, eyes=eye_views(1), completed_ns=0)
    assert_no_frame(reader, reader.read())
    assert reader.last_error == "nothing published yet"


def test_still_valid_turns_false_once_the_producer_reuses_the_image(layer):
    _, writer, reader = layer
    publish(writer, 1)
    held = reader.read()
    publish(writer, 2)
    assert reader.still_valid(held)  # the writer left the last published image alone
    publish(writer, 3)
    writer.acquire()  # now it is drawing over the held image
    assert not reader.still_valid(held)


def test_an_image_completed_but_not_yet_published_is_never_returned(layer):
    """The race behind a rare "frame numbers went backwards": the reader takes
    ``latest_index`` (frame 1's image), is descheduled, and meanwhile the producer publishes
    2 and 3 and completes 4 into that same image, but has not yet made it the latest. A
    reader that took the image's seq only now would accept 4, and its next read would go
    back to 3."""
    fd, writer, reader = layer
    publish(writer, 1)
    m = reader._map
    real_load = m.load64
    state = {"raced": False}

    def load64(offset: int) -> int:
        if offset >= 128 and not state["raced"]:  # the reader's first look at an image
            state["raced"] = True
            publish(writer, 2)
            publish(writer, 3)
            counter, latest = m.load64(56), int(m.u32[64 // 4])
            publish(writer, 4)  # into frame 1's image, the oldest
            # ... caught between completing the image and publishing it:
            os.pwrite(fd, struct.pack("<Q", counter), 56)
            os.pwrite(fd, struct.pack("<I", latest), 64)
        return real_load(offset)

    m.load64 = load64
    first = reader.read()
    m.load64 = real_load
    second = reader.read()
    assert state["raced"]
    assert (first.frame, second.frame) == (3, 3)


def test_read_into_copies_a_checked_frame_into_the_callers_array(layer):
    _, writer, reader = layer
    publish(writer, 7)
    dst = np.zeros(SPEC.shape, np.uint8)
    got = reader.read_into(dst)
    assert got is not None and got.pixels is dst and got.frame == 7
    assert (dst == 7).all()
    publish(writer, 8)
    publish(writer, 9)
    writer.acquire().pixels.fill(0)  # overwrite the original: the copy is unaffected
    assert (dst == 7).all()


@pytest.mark.parametrize(
    "dst",
    [
        np.zeros((2, 4, 9, 4), np.uint8),
        np.zeros(SPEC.shape, np.float32),
        np.zeros(SPEC.shape, np.uint8)[:, ::-1],
        "not an array",
    ],
)
def test_read_into_an_array_of_the_wrong_kind_is_no_frame(layer, dst):
    _, writer, reader = layer
    publish(writer, 1)
    assert_no_frame(reader, reader.read_into(dst))


def test_a_restarted_writer_invalidates_frames_read_before(layer):
    fd, writer, reader = layer
    publish(writer, 1)
    held = reader.read()
    writer.close()
    with LayerWriter(fd, SPEC) as again:
        assert not reader.still_valid(held)
        assert reader.read() is None and reader.last_error == "nothing published yet"
        publish(again, 2)
        assert reader.read().frame == 2


def test_a_block_too_small_for_the_spec_is_refused_by_the_writer():
    fd = sealed_memfd(ALIGNMENT)
    with pytest.raises(ValueError):
        LayerWriter(fd, SPEC)
    os.close(fd)


# --- the read-only side ---------------------------------------------------------------


def test_the_readers_mapping_rejects_writes(layer):
    _, writer, reader = layer
    publish(writer, 1)
    got = reader.read()
    with pytest.raises(ValueError, match="read-only"):
        got.pixels[0, 0, 0, 0] = 1
    with pytest.raises(ValueError):
        got.pixels.setflags(write=True)
    owner = got.pixels
    while isinstance(owner, np.ndarray):  # walk the views down to the buffer they share
        owner = owner.base
    assert isinstance(owner.obj, mmap.mmap)
    with pytest.raises(TypeError):
        owner[0] = 0
    with pytest.raises(TypeError):
        owner.obj[0] = 0  # the mmap itself is PROT_READ
    assert reader.read().frame == 1


def test_an_unsealed_memfd_is_refused_with_a_clear_reason():
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.ftruncate(fd, SPEC.block_size)
    with LayerWriter(fd, SPEC) as writer:
        publish(writer, 1)
        reader = LayerReader(fd)
        assert_no_frame(reader, reader.read())
        assert "sealed" in reader.last_error
        assert reader.read() is None  # and stays refused
    os.close(fd)


def test_a_regular_file_is_refused_like_an_unsealed_block():
    with tempfile.TemporaryFile() as f:
        f.truncate(SPEC.block_size)
        reader = LayerReader(f.fileno())
        assert_no_frame(reader, reader.read())
        assert "sealed" in reader.last_error


def test_a_sealed_block_smaller_than_the_header_page_is_refused():
    fd = sealed_memfd(100)
    reader = LayerReader(fd)
    assert_no_frame(reader, reader.read())
    os.close(fd)


def test_a_huge_sparse_block_is_not_allocated_by_the_reader():
    """Sane blocks are mapped populated (no page faults in the first frames); one far past
    any valid layer is mapped lazily, so a hostile 1 GiB sparse file costs nothing."""

    def resident_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    fd = sealed_memfd(1 << 30)
    before = resident_bytes()
    reader = LayerReader(fd)
    grown = resident_bytes() - before
    assert_no_frame(reader, reader.read())
    reader.close()
    os.close(fd)
    assert grown < 64 << 20, f"the reader made {grown >> 20} MiB resident"


def test_a_valid_block_is_resident_as_soon_as_the_reader_maps_it():
    spec = LayerSpec(width=512, height=512, eyes=2, images=3)
    fd = create_layer_fd(spec)
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1])
    reader = LayerReader(fd)
    with open("/proc/self/statm") as f:
        grown = (int(f.read().split()[1]) - before) * os.sysconf("SC_PAGE_SIZE")
    reader.close()
    os.close(fd)
    assert grown >= spec.block_size * 0.9  # populated, not faulted in frame by frame


def test_a_closed_fd_is_the_only_thing_the_constructor_raises_for():
    fd = create_layer_fd(SPEC)
    os.close(fd)
    with pytest.raises(OSError):
        LayerReader(fd)


def test_a_closed_reader_returns_no_frame(layer):
    _, writer, reader = layer
    publish(writer, 1)
    held = reader.read()
    reader.close()
    assert_no_frame(reader, reader.read())
    assert not reader.still_valid(held)
    assert (held.pixels == 1).all()  # views taken before close stay usable


# --- counters that never settle -------------------------------------------------------


def corrupt(fd: int, offset: int, fmt: str, value) -> None:
    os.pwrite(fd, struct.pack(fmt, value), offset)


def test_an_image_seq_stuck_odd_is_no_frame_after_bounded_retries(layer):
    fd, writer, reader = layer
    publish(writer, 1)
    seq_offset = 128 + 0 * 256
    corrupt(fd, seq_offset, "<Q", 4 | 1)  # a producer that died mid-write
    assert_no_frame(reader, reader.read())
    assert "still being written" in reader.last_error
    assert str(READ_ATTEMPTS) in reader.last_error


def test_a_publish_counter_stuck_odd_is_no_frame_after_bounded_retries(layer):
    fd, writer, reader = layer
    publish(writer, 1)
    corrupt(fd, 56, "<Q", 7)
    assert_no_frame(reader, reader.read())
    assert "mid-publish" in reader.last_error


# --- any bytes ------------------------------------------------------------------------

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
ANY_DOUBLE = st.floats(allow_nan=True, allow_infinity=True)

# (offset, struct format, values that must make the block invalid)
INVALID_FIELDS = {
    "magic": (0, "8s", st.binary(min_size=8, max_size=8).filter(lambda b: b != MAGIC)),
    "version": (8, "<I", U32.filter(lambda v: v != VERSION)),
    "format": (12, "<I", U32.filter(lambda v: v not in set(PixelFormat))),
    "width": (16, "<I", st.one_of(st.just(0), st.integers(MAX_DIMENSION + 1, 2**32 - 1))),
    "height": (20, "<I", st.one_of(st.just(0), st.integers(MAX_DIMENSION + 1, 2**32 - 1))),
    "eyes": (24, "<I", st.one_of(st.just(0), st.integers(3, 2**32 - 1))),
    "images": (28, "<I", st.one_of(st.sampled_from([0, 1, 2]), st.integers(4, 2**32 - 1))),
    "images_offset": (32, "<Q", U64.filter(lambda v: v != SPEC.images_offset)),
    "image_stride": (40, "<Q", U64.filter(lambda v: v != SPEC.image_stride)),
    "block_size": (48, "<Q", U64.filter(lambda v: v != SPEC.block_size)),
    "publish_seq": (56, "<Q", U64.filter(lambda v: v % 2 == 1)),
    "latest_index": (64, "<I", st.integers(SPEC.images, 2**32 - 1)),
    "image_seq": (SLOT, "<Q", st.one_of(st.just(0), U64.filter(lambda v: v % 2 == 1))),
    "eye0_position_x": (SLOT + 32, "<d", st.sampled_from([math.nan, math.inf, -math.inf])),
    "eye1_orientation_w": (SLOT + 120 + 48, "<d", st.sampled_from([math.nan, 0.0, 2.0, -5.0])),
    "eye0_orientation_x": (SLOT + 32 + 24, "<d", st.floats(0.1, 1e300)),
    "eye1_fov_left": (SLOT + 120 + 56, "<d", st.sampled_from([math.nan, -2.0, 0.9, 1e9])),
    "eye0_fov_down": (SLOT + 32 + 80, "<d", st.sampled_from([-math.pi / 2, 0.8, math.inf])),
}

ALL_FIELDS = {
    **{name: (off, fmt) for name, (off, fmt, _) in INVALID_FIELDS.items()},
    "frame": (SLOT + 8, "<Q"),
    "completed_ns": (SLOT + 16, "<q"),
    **{f"eye{e}_value{k}": (SLOT + 32 + e * 88 + k * 8, "<d") for e in (0, 1) for k in range(11)},
}


@st.composite
def any_value(draw, fmt: str):
    if fmt == "8s":
        return draw(st.binary(min_size=8, max_size=8))
    if fmt == "<d":
        return draw(ANY_DOUBLE)
    bits = {"<I": 32, "<Q": 64, "<q": 64}[fmt]
    edges = [0, 1, 2, 3, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1]
    lo, hi = (-(2**63), 2**63 - 1) if fmt == "<q" else (0, 2**bits - 1)
    return draw(
        st.one_of(st.sampled_from([e for e in edges if lo <= e <= hi]), st.integers(lo, hi))
    )


@pytest.fixture(scope="module")
def raw_layer():
    """One sealed block and its reader, reused: the reader re-checks everything each read."""
    fd = create_layer_fd(SPEC)
    reader = LayerReader(fd)
    yield fd, reader
    reader.close()
    os.close(fd)


def test_the_valid_block_used_below_reads_back(raw_layer):
    fd, reader = raw_layer
    os.pwrite(fd, VALID_BLOCK, 0)
    got = reader.read()
    assert got is not None and got.frame == 12 and got.index == LATEST


@HYPOTHESIS
@given(data=st.data(), field=st.sampled_from(sorted(INVALID_FIELDS)))
def test_an_invalid_field_is_no_frame(raw_layer, data, field):
    fd, reader = raw_layer
    offset, fmt, values = INVALID_FIELDS[field]
    os.pwrite(fd, VALID_BLOCK, 0)
    corrupt(fd, offset, fmt, data.draw(values, label=field))
    assert_no_frame(reader, reader.read())
    assert_no_frame(reader, reader.read_into(np.zeros(SPEC.shape, np.uint8)))


@HYPOTHESIS
@given(data=st.data(), fields=st.lists(st.sampled_from(sorted(ALL_FIELDS)), min_size=1))
def test_any_field_values_give_no_frame_or_a_frame_in_bounds(raw_layer, data, fields):
    fd, reader = raw_layer
    os.pwrite(fd, VALID_BLOCK, 0)
    for field in fields:
        offset, fmt = ALL_FIELDS[field]
        corrupt(fd, offset, fmt, data.draw(any_value(fmt), label=field))
    assert_sane(reader, reader.read(), SPEC.block_size)


@HYPOTHESIS
@given(flips=st.lists(st.integers(0, (128 + 3 * 256) * 8 - 1), min_size=1, max_size=8))
def test_flipped_header_bits_give_no_frame_or_a_frame_in_bounds(raw_layer, flips):
    fd, reader = raw_layer
    block = bytearray(VALID_BLOCK[:ALIGNMENT])
    for bit in flips:
        block[bit // 8] ^= 1 << (bit % 8)
    os.pwrite(fd, bytes(block), 0)
    assert_sane(reader, reader.read(), SPEC.block_size)


@HYPOTHESIS
@given(
    prefix=st.sampled_from([b"", MAGIC, MAGIC + struct.pack("<I", VERSION)]),
    noise=st.binary(max_size=1024),
    size=st.sampled_from([ALIGNMENT, 2 * ALIGNMENT, SPEC.block_size, SPEC.block_size + 1]),
)
def test_random_bytes_in_blocks_of_any_size_never_raise(prefix, noise, size):
    fd = sealed_memfd(size)
    try:
        os.pwrite(fd, (prefix + noise)[:size], 0)
        reader = LayerReader(fd)
        assert_sane(reader, reader.read(), size)
        assert_sane(reader, reader.read_into(np.zeros(SPEC.shape, np.uint8)), size)
        reader.close()
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("width", "height", "eyes", "images"),
    [(MAX_DIMENSION, MAX_DIMENSION, 2, 8), (MAX_DIMENSION, 2, 1, 3), (1024, 2, 2, 3)],
)
def test_a_consistent_header_for_a_bigger_layer_than_the_block_is_no_frame(
    raw_layer, width, height, eyes, images
):
    fd, reader = raw_layer
    os.pwrite(fd, VALID_BLOCK, 0)
    big = LayerSpec(width, height, eyes, images)
    fields = (width, height, eyes, images, big.images_offset, big.image_stride, big.block_size)
    os.pwrite(fd, struct.pack("<IIIIQQQ", *fields), 16)
    assert_no_frame(reader, reader.read())
    assert "bytes" in reader.last_error


def test_nothing_published_is_no_frame(raw_layer):
    fd, reader = raw_layer
    os.pwrite(fd, VALID_BLOCK, 0)
    corrupt(fd, 64, "<I", NO_IMAGE)
    assert_no_frame(reader, reader.read())


# --- handing the fd over --------------------------------------------------------------


def test_an_fd_sent_over_a_unix_socket_maps_the_same_block(layer):
    fd, writer, reader = layer
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        send_layer_fd(a, fd, SPEC)
        received, spec = recv_layer_fd(b)
    assert spec == SPEC and received != fd
    with LayerWriter(received, spec) as other:
        publish(other, 99)
    os.close(received)
    assert reader.read().frame == 99


def test_a_message_that_is_not_a_handoff_is_a_value_error_and_its_fds_are_closed():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    extra = os.memfd_create("extra", os.MFD_CLOEXEC)
    with a, b:
        socket.send_fds(a, [b"x" * 32], [extra])
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ValueError):
            recv_layer_fd(b)
        assert len(os.listdir("/proc/self/fd")) == before
        a.close()
        with pytest.raises(ConnectionError):
            recv_layer_fd(b)
    os.close(extra)

"""Layers: the shared-memory blocks through which a game hands rendered frames to the compositor.

One block per layer. The compositor (the *reading side*) creates the block as a sealed memfd
(:func:`create_layer_fd`) so no producer can shrink it under the reader's mapping, and hands
the fd to the game (:func:`send_layer_fd` / :func:`recv_layer_fd`, or ``pass_fds`` when it
spawns the game). The game maps it read-write (:class:`LayerWriter`), renders each frame into
a free image (:meth:`LayerWriter.acquire`) and publishes it (:meth:`LayerWriter.publish`).
The compositor maps it read-only (:class:`LayerReader`) and checks every field and bound on
every :meth:`LayerReader.read`; anything malformed is "no valid frame" (``None`` plus a
readable :attr:`LayerReader.last_error`), never an exception.

The byte layout is in ``docs/layer-format.md``; in short (all little-endian)::

    0      global header (128 bytes): magic, version, format, width, height, eyes, images,
           images_offset, image_stride, block_size, publish_seq, latest_index
    128    one 256-byte record per image: seq, frame, completed_ns, per-eye pose + fov
    4096   the images, each 4096-aligned: eyes x height x width x 4 bytes (RGBA8 or
           BGRA8), eye 0 (left) first,
           rows bottom-to-top as glReadPixels returns them

Where the drivers allow it, the images live in GPU memory instead (one image per ring
image and eye, allocated by the compositor and imported by both sides, see
:mod:`engine.contracts.gpu_layer`): the writer says so in the header's ``image_storage``
(:class:`ImageStorage`), the image bytes of the block are then unused, and everything
else (header, records, seqlocks, poses, frame numbers) works exactly as above.

Torn frames are prevented by two seqlocks: each image's ``seq`` is odd while the producer
writes it and even once complete; ``publish_seq`` guards ``latest_index`` the same way. The
reader checks an image's ``seq`` before and after using it and retries a bounded number of
times, so it never waits for the writer and the writer never waits for it.

Example:
    >>> spec = LayerSpec(width=4, height=2, eyes=1)
    >>> fd = create_layer_fd(spec, name="doctest")
    >>> writer, reader = LayerWriter(fd, spec), LayerReader(fd)
    >>> slot = writer.acquire()
    >>> slot.pixels.fill(7)
    >>> writer.publish(slot, frame=1, eyes=(EyeView(Pose()),), completed_ns=10)
    >>> frame = reader.read()
    >>> (frame.frame, int(frame.pixels.max()), reader.still_valid(frame))
    (1, 7, True)
"""

from __future__ import annotations

import enum
import fcntl
import math
import mmap
import os
import socket
import struct
from dataclasses import dataclass

import numpy as np

from engine.contracts.seqlock import U64_MAX, Seqlock
from engine.contracts.shm import sealed_memfd
from engine.pose.base import EyeView, Fov, Pose

MAGIC = b"ASELAYER"
VERSION = 1
ALIGNMENT = 4096  # images start on 4 KiB boundaries, whatever the host's page size
GLOBAL_HEADER_BYTES = 128
SLOT_BYTES = 256
NO_IMAGE = 0xFFFF_FFFF  # latest_index before anything is published
MAX_DIMENSION = 16384
MAX_EYES = 2
MIN_IMAGES = 2  # the writer never rewrites the image it last published, so it needs a second
MAX_IMAGES = 8  # keeps the header in the first 4 KiB
#: Blocks up to this size are mapped populated (see ``_Mapping``): 8 x 2 x 2048 x 2048.
POPULATE_MAX_BYTES = 8 * 2 * 2048 * 2048 * 4 + 4096
READ_ATTEMPTS = 8  # a reader retries this often when the writer is mid-update, then gives up
QUATERNION_TOLERANCE = 1e-3  # how far |orientation| may be from 1

# Global header fields set once by the writer: magic, version, format, width, height, eyes,
# images, images_offset, image_stride, block_size. The two counters after them are stored
# one aligned word at a time, never through struct.
_GLOBAL = struct.Struct("<8sIIIIIIQQQ")
_PUBLISH_SEQ_OFFSET = 56  # u64
_LATEST_INDEX_OFFSET = 64  # u32
_IMAGE_STORAGE_OFFSET = 68  # u32, in what was reserved space: 0 (images here) for old writers
# Per-image record: seq, frame, completed_ns, reserved; then per eye 11 doubles:
# position xyz, orientation xyzw, fov left right up down.
_SLOT_HEAD = struct.Struct("<QQqQ")
_EYE = struct.Struct("<11d")
_HANDOFF = struct.Struct("<8sIIIIII")  # magic, version, format, width, height, eyes, images

_U64_MAX = U64_MAX
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class PixelFormat(enum.IntEnum):
    """How a pixel is stored. Zero is deliberately not a format, so a zeroed block is invalid."""

    RGBA8 = 1
    """4 bytes per pixel, R G B A, rows bottom-to-top (the order glReadPixels returns);
    colour premultiplied by alpha (an opaque layer has alpha 255 everywhere)."""

    BGRA8 = 2
    """As ``RGBA8`` with blue and red swapped: B G R A. What the compositor asks for by
    default: Mesa (llvmpipe) stores 8-bit textures as BGRA, so these upload as a plain
    copy, where RGBA8 is converted on the way (about 0.2 ms more per 720p eye here)."""

    @property
    def rgba_order(self) -> list[int]:
        """Channel indices that turn pixels of this format into R G B A (and back):
        ``pixels[..., fmt.rgba_order]``."""
        return [0, 1, 2, 3] if self is PixelFormat.RGBA8 else [2, 1, 0, 3]


_BYTES_PER_PIXEL = {PixelFormat.RGBA8: 4, PixelFormat.BGRA8: 4}


class ImageStorage(enum.IntEnum):
    """Where a layer's images are, as the writer states it in the header.

    Zero is the block itself, which is what every writer wrote before this field existed
    (the word was reserved and zeroed).
    """

    SHARED_MEMORY = 0
    """In this block, after the records: the reader copies (uploads) them."""

    GPU_MEMORY = 1
    """In the GPU images the compositor handed over with the block (one per ring image and
    eye, :mod:`engine.contracts.gpu_layer`); image ``i`` of the ring is GPU image ``i``.
    The block's image bytes are unused and :attr:`ImageSlot.pixels` /
    :attr:`LayerFrame.pixels` are ``None``."""


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _spec_problem(width: int, height: int, eyes: int, images: int, fmt: int) -> str | None:
    """Why these header values cannot describe a layer, or ``None`` if they can.

    The limits keep every size below 2**40, so the products cannot overflow 64-bit
    arithmetic in any language.
    """
    if fmt not in _BYTES_PER_PIXEL.keys():
        return f"unknown pixel format {fmt}"
    if not 1 <= width <= MAX_DIMENSION or not 1 <= height <= MAX_DIMENSION:
        return f"size {width}x{height} is outside 1..{MAX_DIMENSION}"
    if not 1 <= eyes <= MAX_EYES:
        return f"eye count {eyes} is outside 1..{MAX_EYES}"
    if not MIN_IMAGES <= images <= MAX_IMAGES:
        return f"image count {images} is outside {MIN_IMAGES}..{MAX_IMAGES}"
    return None


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """The shape of a layer: image size, eye count, ring length and pixel format.

    Raises ``ValueError`` for values outside the format's limits (sizes 1..16384, 1 or 2
    eyes, 2..8 images, a known format).

    Example:
        >>> spec = LayerSpec(width=1280, height=720)
        >>> (spec.eye_bytes, spec.image_bytes, spec.block_size)
        (3686400, 7372800, 22122496)
    """

    width: int
    height: int
    eyes: int = 2
    images: int = 3
    format: PixelFormat = PixelFormat.RGBA8

    def __post_init__(self) -> None:
        problem = _spec_problem(self.width, self.height, self.eyes, self.images, self.format)
        if problem:
            raise ValueError(problem)
        object.__setattr__(self, "format", PixelFormat(self.format))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(eyes, height, width, 4)``: the shape of one image as a numpy array."""
        return (self.eyes, self.height, self.width, _BYTES_PER_PIXEL[self.format])

    @property
    def eye_bytes(self) -> int:
        """Bytes of one eye's pixels: ``height * width * 4``."""
        return self.height * self.width * _BYTES_PER_PIXEL[self.format]

    @property
    def image_bytes(self) -> int:
        """Bytes of one image (all eyes): ``eyes * eye_bytes``."""
        return self.eyes * self.eye_bytes

    @property
    def image_stride(self) -> int:
        """Distance between consecutive images: ``image_bytes`` rounded up to 4096."""
        return _align(self.image_bytes)

    @property
    def images_offset(self) -> int:
        """Where image 0 starts: the header and image records rounded up to 4096."""
        return _align(GLOBAL_HEADER_BYTES + self.images * SLOT_BYTES)

    @property
    def block_size(self) -> int:
        """Total bytes of the shared block."""
        return self.images_offset + self.images * self.image_stride

    def image_offset(self, index: int) -> int:
        """Byte offset of image ``index`` in the block."""
        return self.images_offset + index * self.image_stride


def _slot_offset(index: int) -> int:
    return GLOBAL_HEADER_BYTES + index * SLOT_BYTES


def _eye_problem(values: tuple[float, ...]) -> str | None:
    """Why 11 numbers (position, orientation, fov) are not a usable eye view, or ``None``."""
    if not all(math.isfinite(v) for v in values):
        return "pose or fov is not finite"
    norm = math.sqrt(sum(v * v for v in values[3:7]))
    if abs(norm - 1.0) > QUATERNION_TOLERANCE:
        return f"orientation is not a unit quaternion (|q| = {norm:.6g})"
    left, right, up, down = values[7:11]
    half_pi = math.pi / 2
    if not all(-half_pi < a < half_pi for a in (left, right, up, down)):
        return "fov angle outside (-pi/2, pi/2)"
    if not (left < right and down < up):
        return "fov is empty (needs left < right and down < up)"
    return None


def _eye_values(view: EyeView) -> tuple[float, ...]:
    pose, fov = view.pose, view.fov
    return tuple(float(v) for v in (*pose.position, *pose.orientation, *fov.as_tuple()))


def _eye_view(values: tuple[float, ...]) -> EyeView:
    return EyeView(Pose.from_array(values[:7]), Fov(*values[7:11]))


def create_layer_fd(spec: LayerSpec, name: str = "layer") -> int:
    """Create the shared block for ``spec``: a memfd of ``spec.block_size`` zero bytes, sealed.

    The seals (shrink, grow, seal) mean no process holding the fd can change its size, so a
    reader's mapping can never lose pages and fault with SIGBUS. The fd is close-on-exec;
    pass it on with :func:`send_layer_fd` or ``subprocess.Popen(..., pass_fds=[fd])``. The
    caller owns the fd and closes it. Raises ``OSError`` if the kernel refuses.
    """
    return sealed_memfd(name, spec.block_size)


def send_layer_fd(sock: socket.socket, fd: int, spec: LayerSpec) -> None:
    """Send a layer's fd and its spec over a connected Unix socket as one 32-byte message.

    The receiver gets its own fd for the same block (:func:`recv_layer_fd`); the sender
    may close its fd afterwards. Raises ``OSError`` if the socket fails.
    """
    message = _HANDOFF.pack(
        MAGIC, VERSION, spec.format, spec.width, spec.height, spec.eyes, spec.images
    )
    socket.send_fds(sock, [message], [fd])


def recv_layer_fd(sock: socket.socket) -> tuple[int, LayerSpec]:
    """Receive one ``(fd, spec)`` sent by :func:`send_layer_fd`; the caller owns the fd.

    Raises ``ConnectionError`` if the peer closed the socket, ``ValueError`` (after closing
    any fds that came with it) if the message is not a layer handoff.
    """
    message, fds, flags, _ = socket.recv_fds(sock, _HANDOFF.size, 1)
    if not message and not fds:
        raise ConnectionError("peer closed the socket before sending a layer")
    try:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(message) != _HANDOFF.size:
            raise ValueError(f"not a layer handoff ({len(message)} bytes, flags {flags:#x})")
        magic, version, fmt, width, height, eyes, images = _HANDOFF.unpack(message)
        if magic != MAGIC or version != VERSION:
            raise ValueError(f"not a layer handoff (magic {magic!r}, version {version})")
        if len(fds) != 1:
            raise ValueError(f"layer handoff carried {len(fds)} fds, expected 1")
        problem = _spec_problem(width, height, eyes, images, fmt)
        if problem:
            raise ValueError(f"layer handoff has a bad spec: {problem}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], LayerSpec(width, height, eyes, images, PixelFormat(fmt))


@dataclass(frozen=True, slots=True, eq=False)
class ImageSlot:
    """An image the producer may draw into, from :meth:`LayerWriter.acquire`.

    Attributes:
        index: which image of the ring this is.
        pixels: writable ``uint8`` view ``(eyes, height, width, 4)`` straight onto the
            shared memory; eye 0 (left) first, rows bottom-to-top. ``None`` when the
            images are in GPU memory (draw into GPU image ``index`` instead).
    """

    index: int
    pixels: np.ndarray | None

    def eye(self, i: int) -> np.ndarray:
        """Writable ``(height, width, 4)`` view of eye ``i``'s pixels."""
        return self.pixels[i]

    def address(self, eye: int) -> int:
        """Address of eye ``eye``'s first byte, for ``glReadPixels(..., ctypes.c_void_p(a))``.

        Valid while the writer is open. The GL pack alignment must allow tight rows
        (``GL_PACK_ALIGNMENT`` 4 or 1 is fine for RGBA8).
        """
        return int(self.pixels[eye].ctypes.data)


@dataclass(frozen=True, slots=True, eq=False)
class LayerFrame:
    """One complete image as a reader saw it.

    Attributes:
        index: which image of the ring.
        seq: the image's sequence counter when read (even); :meth:`LayerReader.still_valid`
            compares against it.
        frame: the producer's frame number.
        completed_ns: when the producer finished it, in ns on the engine clock.
        eyes: the eye views it was rendered with, left first.
        pixels: ``uint8`` ``(eyes, height, width, 4)``, rows bottom-to-top. From
            :meth:`LayerReader.read` a read-only view of shared memory that the producer may
            overwrite (check :meth:`LayerReader.still_valid` after use); from
            :meth:`LayerReader.read_into` the caller's array.
        spec: the layer's spec as the header stated it for this read.
        storage: where the image is; for :attr:`ImageStorage.GPU_MEMORY` ``pixels`` is
            ``None`` and the image is GPU image ``index`` of the layer.
    """

    index: int
    seq: int
    frame: int
    completed_ns: int
    eyes: tuple[EyeView, ...]
    pixels: np.ndarray | None
    spec: LayerSpec
    storage: ImageStorage = ImageStorage.SHARED_MEMORY


class _Mapping:
    """An mmap of a layer block plus aligned integer views for the seqlock counters.

    Counters are read and written as single aligned 8-byte (or 4-byte) numpy loads and
    stores, so they are never torn.
    """

    def __init__(self, fd: int, size: int, writable: bool, populate: bool = True) -> None:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        # Populated up front: otherwise each image's first use faults in its pages one by
        # one (about a millisecond per 720p stereo image), which made the compositor's
        # first frames of a new layer late. Not past a sane size: a block handed over by
        # someone else could be a huge sparse file that would then all be allocated here.
        flags = mmap.MAP_SHARED
        if populate and size <= POPULATE_MAX_BYTES:
            flags |= getattr(mmap, "MAP_POPULATE", 0)
        self.mm = mmap.mmap(fd, size, flags=flags, prot=prot)
        self.size = size
        self.bytes = np.frombuffer(self.mm, dtype=np.uint8)
        header = self.bytes[:ALIGNMENT]
        self.u64 = header.view("<u8")
        self.u32 = header.view("<u4")

    def load64(self, offset: int) -> int:
        return int(self.u64[offset // 8])

    def seqlock(self, offset: int) -> Seqlock:
        """The seqlock whose counter is the u64 at ``offset``."""
        return Seqlock(self.u64, offset // 8)

    def close(self) -> None:
        """Unmap now if nobody holds a view; otherwise when the last view is released."""
        del self.bytes, self.u64, self.u32
        try:
            self.mm.close()
        except BufferError:
            pass  # a frame or slot view is still alive; the mmap goes with it


class LayerWriter:
    """The producer's side of a layer: maps the block read-write and publishes images.

    Creating a writer (re)initialises the header for ``spec``; a restarted producer may
    attach to the same block again, and frames a reader still holds from before become
    invalid. A writer attaching to a block that had an image published starts the ring
    after that image, so it does not draw into the image a reader may still be showing
    (which matters when that image is GPU memory the reader samples in place).
    ``storage`` says where the images are: with :attr:`ImageStorage.GPU_MEMORY` only the
    header and records are mapped and slots carry no pixels. Raises ``ValueError`` if the
    block is smaller than ``spec.block_size`` and ``OSError`` for an fd that cannot be
    mapped read-write. The fd stays the caller's.

    Example:
        >>> spec = LayerSpec(width=2, height=2, eyes=1)
        >>> writer = LayerWriter(create_layer_fd(spec), spec)
        >>> slot = writer.acquire()
        >>> writer.publish(slot, frame=0, eyes=(EyeView(Pose()),), completed_ns=0)
        >>> writer.acquire().index != slot.index
        True
    """

    def __init__(
        self,
        fd: int,
        spec: LayerSpec,
        storage: ImageStorage = ImageStorage.SHARED_MEMORY,
        *,
        attach: bool = True,
    ) -> None:
        size = os.fstat(fd).st_size
        if size < spec.block_size:
            raise ValueError(f"block is {size} bytes, {spec} needs {spec.block_size}")
        self.spec = spec
        self.storage = ImageStorage(storage)
        # GPU images: the block's image bytes are never touched, so never mapped (a
        # populated writable mapping would allocate them all).
        in_block = self.storage is ImageStorage.SHARED_MEMORY
        mapped = spec.block_size if in_block else spec.images_offset
        self._map = _Mapping(fd, mapped, writable=True)
        self._publish = self._map.seqlock(_PUBLISH_SEQ_OFFSET)
        self._images = [self._map.seqlock(_slot_offset(i)) for i in range(spec.images)]
        self._last_published: int | None = None
        self._drawing: ImageSlot | None = None
        self._closed = False
        self.attached = False
        if attach:
            self.attach()

    def attach(self) -> None:
        """Take the block over: (re)initialise its header for this writer. Idempotent."""
        if not self.attached:
            self._initialise()
            self.attached = True

    def _initialise(self) -> None:
        m, spec = self._map, self.spec
        if m.mm[0:8] == MAGIC:
            previous = int(m.u32[_LATEST_INDEX_OFFSET // 4])
            if previous < spec.images:
                self._last_published = previous  # acquire() starts after it
        odd = self._publish.begin_write()  # readers keep out
        m.bytes[0:8] = 0  # magic last, so a half-written header never looks valid
        m.u32[_LATEST_INDEX_OFFSET // 4] = NO_IMAGE
        m.bytes[_LATEST_INDEX_OFFSET + 4 : GLOBAL_HEADER_BYTES] = 0  # reserved
        _GLOBAL.pack_into(
            m.mm,
            0,
            b"\0" * 8,
            VERSION,
            spec.format,
            spec.width,
            spec.height,
            spec.eyes,
            spec.images,
            spec.images_offset,
            spec.image_stride,
            spec.block_size,
        )
        m.u32[_IMAGE_STORAGE_OFFSET // 4] = self.storage
        for lock in self._images:
            # Move every image's counter on to a fresh even value, so frames a reader
            # took from a previous writer fail still_valid().
            lock.bump_even()
        m.mm[0:8] = MAGIC
        self._publish.end_write(odd)

    def acquire(self) -> ImageSlot:
        """Claim the next image to draw into and mark it as being written (its seq goes odd).

        Never returns the image last published, so the reader always has a complete one.
        Calling it again before :meth:`publish` returns the same slot (the abandoned draw
        is simply redone). Raises ``ValueError`` once closed or before :meth:`attach`.
        """
        if self._closed:
            raise ValueError("layer writer is closed")
        if not self.attached:
            raise ValueError("layer writer is not attached (call attach() first)")
        if self._drawing is not None:
            return self._drawing
        spec, m = self.spec, self._map
        last = self._last_published
        index = 0 if last is None else (last + 1) % spec.images
        self._images[index].begin_write()
        pixels = None
        if self.storage is ImageStorage.SHARED_MEMORY:
            start = spec.image_offset(index)
            pixels = m.bytes[start : start + spec.image_bytes].reshape(spec.shape)
        self._drawing = ImageSlot(index, pixels)
        return self._drawing

    def publish(
        self, slot: ImageSlot, frame: int, eyes: tuple[EyeView, ...], completed_ns: int
    ) -> None:
        """Record how ``slot`` was rendered, mark it complete and make it the latest image.

        ``eyes`` holds one :class:`EyeView` per eye of the spec, left first. The pixels must
        be fully written before this is called (after ``glReadPixels`` into client memory
        returns; with a pixel-buffer object, after its fence). Raises ``ValueError`` for a
        slot that is not the one acquired, a wrong eye count, non-finite or non-unit poses,
        an empty fov, or a frame / time outside 64-bit range; nothing is published then.
        """
        if self._closed:
            raise ValueError("layer writer is closed")
        if slot is not self._drawing:
            raise ValueError("publish() needs the slot returned by the last acquire()")
        if len(eyes) != self.spec.eyes:
            raise ValueError(f"layer has {self.spec.eyes} eyes, got {len(eyes)} eye views")
        if not 0 <= frame <= _U64_MAX or not _I64_MIN <= completed_ns <= _I64_MAX:
            raise ValueError("frame must fit in u64 and completed_ns in i64")
        values = [_eye_values(view) for view in eyes]
        for i, v in enumerate(values):
            problem = _eye_problem(v)
            if problem:
                raise ValueError(f"eye {i}: {problem}")
        m, base = self._map, _slot_offset(slot.index)
        struct.pack_into("<Qq", m.mm, base + 8, frame, completed_ns)
        for i, v in enumerate(values):
            _EYE.pack_into(m.mm, base + _SLOT_HEAD.size + i * _EYE.size, *v)
        image = self._images[slot.index]
        image.end_write(image.load() | 1)  # even: image complete
        odd = self._publish.begin_write()
        m.u32[_LATEST_INDEX_OFFSET // 4] = slot.index
        self._publish.end_write(odd)
        self._last_published, self._drawing = slot.index, None

    def close(self) -> None:
        """Unmap the block (deferred while slot views are alive). Idempotent."""
        if not self._closed:
            self._closed, self._drawing = True, None
            del self._publish, self._images  # they hold views of the mapping
            self._map.close()

    def __enter__(self) -> LayerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LayerReader:
    """The compositor's side of a layer: maps the block read-only and validates every read.

    The constructor raises only ``OSError``, and only when ``fd`` is not an open file
    descriptor. Every other problem makes the reader *refuse* the block: it never maps it
    and each :meth:`read` returns ``None`` with the reason in :attr:`last_error`. It refuses
    a block whose fd is not sealed against shrinking (``F_SEAL_SHRINK``: without it the
    producer could truncate the block and the reader would die of SIGBUS), one smaller than
    the 4 KiB header page, and one it cannot map. The fd stays the caller's; the reader
    keeps its own reference through the mapping. ``populate=False`` maps the block without
    faulting its pages in up front (for a layer whose images will be in GPU memory, whose
    block image bytes are never read).
    """

    def __init__(self, fd: int, populate: bool = True) -> None:
        size = os.fstat(fd).st_size
        self.last_error: str | None = None
        self._map: _Mapping | None = None
        self._refusal: str | None = None
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            seals = 0  # not a memfd: it cannot be sealed
        if not seals & fcntl.F_SEAL_SHRINK:
            self._refusal = "refusing layer: its fd is not a memfd sealed against shrinking"
        elif size < ALIGNMENT:
            self._refusal = f"refusing layer: block is {size} bytes, less than one header page"
        else:
            try:
                self._map = _Mapping(fd, size, writable=False, populate=populate)
            except (OSError, ValueError) as exc:
                self._refusal = f"refusing layer: cannot map it read-only ({exc})"

    def read(self) -> LayerFrame | None:
        """The newest complete image as a zero-copy read-only view, or ``None``.

        The producer may start overwriting the image after this returns; once done with
        ``frame.pixels`` call :meth:`still_valid` and discard what you made from them if it
        is ``False``. Returns ``None`` (reason in :attr:`last_error`) when nothing is
        published yet, when any field is malformed, or when the producer kept the counters
        moving for :data:`READ_ATTEMPTS` attempts. Never raises.
        """
        return self._read_guarded(None)

    def read_into(self, dst: np.ndarray) -> LayerFrame | None:
        """Copy the newest complete image into ``dst`` and return it with ``pixels=dst``.

        ``dst`` must be a writable C-contiguous ``uint8`` array of the layer's shape
        ``(eyes, height, width, 4)``; otherwise ``None``. The copy is validated against the
        image's counter after copying, so the returned frame is never torn (``dst`` may hold
        garbage when ``None`` is returned). Never raises.
        """
        return self._read_guarded(dst)

    def still_valid(self, frame: LayerFrame) -> bool:
        """Whether ``frame``'s image is unchanged since it was read: the seqlock end check.

        Never raises; ``False`` once the reader is closed or for a frame it could not have
        produced.
        """
        m = self._map
        if m is None or not 0 <= frame.index < MAX_IMAGES:
            return False
        return m.load64(_slot_offset(frame.index)) == frame.seq

    def close(self) -> None:
        """Unmap the block (deferred while frame views are alive). Idempotent."""
        if self._map is not None:
            self._map.close()
        self._map, self._refusal = None, "layer reader is closed"

    def __enter__(self) -> LayerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, reason: str) -> None:
        self.last_error = reason
        return None

    def _read_guarded(self, dst: np.ndarray | None) -> LayerFrame | None:
        # Every check below is explicit; this net only exists so that a bug in them can
        # never take the compositor down. The tests assert it is never what answers.
        try:
            return self._read(dst)
        except Exception as exc:
            return self._fail(f"internal error reading layer: {exc!r}")

    def _read(self, dst: np.ndarray | None) -> LayerFrame | None:
        m = self._map
        if m is None:
            return self._fail(self._refusal or "layer reader is closed")
        retry_reason = ""
        for _ in range(READ_ATTEMPTS):
            publish_seq = m.load64(_PUBLISH_SEQ_OFFSET)
            if publish_seq & 1:
                retry_reason = "producer is mid-publish"
                continue
            header = m.mm[:GLOBAL_HEADER_BYTES]  # a private copy: checked, then trusted
            latest = int(m.u32[_LATEST_INDEX_OFFSET // 4])
            # The latest image's seq, read while publish_seq shows no publish: the producer
            # never rewrites the image it last published, so this is the seq it was
            # published with. Read after the check instead, it could belong to a newer
            # image the producer has finished but not yet published, and the next read
            # would then go back to the published one, a frame older.
            seq = m.load64(_slot_offset(latest)) if latest < MAX_IMAGES else 0
            if m.load64(_PUBLISH_SEQ_OFFSET) != publish_seq:
                retry_reason = "producer published while the header was read"
                continue
            spec = _parse_header(header, m.size)
            if isinstance(spec, str):
                return self._fail(spec)
            storage = _parse_storage(header)
            if isinstance(storage, str):
                return self._fail(storage)
            in_block = storage is ImageStorage.SHARED_MEMORY
            if latest == NO_IMAGE:
                return self._fail("nothing published yet")
            if latest >= spec.images:
                return self._fail(f"latest image index {latest} is not below {spec.images}")
            if dst is not None:
                problem = (
                    _destination_problem(dst, spec) if in_block else "images are in GPU memory"
                )
                if problem:
                    return self._fail(problem)

            seq_offset = _slot_offset(latest)
            if seq & 1:
                retry_reason = f"image {latest} is still being written"
                continue
            if seq == 0:
                return self._fail(f"image {latest} is published but was never completed")
            record = m.mm[seq_offset : seq_offset + SLOT_BYTES]
            start = spec.image_offset(latest)
            pixels = (
                m.bytes[start : start + spec.image_bytes].reshape(spec.shape) if in_block else None
            )
            if dst is not None and pixels is not None:
                np.copyto(dst, pixels)
                pixels = dst
            if m.load64(seq_offset) != seq:
                retry_reason = f"image {latest} was overwritten while it was read"
                continue

            _, frame, completed_ns, _ = _SLOT_HEAD.unpack_from(record)
            eyes = []
            for i in range(spec.eyes):
                values = _EYE.unpack_from(record, _SLOT_HEAD.size + i * _EYE.size)
                problem = _eye_problem(values)
                if problem:
                    return self._fail(f"image {latest} eye {i}: {problem}")
                eyes.append(_eye_view(values))
            self.last_error = None
            return LayerFrame(latest, seq, frame, completed_ns, tuple(eyes), pixels, spec, storage)
        return self._fail(f"no settled frame after {READ_ATTEMPTS} attempts: {retry_reason}")


def _parse_header(header: bytes, mapped: int) -> LayerSpec | str:
    """The spec a header snapshot describes, or why it describes none."""
    fields = _GLOBAL.unpack_from(header)
    magic, version, fmt, width, height, eyes, images = fields[:7]
    images_offset, image_stride, block_size = fields[7:]
    if magic != MAGIC:
        return f"bad magic {magic!r} (producer not attached yet, or not a layer)"
    if version != VERSION:
        return f"unsupported layer version {version} (reader speaks {VERSION})"
    problem = _spec_problem(width, height, eyes, images, fmt)
    if problem:
        return problem
    spec = LayerSpec(width, height, eyes, images, PixelFormat(fmt))
    stated = (images_offset, image_stride, block_size)
    expected = (spec.images_offset, spec.image_stride, spec.block_size)
    if stated != expected:
        return f"header sizes (offset, stride, block) {stated} should be {expected}"
    if spec.block_size > mapped:
        return f"layer needs {spec.block_size} bytes but the block has {mapped}"
    return spec


def _parse_storage(header: bytes) -> ImageStorage | str:
    """Where a header snapshot says the images are, or why that is not a known place."""
    (value,) = struct.unpack_from("<I", header, _IMAGE_STORAGE_OFFSET)
    if value not in ImageStorage.__members__.values():
        return f"unknown image storage {value}"
    return ImageStorage(value)


def _destination_problem(dst: np.ndarray, spec: LayerSpec) -> str | None:
    if not isinstance(dst, np.ndarray) or dst.dtype != np.uint8:
        return "read_into needs a uint8 numpy array"
    if dst.shape != spec.shape:
        return f"read_into array has shape {dst.shape}, the layer is {spec.shape}"
    if not (dst.flags.writeable and dst.flags.c_contiguous):
        return "read_into array must be writable and C-contiguous"
    return None

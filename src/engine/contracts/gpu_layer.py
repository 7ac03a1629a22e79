"""A layer's images in GPU memory: what the compositor hands over so a game can import them.

Where the drivers allow it (see :mod:`engine.gpu`), the compositor allocates each layer's
images with Vulkan as exportable memory, one 2D image per ring image and eye, and sends
one opaque fd per image with a description (:class:`GpuLayerImages`): size, format,
tiling, whether the allocation is dedicated, each allocation's byte size, and the UUIDs of
the device and driver that made them. An importer needs every one of these: OpenGL's
``glImportMemoryFdEXT`` takes the allocation size, ``glTexStorageMem2DEXT`` the format and
size, and a driver may place an image differently for another tiling or a non-dedicated
allocation. Drivers differ in what they forgive: Mesa's llvmpipe ignores a wrong size or
tiling, NVIDIA does not. An importer checks the UUIDs against its own GL context first:
memory from another device cannot be imported.

Where the compositor cannot offer GPU images it says why, in the same message (no fds):
the game then writes its pixels into the layer's shared block as before.

The message (little-endian; sent with the fds as ``SCM_RIGHTS`` over a Unix socket)::

    0   u8[8]   magic "ASEGPUIM"
    8   u32     version (1)
    12  u32     width, height, eyes, images          (4 x u32, as the layer's spec)
    28  u32     format: 1 = RGBA8 (Vulkan R8G8B8A8_UNORM, GL_RGBA8)
    32  u32     tiling: 1 = optimal, 2 = linear
    36  u32     flags: bit 0 = dedicated allocation
    40  u8[16]  device UUID;  56  u8[16]  driver UUID
    72  u32     count: images * eyes, or 0 when nothing is offered
    76  u32     reason length in bytes (at most 512)
    80  u64     allocation size of each image, image-major (image 0 eye 0, image 0 eye 1, ...)
    ...         the reason, UTF-8: why nothing is offered, or what made the images

Example:
    >>> images = GpuLayerImages(4, 2, eyes=2, images=3, sizes=(64,) * 6,
    ...                         device_uuid=bytes(16), driver_uuid=bytes(16))
    >>> images.index(image=1, eye=1), images.count
    (3, 6)
"""

from __future__ import annotations

import enum
import os
import socket
import struct
from dataclasses import dataclass

from engine.contracts.layer import MAX_DIMENSION, MAX_EYES, MAX_IMAGES, MIN_IMAGES

MAGIC = b"ASEGPUIM"
VERSION = 1
UUID_BYTES = 16
MAX_REASON_BYTES = 512
MAX_ALLOCATION_BYTES = 1 << 40  # a 16384 x 16384 RGBA8 image is 1 GiB; far above any real one
_HEAD = struct.Struct("<8sIIIIIIII16s16sII")
_SIZE = struct.Struct("<Q")
MAX_MESSAGE_BYTES = _HEAD.size + MAX_EYES * MAX_IMAGES * _SIZE.size + MAX_REASON_BYTES
_DEDICATED = 0x1


class GpuFormat(enum.IntEnum):
    """How a GPU image's texels are stored. Zero is not a format."""

    RGBA8 = 1
    """Vulkan ``R8G8B8A8_UNORM``, GL ``GL_RGBA8``: what the game renders into and the
    compositor samples (GL returns R G B A from a sampler whatever the memory order, so
    a layer's block ``format`` does not apply to its GPU images)."""


class Tiling(enum.IntEnum):
    """How an image's texels are arranged in its memory (both sides must agree)."""

    OPTIMAL = 1  # the driver's own layout: GL_OPTIMAL_TILING_EXT, VK_IMAGE_TILING_OPTIMAL
    LINEAR = 2  # rows one after another: GL_LINEAR_TILING_EXT, VK_IMAGE_TILING_LINEAR


@dataclass(frozen=True, slots=True)
class GpuLayerImages:
    """The description of one layer's images in GPU memory: everything an import needs.

    ``sizes[index(image, eye)]`` is the byte size of that image's allocation (what
    ``glImportMemoryFdEXT`` must be given, exactly). Raises ``ValueError`` for values
    outside the layer limits, a size count other than ``images * eyes``, a size below
    ``width * height * 4`` or above 2**40, or UUIDs that are not 16 bytes.
    """

    width: int
    height: int
    eyes: int
    images: int
    sizes: tuple[int, ...]
    device_uuid: bytes
    driver_uuid: bytes
    format: GpuFormat = GpuFormat.RGBA8
    tiling: Tiling = Tiling.OPTIMAL
    dedicated: bool = True

    def __post_init__(self) -> None:
        problem = _images_problem(self)
        if problem:
            raise ValueError(problem)
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        object.__setattr__(self, "format", GpuFormat(self.format))
        object.__setattr__(self, "tiling", Tiling(self.tiling))

    @property
    def count(self) -> int:
        """How many images (and fds): ``images * eyes``."""
        return self.images * self.eyes

    def index(self, image: int, eye: int) -> int:
        """Position of ``(image, eye)`` in ``sizes`` and in the fd list: image-major."""
        return image * self.eyes + eye


def _images_problem(d: GpuLayerImages) -> str | None:
    if not 1 <= d.width <= MAX_DIMENSION or not 1 <= d.height <= MAX_DIMENSION:
        return f"size {d.width}x{d.height} is outside 1..{MAX_DIMENSION}"
    if not 1 <= d.eyes <= MAX_EYES:
        return f"eye count {d.eyes} is outside 1..{MAX_EYES}"
    if not MIN_IMAGES <= d.images <= MAX_IMAGES:
        return f"image count {d.images} is outside {MIN_IMAGES}..{MAX_IMAGES}"
    if d.format not in GpuFormat.__members__.values():
        return f"unknown GPU image format {d.format}"
    if d.tiling not in Tiling.__members__.values():
        return f"unknown tiling {d.tiling}"
    if len(d.sizes) != d.images * d.eyes:
        return f"{len(d.sizes)} allocation sizes for {d.images} images x {d.eyes} eyes"
    least = d.width * d.height * 4
    for size in d.sizes:
        if not least <= size <= MAX_ALLOCATION_BYTES:
            return f"allocation size {size} is outside {least}..{MAX_ALLOCATION_BYTES}"
    if len(d.device_uuid) != UUID_BYTES or len(d.driver_uuid) != UUID_BYTES:
        return "device and driver UUIDs must be 16 bytes each"
    return None


@dataclass(frozen=True)
class GpuImagesOffer:
    """What the compositor offers for one layer: the images and their fds, or why not.

    ``fds`` are ints naming this process's copies (image-major, as
    :meth:`GpuLayerImages.index`); they stay open as long as the offer is used. Wrapped in
    :class:`~engine.contracts.shm.PassedFd` when handed to a ``spawn`` child, the child
    receives ints. ``images`` is ``None`` (and ``fds`` empty) when nothing is offered;
    ``reason`` then says why (otherwise, what made the images: for reports).
    """

    images: GpuLayerImages | None
    fds: tuple = ()
    reason: str = ""

    @property
    def offered(self) -> bool:
        return self.images is not None

    def close(self) -> None:
        """Close this process's fds (idempotent per fd: an fd already closed is skipped)."""
        for fd in self.fds:
            if isinstance(fd, int):
                try:
                    os.close(fd)
                except OSError:
                    pass


def not_offered(reason: str) -> GpuImagesOffer:
    """An offer of nothing, saying why (the layer stays in shared memory)."""
    return GpuImagesOffer(None, (), reason)


def send_gpu_images(sock: socket.socket, offer: GpuImagesOffer) -> None:
    """Send ``offer`` (its description and fds, or its reason) as one message.

    The receiver gets its own fds (:func:`recv_gpu_images`); the sender's stay open.
    Raises ``OSError`` if the socket fails, ``ValueError`` if the fd count does not match.
    """
    images = offer.images
    reason = offer.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]
    if images is None:
        if offer.fds:
            raise ValueError("an offer without images carries no fds")
        head = _HEAD.pack(MAGIC, VERSION, 0, 0, 0, 0, 0, 0, 0, bytes(16), bytes(16), 0, len(reason))
        socket.send_fds(sock, [head + reason], [])
        return
    if len(offer.fds) != images.count:
        raise ValueError(f"{len(offer.fds)} fds for {images.count} images")
    head = _HEAD.pack(
        MAGIC, VERSION, images.width, images.height, images.eyes, images.images,
        images.format, images.tiling, _DEDICATED if images.dedicated else 0,
        images.device_uuid, images.driver_uuid, images.count, len(reason),
    )  # fmt: skip
    sizes = b"".join(_SIZE.pack(size) for size in images.sizes)
    socket.send_fds(sock, [head + sizes + reason], list(offer.fds))


def recv_gpu_images(sock: socket.socket) -> GpuImagesOffer:
    """Receive one offer sent by :func:`send_gpu_images`; the caller owns its fds.

    Raises ``ConnectionError`` if the peer closed the socket, ``ValueError`` (after
    closing every fd that came with it) for anything that is not a valid offer: wrong
    magic or version, a truncated message, limits exceeded, fds not matching the count.
    """
    message, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE_BYTES, MAX_EYES * MAX_IMAGES)
    if not message and not fds:
        raise ConnectionError("peer closed the socket before sending the GPU images")
    try:
        return _parse_offer(message, fds, flags)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _parse_offer(message: bytes, fds: list[int], flags: int) -> GpuImagesOffer:
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(message) < _HEAD.size:
        raise ValueError(f"not a GPU images message ({len(message)} bytes, flags {flags:#x})")
    fields = _HEAD.unpack_from(message)
    magic, version, width, height, eyes, images, fmt, tiling, bits = fields[:9]
    device_uuid, driver_uuid, count, reason_bytes = fields[9:]
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a GPU images message (magic {magic!r}, version {version})")
    if count > MAX_EYES * MAX_IMAGES or reason_bytes > MAX_REASON_BYTES:
        raise ValueError(f"GPU images message states {count} images, {reason_bytes} reason bytes")
    end = _HEAD.size + count * _SIZE.size
    if len(message) != end + reason_bytes:
        raise ValueError(
            f"GPU images message is {len(message)} bytes, expected {end + reason_bytes}"
        )
    reason = message[end:].decode("utf-8", "replace")
    if len(fds) != count:
        raise ValueError(f"GPU images message carried {len(fds)} fds, expected {count}")
    if count == 0:
        return not_offered(reason or "not offered (no reason given)")
    sizes = tuple(_SIZE.unpack_from(message, _HEAD.size + i * _SIZE.size)[0] for i in range(count))
    if fmt not in GpuFormat.__members__.values() or tiling not in Tiling.__members__.values():
        raise ValueError(f"GPU images message has format {fmt}, tiling {tiling}")
    described = GpuLayerImages(
        width, height, eyes, images, sizes, device_uuid, driver_uuid,
        GpuFormat(fmt), Tiling(tiling), bool(bits & _DEDICATED),
    )  # fmt: skip
    return GpuImagesOffer(described, tuple(fds), reason)

"""How a layer image goes into a texture: in the format the driver copies fastest.

Uploading a layer image with ``glTexSubImage2D`` is a copy on the CPU inside the driver,
and its cost depends on whether the bytes already have the layout the driver stores:

* NVIDIA stores ``GL_RGBA8`` as R G B A and says so: ``glGetInternalformativ(GL_TEXTURE_2D,
  GL_RGBA8, GL_TEXTURE_IMAGE_FORMAT / GL_TEXTURE_IMAGE_TYPE)`` answers ``GL_RGBA`` +
  ``GL_UNSIGNED_INT_8_8_8_8_REV``. Measured on an H200: RGBA8 uploaded that way 1.3 ms per
  2 x 1280x720, BGRA8 2.9-3.2 ms.
* Mesa's llvmpipe answers ``GL_RGBA`` + ``GL_FLOAT`` (its generic answer, not a byte
  layout), stores an unsized ``GL_RGBA`` texture given BGRA bytes as B G R A, and draws
  the warp from those fastest: BGRA8 stays there.

On a little-endian host ``GL_UNSIGNED_INT_8_8_8_8_REV`` and ``GL_UNSIGNED_BYTE`` describe
the same bytes, so a layer's bytes never change with the type chosen: only the words the
driver is given do. :func:`choose_upload` decides (a pure function, tested with the
answers each driver gives); :func:`driver_preference` asks the current context.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any

from engine.contracts.layer import PixelFormat

# GL enums, as numbers: this module is imported before a process chooses its GL (headless
# or not), so it must not load pyglet.gl.
GL_RGBA = 0x1908
GL_BGRA = 0x80E1
GL_RGBA8 = 0x8058
GL_UNSIGNED_BYTE = 0x1401
GL_UNSIGNED_INT_8_8_8_8 = 0x8035
GL_UNSIGNED_INT_8_8_8_8_REV = 0x8367
GL_FLOAT = 0x1406
GL_TEXTURE_2D = 0x0DE1
GL_TEXTURE_IMAGE_FORMAT = 0x828F
GL_TEXTURE_IMAGE_TYPE = 0x8290

GL_NAMES = {
    GL_RGBA: "GL_RGBA",
    GL_BGRA: "GL_BGRA",
    GL_RGBA8: "GL_RGBA8",
    GL_UNSIGNED_BYTE: "GL_UNSIGNED_BYTE",
    GL_UNSIGNED_INT_8_8_8_8: "GL_UNSIGNED_INT_8_8_8_8",
    GL_UNSIGNED_INT_8_8_8_8_REV: "GL_UNSIGNED_INT_8_8_8_8_REV",
    GL_FLOAT: "GL_FLOAT",
}

#: Types that read a pixel's four bytes in memory order (on this host).
_BYTE_ORDER_TYPES = (
    (GL_UNSIGNED_BYTE, GL_UNSIGNED_INT_8_8_8_8_REV)
    if sys.byteorder == "little"
    else (GL_UNSIGNED_BYTE, GL_UNSIGNED_INT_8_8_8_8)
)


def gl_name(value: int | None) -> str:
    """``GL_RGBA`` for 0x1908; a number the table does not know as hex; ``None`` as "none"."""
    if value is None:
        return "none"
    return GL_NAMES.get(value, f"{value:#06x}")


@dataclass(frozen=True)
class UploadFormat:
    """How one layer's images are stored and uploaded.

    ``internal_format`` is what textures are allocated with (unsized ``GL_RGBA`` for
    BGRA8, which makes Mesa store B G R A; sized ``GL_RGBA8`` for RGBA8);
    ``data_format`` and ``data_type`` describe the layer's bytes to ``glTexSubImage2D``.
    ``reason`` says why, for the ready message and the stats.
    """

    layer_format: PixelFormat
    internal_format: int
    data_format: int
    data_type: int
    reason: str

    def describe(self) -> str:
        """E.g. ``"RGBA8 as GL_RGBA/GL_UNSIGNED_INT_8_8_8_8_REV (the driver's preference)"``."""
        return (
            f"{self.layer_format.name} as {gl_name(self.data_format)}/"
            f"{gl_name(self.data_type)} ({self.reason})"
        )


def _upload(layer_format: PixelFormat, data_type: int, reason: str) -> UploadFormat:
    if layer_format is PixelFormat.BGRA8:
        return UploadFormat(layer_format, GL_RGBA, GL_BGRA, data_type, reason)
    return UploadFormat(layer_format, GL_RGBA8, GL_RGBA, data_type, reason)


def choose_upload(
    preferred: tuple[int, int] | None,
    software: bool,
    layer_format: PixelFormat | None = None,
) -> UploadFormat:
    """The layer format and upload words for a driver that answered ``preferred``.

    ``preferred`` is the driver's ``(GL_TEXTURE_IMAGE_FORMAT, GL_TEXTURE_IMAGE_TYPE)`` for
    ``GL_RGBA8`` (``None`` if it could not be asked); ``software`` is whether the renderer
    draws on the CPU. With ``layer_format`` given (a configured format), only the upload
    words are chosen for it. The rules, in order:

    1. a CPU renderer (Mesa's llvmpipe) takes BGRA8: Mesa stores 8-bit textures that way;
    2. a driver preferring ``GL_RGBA`` or ``GL_BGRA`` in a type that reads bytes in memory
       order takes that format and type;
    3. anything else (no answer, a float or packed type) keeps BGRA8, today's default.

    Never raises.
    """
    fmt, kind = preferred if preferred is not None else (None, None)
    in_byte_order = kind in _BYTE_ORDER_TYPES
    by_driver = {GL_RGBA: PixelFormat.RGBA8, GL_BGRA: PixelFormat.BGRA8}.get(fmt)
    if layer_format is not None:
        if by_driver is layer_format and in_byte_order:
            assert kind is not None
            return _upload(layer_format, kind, "configured; the driver's preference")
        return _upload(layer_format, GL_UNSIGNED_BYTE, "configured")
    answer = f"the driver prefers {gl_name(fmt)}/{gl_name(kind)}"
    if preferred is None:
        answer = "the driver could not be asked"
    if software:
        return _upload(PixelFormat.BGRA8, GL_UNSIGNED_BYTE, "Mesa stores BGRA; " + answer)
    if by_driver is not None and in_byte_order:
        assert kind is not None
        return _upload(by_driver, kind, "the driver's preference")
    return _upload(PixelFormat.BGRA8, GL_UNSIGNED_BYTE, f"default; {answer}")


def driver_preference(gl: Any) -> tuple[int, int] | None:
    """The current context's ``(GL_TEXTURE_IMAGE_FORMAT, GL_TEXTURE_IMAGE_TYPE)`` for
    ``GL_RGBA8`` textures, or ``None`` where it cannot say (GL before 4.3 without
    ``GL_ARB_internalformat_query2``, or a GL error). ``gl`` is the ``pyglet.gl`` module.
    Never raises.
    """
    try:
        if not (
            gl.gl_info.have_version(4, 3)
            or gl.gl_info.have_extension("GL_ARB_internalformat_query2")
        ):
            return None
        answers = []
        for pname in (GL_TEXTURE_IMAGE_FORMAT, GL_TEXTURE_IMAGE_TYPE):
            value = gl.GLint(0)
            gl.glGetInternalformativ(GL_TEXTURE_2D, GL_RGBA8, pname, 1, ctypes.byref(value))
            answers.append(value.value)
        if gl.glGetError() != 0:
            return None
        return answers[0], answers[1]
    except Exception:  # a driver without the entry point: it could not be asked
        return None

"""OpenGL's side of images in GPU memory, used by the compositor and the game alike.

``GL_EXT_memory_object`` + ``GL_EXT_memory_object_fd`` let a GL context use memory that
Vulkan (in another process) allocated and exported as an opaque fd:

1. :func:`import_problem` says whether this context can import at all, and whether it is
   the device the images were made on (the UUIDs of ``glGetUnsignedBytei_vEXT``);
2. :func:`import_texture` makes a memory object (dedicated where the allocation is),
   imports a *duplicate* of the fd (``glImportMemoryFdEXT`` takes ownership of the fd it
   is given and closes it), and gives a texture its storage from it with the exporter's
   tiling and exact size;
3. :class:`ImageFramebuffer` (the game's side) attaches such a texture to a framebuffer
   with a private depth buffer and checks that it is complete: a bad import raises no GL
   error, only an incomplete framebuffer (or, on a forgiving driver, wrong pixels);
4. :func:`wait_for_rendering` is the synchronisation: a fence the producer waits on before
   it publishes, so the compositor never samples half-drawn images. ``glFlush`` alone is
   not enough: on Mesa it let 36-50 of 50 reads in a prototype see the previous frame.
   ``GL_EXT_semaphore_fd`` (offered on NVIDIA) would let the GPU wait instead of the CPU;
   :func:`extension_report` says whether it is offered, but it is not used yet.

The entry points are not in pyglet's bindings; they are looked up with
``eglGetProcAddress`` (headless) or pyglet's GL loader (GLX), once a context exists. All
functions here need the calling thread's GL context current
(:func:`engine.render.context.offscreen_context`).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

from engine.contracts.gpu_layer import GpuFormat, GpuLayerImages, Tiling

GL_TEXTURE_TILING_EXT = 0x9580
GL_DEDICATED_MEMORY_OBJECT_EXT = 0x9581
GL_OPTIMAL_TILING_EXT = 0x9584
GL_LINEAR_TILING_EXT = 0x9585
GL_HANDLE_TYPE_OPAQUE_FD_EXT = 0x9586
GL_NUM_DEVICE_UUIDS_EXT = 0x9596
GL_DEVICE_UUID_EXT = 0x9597
GL_DRIVER_UUID_EXT = 0x9598
GL_UUID_SIZE_EXT = 16

MEMORY_EXTENSIONS = ("GL_EXT_memory_object", "GL_EXT_memory_object_fd")
SEMAPHORE_EXTENSIONS = ("GL_EXT_semaphore", "GL_EXT_semaphore_fd")
_GL_TILING = {Tiling.OPTIMAL: GL_OPTIMAL_TILING_EXT, Tiling.LINEAR: GL_LINEAR_TILING_EXT}
#: How long a producer waits for its own drawing before giving the frame up.
FENCE_TIMEOUT_NS = 1_000_000_000


class ImportRefused(RuntimeError):
    """An image could not be imported or drawn into; the message says why."""


def _gl() -> Any:
    from engine.render.context import gl

    return gl


_UINT, _INT, _ENUM, _SIZEI, _UINT64 = (
    ctypes.c_uint,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_int,
    ctypes.c_uint64,
)
_UINTP, _UBYTEP = ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_ubyte)
#: name -> argument types (all return void).
_SIGNATURES = {
    "glCreateMemoryObjectsEXT": [_SIZEI, _UINTP],
    "glDeleteMemoryObjectsEXT": [_SIZEI, _UINTP],
    "glMemoryObjectParameterivEXT": [_UINT, _ENUM, ctypes.POINTER(ctypes.c_int)],
    "glImportMemoryFdEXT": [_UINT, _UINT64, _ENUM, _INT],
    "glTexStorageMem2DEXT": [_ENUM, _SIZEI, _ENUM, _SIZEI, _SIZEI, _UINT, _UINT64],
    "glGetUnsignedBytevEXT": [_ENUM, _UBYTEP],
    "glGetUnsignedBytei_vEXT": [_ENUM, _UINT, _UBYTEP],
}


class _Functions:
    """The extension's entry points, looked up once per process."""

    _loaded: _Functions | None = None

    def __init__(self) -> None:
        import pyglet

        for name, argtypes in _SIGNATURES.items():
            if pyglet.options["headless"]:
                from pyglet.libs.egl import egl

                address = ctypes.cast(egl.eglGetProcAddress(name.encode()), ctypes.c_void_p).value
                if not address:
                    raise ImportRefused(f"{name} is not available")
                function = ctypes.CFUNCTYPE(None, *argtypes)(address)
            else:
                from pyglet.gl.lib import link_GL

                function = link_GL(name, None, argtypes)
            setattr(self, name, function)

    @classmethod
    def get(cls) -> _Functions:
        if cls._loaded is None:
            cls._loaded = cls()
        return cls._loaded


def offered_extensions() -> set[str]:
    """The GL extensions of the current context, as a set of names."""
    return set(_gl().gl_info.get_extensions())


def context_uuids() -> tuple[list[bytes], bytes]:
    """``(device UUIDs, driver UUID)`` of the current context (``GL_EXT_memory_object``).

    A context may span several devices; an image made on any of them can be imported.
    Raises :class:`ImportRefused` where the extension is not offered.
    """
    if "GL_EXT_memory_object" not in offered_extensions():
        raise ImportRefused("GL_EXT_memory_object is not offered")
    return _read_uuids(_gl())


def _read_uuids(gl: Any) -> tuple[list[bytes], bytes]:
    fns = _Functions.get()
    count = gl.GLint()
    gl.glGetIntegerv(GL_NUM_DEVICE_UUIDS_EXT, ctypes.byref(count))
    devices = []
    for i in range(max(0, count.value)):
        buffer = (ctypes.c_ubyte * GL_UUID_SIZE_EXT)()
        fns.glGetUnsignedBytei_vEXT(GL_DEVICE_UUID_EXT, i, buffer)
        devices.append(bytes(buffer))
    driver = (ctypes.c_ubyte * GL_UUID_SIZE_EXT)()
    fns.glGetUnsignedBytevEXT(GL_DRIVER_UUID_EXT, driver)
    return devices, bytes(driver)


def import_problem(images: GpuLayerImages | None = None) -> str | None:
    """Why the current context cannot import GPU images (``images``' if given), or ``None``.

    Checks the memory-object extensions and, for ``images``, that its device and driver
    UUIDs are this context's. Never raises.
    """
    try:
        offered = offered_extensions()
        missing = [name for name in MEMORY_EXTENSIONS if name not in offered]
        if missing:
            return f"{' and '.join(missing)} not offered by the GL context"
        if images is None:
            return None
        devices, driver = context_uuids()
    except Exception as exc:  # an odd driver: no GPU images, never a failed start
        return f"GL memory objects unusable ({exc.__class__.__name__}: {exc})"
    if images.device_uuid not in devices:
        return (
            f"the images were made on device {images.device_uuid.hex()}, the GL context "
            f"runs on {', '.join(d.hex() for d in devices) or 'no device it names'}"
        )
    if images.driver_uuid != driver:
        return f"driver UUID {images.driver_uuid.hex()} is not the GL context's {driver.hex()}"
    return None


def extension_report() -> dict[str, bool]:
    """Which of the memory and semaphore extensions the current context offers."""
    offered = offered_extensions()
    return {name: name in offered for name in MEMORY_EXTENSIONS + SEMAPHORE_EXTENSIONS}


def _clear_errors(gl: Any) -> None:
    for _ in range(16):  # bounded: a lost context can return errors forever
        if gl.glGetError() == gl.GL_NO_ERROR:
            return


@dataclass
class ImportedTexture:
    """A texture whose storage is imported GPU memory, and the memory object behind it."""

    texture: int
    memory: int
    width: int
    height: int

    def delete(self) -> None:
        """Delete the texture and the memory object (the exporter's memory lives on)."""
        gl = _gl()
        if self.texture:
            gl.glDeleteTextures(1, ctypes.byref(gl.GLuint(self.texture)))
        if self.memory:
            _Functions.get().glDeleteMemoryObjectsEXT(1, ctypes.byref(ctypes.c_uint(self.memory)))
        self.texture = self.memory = 0


def import_texture(
    images: GpuLayerImages, index: int, fd: int, filter: int | None = None
) -> ImportedTexture:
    """A 2D texture on image ``index`` of ``images`` (``images.index(image, eye)``).

    Imports a duplicate of ``fd`` (the caller's fd stays open and theirs). ``filter`` sets
    the texture's min/mag filter (``GL_LINEAR`` by default); the texture clamps to a
    transparent border. Raises :class:`ImportRefused` if the import or the texture storage
    raises a GL error (the duplicate fd is closed then); the framebuffer check is
    :class:`ImageFramebuffer`'s or :func:`check_complete`'s.
    """
    gl, fns = _gl(), _Functions.get()
    if images.format is not GpuFormat.RGBA8:
        raise ImportRefused(f"GPU image format {images.format!r} is not supported")
    _clear_errors(gl)
    memory = ctypes.c_uint()
    fns.glCreateMemoryObjectsEXT(1, ctypes.byref(memory))
    imported = ImportedTexture(0, memory.value, images.width, images.height)
    if images.dedicated:
        fns.glMemoryObjectParameterivEXT(
            memory.value, GL_DEDICATED_MEMORY_OBJECT_EXT, ctypes.byref(ctypes.c_int(1))
        )
    duplicate = os.dup(fd)
    fns.glImportMemoryFdEXT(
        memory.value, images.sizes[index], GL_HANDLE_TYPE_OPAQUE_FD_EXT, duplicate
    )
    error = gl.glGetError()
    if error != gl.GL_NO_ERROR:
        os.close(duplicate)  # a failed import does not take the fd
        imported.delete()
        raise ImportRefused(f"glImportMemoryFdEXT failed (GL error {error:#x})")
    texture = gl.GLuint()
    gl.glGenTextures(1, ctypes.byref(texture))
    imported.texture = texture.value
    gl.glBindTexture(gl.GL_TEXTURE_2D, texture.value)
    gl.glTexParameteri(gl.GL_TEXTURE_2D, GL_TEXTURE_TILING_EXT, _GL_TILING[images.tiling])
    fns.glTexStorageMem2DEXT(
        gl.GL_TEXTURE_2D, 1, gl.GL_RGBA8, images.width, images.height, memory.value, 0
    )
    filter = gl.GL_LINEAR if filter is None else filter
    for pname, value in (
        (gl.GL_TEXTURE_MIN_FILTER, filter),
        (gl.GL_TEXTURE_MAG_FILTER, filter),
        (gl.GL_TEXTURE_WRAP_S, gl.GL_CLAMP_TO_BORDER),
        (gl.GL_TEXTURE_WRAP_T, gl.GL_CLAMP_TO_BORDER),
    ):
        gl.glTexParameteri(gl.GL_TEXTURE_2D, pname, value)
    gl.glBindTexture(gl.GL_TEXTURE_2D, 0)
    error = gl.glGetError()
    if error != gl.GL_NO_ERROR:
        imported.delete()
        raise ImportRefused(f"glTexStorageMem2DEXT failed (GL error {error:#x})")
    return imported


def check_complete(texture: ImportedTexture) -> None:
    """Attach ``texture`` to a scratch framebuffer and check it is complete.

    The one check that catches an import the driver accepted without an error but cannot
    use. Raises :class:`ImportRefused` if incomplete.
    """
    gl = _gl()
    fbo = gl.GLuint()
    gl.glGenFramebuffers(1, ctypes.byref(fbo))
    try:
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo.value)
        gl.glFramebufferTexture2D(
            gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_TEXTURE_2D, texture.texture, 0
        )
        status = gl.glCheckFramebufferStatus(gl.GL_FRAMEBUFFER)
    finally:
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        gl.glDeleteFramebuffers(1, ctypes.byref(fbo))
    if status != gl.GL_FRAMEBUFFER_COMPLETE:
        raise ImportRefused(f"imported image is not a complete framebuffer (status {status:#x})")


class ImageFramebuffer:
    """A framebuffer drawing into an imported image, with a depth buffer of its own.

    ``depth`` is a depth renderbuffer of the image's size to share between framebuffers
    (one per eye is enough, whatever the ring length); ``None`` makes one that this
    framebuffer owns. ``fbo`` is the GL name to bind. Raises :class:`ImportRefused` if the
    framebuffer is incomplete.
    """

    def __init__(self, texture: ImportedTexture, depth: int | None = None) -> None:
        gl = _gl()
        self.texture = texture
        self.owns_depth = depth is None
        handle = gl.GLuint()
        if depth is None:
            gl.glGenRenderbuffers(1, ctypes.byref(handle))
            depth = handle.value
            gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, depth)
            gl.glRenderbufferStorage(
                gl.GL_RENDERBUFFER, gl.GL_DEPTH_COMPONENT24, texture.width, texture.height
            )
            gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, 0)
        self.depth = depth
        gl.glGenFramebuffers(1, ctypes.byref(handle))
        self.fbo = handle.value
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self.fbo)
        gl.glFramebufferTexture2D(
            gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_TEXTURE_2D, texture.texture, 0
        )
        gl.glFramebufferRenderbuffer(
            gl.GL_FRAMEBUFFER, gl.GL_DEPTH_ATTACHMENT, gl.GL_RENDERBUFFER, depth
        )
        status = gl.glCheckFramebufferStatus(gl.GL_FRAMEBUFFER)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        if status != gl.GL_FRAMEBUFFER_COMPLETE:
            self.delete()
            raise ImportRefused(
                f"imported image is not a complete framebuffer (status {status:#x})"
            )

    def delete(self) -> None:
        """Delete the framebuffer (and the depth buffer if it owns it); not the texture."""
        gl = _gl()
        if self.fbo:
            gl.glDeleteFramebuffers(1, ctypes.byref(gl.GLuint(self.fbo)))
        if self.owns_depth and self.depth:
            gl.glDeleteRenderbuffers(1, ctypes.byref(gl.GLuint(self.depth)))
        self.fbo = self.depth = 0


def wait_for_rendering(timeout_ns: int = FENCE_TIMEOUT_NS) -> None:
    """Block until every GL command issued so far has finished on the GPU.

    A fence and a client wait (with the flush the wait needs): what a producer does
    before publishing an image that another process samples. Raises ``TimeoutError`` if
    the GPU has not finished within ``timeout_ns`` (a hung shader), ``RuntimeError`` if
    the wait failed.
    """
    gl = _gl()
    sync = gl.glFenceSync(gl.GL_SYNC_GPU_COMMANDS_COMPLETE, 0)
    try:
        result = gl.glClientWaitSync(sync, gl.GL_SYNC_FLUSH_COMMANDS_BIT, timeout_ns)
    finally:
        gl.glDeleteSync(sync)
    if result == gl.GL_TIMEOUT_EXPIRED:
        raise TimeoutError(f"the GPU did not finish drawing within {timeout_ns / 1e6:g} ms")
    if result not in (gl.GL_ALREADY_SIGNALED, gl.GL_CONDITION_SATISFIED):
        raise RuntimeError(f"glClientWaitSync failed ({result:#x})")


class ImportedImages:
    """Every image of a layer imported into the current context: ``textures[image][eye]``.

    Raises :class:`ImportRefused` (after deleting what was imported) if the context
    cannot import these images (:func:`import_problem`), ``fds`` does not hold one fd per
    image, or any import fails its framebuffer check. ``filter`` as :func:`import_texture`.
    """

    def __init__(
        self, images: GpuLayerImages, fds: tuple[int, ...], filter: int | None = None
    ) -> None:
        problem = import_problem(images)
        if problem:
            raise ImportRefused(problem)
        if len(fds) != images.count:
            raise ImportRefused(f"{len(fds)} fds for {images.count} images")
        self.images = images
        self.textures: list[list[ImportedTexture]] = []
        try:
            for image in range(images.images):
                row = []
                self.textures.append(row)
                for eye in range(images.eyes):
                    index = images.index(image, eye)
                    texture = import_texture(images, index, fds[index], filter)
                    row.append(texture)
                    check_complete(texture)
        except BaseException:
            self.delete()
            raise

    def names(self, image: int) -> list[int]:
        """The GL texture names of ``image``, one per eye."""
        return [t.texture for t in self.textures[image]]

    def delete(self) -> None:
        for row in self.textures:
            for texture in row:
                texture.delete()
        self.textures = []


class GpuLayerTargets:
    """The producer's side: every image of a layer imported, each with a framebuffer.

    ``framebuffers(image)`` are that ring image's framebuffers, one per eye, each with
    the eye's depth buffer (one per eye, shared by the ring: only one image is drawn at a
    time). Raises :class:`ImportRefused` as :class:`ImportedImages` does, or if a
    framebuffer is incomplete (everything made so far is deleted first).
    """

    def __init__(self, images: GpuLayerImages, fds: tuple[int, ...]) -> None:
        gl = _gl()
        self.imported = ImportedImages(images, fds)
        self.images = images
        self._framebuffers: list[list[ImageFramebuffer]] = []
        self._depths: list[int] = []
        try:
            for _ in range(images.eyes):
                depth = gl.GLuint()
                gl.glGenRenderbuffers(1, ctypes.byref(depth))
                self._depths.append(depth.value)
                gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, depth.value)
                gl.glRenderbufferStorage(
                    gl.GL_RENDERBUFFER, gl.GL_DEPTH_COMPONENT24, images.width, images.height
                )
            gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, 0)
            for row in self.imported.textures:
                self._framebuffers.append(
                    [ImageFramebuffer(t, self._depths[e]) for e, t in enumerate(row)]
                )
        except BaseException:
            self.delete()
            raise

    def framebuffers(self, image: int) -> list[ImageFramebuffer]:
        """Ring image ``image``'s framebuffers, one per eye (left first)."""
        return self._framebuffers[image]

    def read(self, image: int) -> list[Any]:
        """A copy of ring image ``image``: one ``(height, width, 4)`` RGBA uint8 array per
        eye, rows bottom-to-top (for captures and tests; it stalls the GPU)."""
        import numpy as np

        gl, images = _gl(), self.images
        eyes = []
        gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
        for target in self._framebuffers[image]:
            out = np.empty((images.height, images.width, 4), np.uint8)
            gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, target.fbo)
            gl.glReadPixels(
                0, 0, images.width, images.height, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE,
                ctypes.c_void_p(out.ctypes.data),
            )  # fmt: skip
            eyes.append(out)
        gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, 0)
        return eyes

    def delete(self) -> None:
        """Delete the framebuffers, depth buffers and imports. Idempotent."""
        gl = _gl()
        for row in self._framebuffers:
            for target in row:
                target.delete()
        self._framebuffers = []
        for depth in self._depths:
            gl.glDeleteRenderbuffers(1, ctypes.byref(gl.GLuint(depth)))
        self._depths = []
        self.imported.delete()

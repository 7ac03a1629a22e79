"""Draw the world once per eye into offscreen framebuffers and read each eye back.

One frame, as :meth:`Renderer.render` does it:

1. gather every entity with ``Transform``, ``Mesh`` and ``Material`` (one query), compute
   all model and normal matrices in one vectorised numpy pass, sort by shader and mesh;
2. for each eye: bind that eye's framebuffer (8-bit colour + 24-bit depth), clear, set the
   per-eye uniforms once per program, then per entity set model, normal matrix and colour
   and draw its indexed triangles;
3. the pixels go to the caller's destination: a writable C-contiguous ``(height, width,
   4)`` uint8 numpy array or a raw address (e.g. a slot of a shared-memory layer), rows
   bottom-to-top as GL stores them, one of two ways (``readback``):

   * ``"pbo"``: each eye's ``glReadPixels`` goes into a pixel-buffer object, a fence
     follows, and the GPU copies while the CPU goes on; :meth:`Renderer.read` waits for
     the fence (bounded), maps the buffer once and copies it into the destination. No
     ``glFinish``, and the GPU is never left idle waiting for the CPU to take the pixels
     (synchronous ``glReadPixels`` into client memory cost 0.98 ms per 2 x 1280x720 on an
     H200, the GPU stalled throughout).
   * ``"sync"``: ``glFinish``, then ``glReadPixels`` straight into the destination.
     On a CPU renderer (llvmpipe) this is one copy where the buffer makes two, so
     ``"auto"`` takes it there and the buffer on a GPU.

:meth:`Renderer.render` does both steps; :meth:`Renderer.draw` and :meth:`Renderer.read`
split them, so a caller can do other work while the GPU copies. Instancing (one draw per
mesh and shader, per-entity data in an instance buffer) would remove the per-entity
uniform calls; it needs user shaders to read model matrices from attributes, so it waits
until scenes are big enough to need it.
"""

from __future__ import annotations

import ctypes
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# context first: it picks headless EGL before pyglet.gl is loaded by anyone.
from engine.render.context import gl, offscreen_context

# isort: split
from pyglet.graphics.shader import ShaderProgram

from engine.pose.base import EyeView
from engine.render.camera import (
    DEFAULT_FAR,
    DEFAULT_NEAR,
    model_matrices,
    normal_matrices,
    projection_matrix,
    view_matrix,
)
from engine.render.components import Material, Mesh, Transform
from engine.render.meshes import GpuMesh, MeshBuffers, _ignore
from engine.render.shaders import ShaderLibrary
from engine.render.textures import TextureCache

#: A place one eye's pixels go: a numpy array (h, w, 4) uint8, or an address of h*w*4 bytes.
Destination = np.ndarray | int

#: Towards the light (world space): from above, a little right and in front.
DEFAULT_LIGHT_DIRECTION = (0.3, 1.0, 0.5)

#: How pixels come back from the GPU: see the module docstring.
READBACKS = ("auto", "pbo", "sync")
#: How long :meth:`Renderer.render` waits for a frame's fence before it gives up.
RENDER_TIMEOUT_NS = 2_000_000_000


class DrawableWorld(Protocol):
    """What the renderer needs of a world: esper's ``get_components`` (or the module)."""

    def get_components(self, *component_types: type) -> list[tuple[int, tuple[Any, ...]]]: ...


@dataclass(frozen=True)
class RenderTimings:
    """Where one frame's time went, in nanoseconds of wall clock on the render thread.

    ``draw_ns``: gathering the scene and issuing every eye's draws; with the ``"sync"``
    readback also waiting for them (``glFinish``), with ``"pbo"`` also issuing the
    copies into the pixel buffer. ``readback_ns``: from then until every eye is in its
    destination (with ``"pbo"``: waiting for the fence, mapping, copying); ``wait_ns`` is
    the part of it spent waiting for the fence (0 with ``"sync"``). ``drawn``: entities
    drawn per eye (those skipped for an unloadable mesh are not counted).
    """

    draw_ns: int
    readback_ns: int
    drawn: int
    wait_ns: int = 0


class _EyeTarget:
    """One eye's framebuffer: an 8-bit colour texture and a depth renderbuffer.

    The colour is stored in the order frames are read back in (``bgra``), so that
    ``glReadPixels`` is a plain copy: Mesa keeps a sized ``GL_RGBA8`` as RGBA and an
    unsized ``GL_RGBA`` given BGRA data as BGRA.
    """

    def __init__(self, width: int, height: int, bgra: bool = False) -> None:
        handle = gl.GLuint()
        gl.glGenFramebuffers(1, ctypes.byref(handle))
        self.fbo = handle.value
        gl.glGenTextures(1, ctypes.byref(handle))
        self.color = handle.value
        gl.glGenRenderbuffers(1, ctypes.byref(handle))
        self.depth = handle.value
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self.fbo)
        gl.glBindTexture(gl.GL_TEXTURE_2D, self.color)
        internal, data = (gl.GL_RGBA, gl.GL_BGRA) if bgra else (gl.GL_RGBA8, gl.GL_RGBA)
        gl.glTexImage2D(
            gl.GL_TEXTURE_2D, 0, internal, width, height, 0, data, gl.GL_UNSIGNED_BYTE, None
        )
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MIN_FILTER, gl.GL_NEAREST)
        gl.glBindTexture(gl.GL_TEXTURE_2D, 0)
        gl.glFramebufferTexture2D(
            gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_TEXTURE_2D, self.color, 0
        )
        gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, self.depth)
        gl.glRenderbufferStorage(gl.GL_RENDERBUFFER, gl.GL_DEPTH_COMPONENT24, width, height)
        gl.glFramebufferRenderbuffer(
            gl.GL_FRAMEBUFFER, gl.GL_DEPTH_ATTACHMENT, gl.GL_RENDERBUFFER, self.depth
        )
        status = gl.glCheckFramebufferStatus(gl.GL_FRAMEBUFFER)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        if status != gl.GL_FRAMEBUFFER_COMPLETE:
            self.delete()
            raise RuntimeError(f"eye framebuffer {width}x{height} incomplete (status {status:#x})")

    def delete(self) -> None:
        gl.glDeleteFramebuffers(1, ctypes.byref(gl.GLuint(self.fbo)))
        gl.glDeleteTextures(1, ctypes.byref(gl.GLuint(self.color)))
        gl.glDeleteRenderbuffers(1, ctypes.byref(gl.GLuint(self.depth)))


@dataclass
class DrawnFrame:
    """A frame drawn by :meth:`Renderer.draw` whose pixels :meth:`Renderer.read` takes.

    With the ``"pbo"`` readback (``through_buffer``), the pixels are in ring buffer
    ``buffer`` once ``fence`` has signalled; ``fence`` is ``None`` once they were read.
    """

    eyes: int
    draw_ns: int
    drawn: int
    through_buffer: bool = False
    buffer: int = 0
    fence: Any = None


class _PixelBuffers:
    """Pixel-pack buffers for the ``"pbo"`` readback: a ring of two, each holding every eye.

    Two, so that a frame whose fence never signalled (given up on by the caller) does not
    block the next one from reading back. GL thread only.
    """

    def __init__(self, eye_bytes: int, eyes: int, count: int = 2) -> None:
        self.eye_bytes, self.eyes = eye_bytes, eyes
        names = (gl.GLuint * count)()
        gl.glGenBuffers(count, names)
        self.names = list(names)
        self.fences: list[Any] = [None] * count
        self.next = 0
        for name in self.names:
            gl.glBindBuffer(gl.GL_PIXEL_PACK_BUFFER, name)
            gl.glBufferData(gl.GL_PIXEL_PACK_BUFFER, eye_bytes * eyes, None, gl.GL_STREAM_READ)
        gl.glBindBuffer(gl.GL_PIXEL_PACK_BUFFER, 0)

    def take(self) -> int:
        """The next buffer of the ring; a fence still pending on it is dropped."""
        index = self.next
        self.next = (index + 1) % len(self.names)
        self.release(index)
        return index

    def release(self, index: int) -> None:
        if self.fences[index] is not None:
            gl.glDeleteSync(self.fences[index])
            self.fences[index] = None

    def delete(self) -> None:
        for index in range(len(self.names)):
            self.release(index)
        names = (gl.GLuint * len(self.names))(*self.names)
        gl.glDeleteBuffers(len(self.names), names)


class _ProgramSlots:
    """Uniform and attribute locations of one linked program, looked up once."""

    UNIFORMS = (
        "u_model",
        "u_view",
        "u_projection",
        "u_normal_matrix",
        "u_color",
        "u_light_direction",
        "u_ambient",
        "u_time",
        "u_camera_position",
        "u_texture",
    )

    def __init__(self, program: ShaderProgram) -> None:
        self.program_id = program.id  # not the program: the cache holding us is weak on it
        uniforms = program.uniforms
        for name in self.UNIFORMS:
            setattr(self, name, uniforms[name]["location"] if name in uniforms else -1)
        attributes = program.attributes
        self.position = attributes.get("position", {}).get("location", -1)
        self.normal = attributes.get("normal", {}).get("location", -1)
        self.texcoord = attributes.get("texcoord", {}).get("location", -1)


def _mat4(m: np.ndarray) -> ctypes.Array:
    return (gl.GLfloat * 16).from_buffer(np.ascontiguousarray(m, dtype=np.float32))


_FLOAT_P = ctypes.POINTER(gl.GLfloat)


def _row_pointers(rows: np.ndarray) -> ctypes.Array:
    """A ``float*`` to each row of a C-contiguous float32 array, written in one numpy pass.

    Indexing the result gives a pointer the GL functions accept, about 10x cheaper than a
    ctypes array per row. The pointers do not keep ``rows`` alive: the caller must.
    """
    pointers = (_FLOAT_P * len(rows))()
    stride = rows[0].nbytes
    addresses = rows.ctypes.data + np.arange(len(rows), dtype=np.uintp) * stride
    np.frombuffer(pointers, dtype=np.uintp)[:] = addresses
    return pointers


@dataclass
class _DrawList:
    """One frame's draws, grouped by program, and the arrays their pointers point into."""

    batches: list[tuple[_ProgramSlots, list]]
    drawn: int
    keep_alive: tuple[np.ndarray, ...]


class Renderer:
    """Draws a world's meshes for each eye and reads the pixels back to the caller.

    All methods run on the thread owning the GL context (the first call makes the shared
    offscreen context current on the calling thread). Attributes that may change between
    frames: ``clear_color`` (RGBA 0..1; premultiplied, as layers are, if alpha is below 1),
    ``light_direction`` (towards the light, any length), ``ambient`` (0..1), ``near``/``far``
    (clip planes, metres).

    Example:
        >>> renderer = Renderer(1280, 720, ShaderLibrary())                 # doctest: +SKIP
        >>> left = np.empty((720, 1280, 4), np.uint8); right = left.copy()   # doctest: +SKIP
        >>> renderer.render(esper, sample.eyes, (left, right))              # doctest: +SKIP
    """

    def __init__(
        self,
        width: int,
        height: int,
        shaders: ShaderLibrary,
        *,
        clear_color: Sequence[float] = (0.05, 0.05, 0.08, 1.0),
        light_direction: Sequence[float] = DEFAULT_LIGHT_DIRECTION,
        ambient: float = 0.25,
        bgra: bool = False,
        readback: str = "auto",
        project_dir: Path | None = None,
        report: Callable[[str], None] = _ignore,
    ) -> None:
        """Raises ``ValueError`` for a non-positive size (or one beyond the GL limit) or a
        ``readback`` not in :data:`READBACKS`.

        Mesh and texture paths resolve from ``project_dir`` (default: the shader library's
        project; the working directory if it has none). ``report(message)`` hears about
        assets that fail to load.

        ``bgra`` writes frames B G R A (a BGRA8 layer) instead of R G B A. ``readback`` is
        ``"pbo"``, ``"sync"`` or ``"auto"`` (see the module docstring); the choice made is
        in :attr:`readback`.
        """
        if width <= 0 or height <= 0:
            raise ValueError(f"render size must be positive, got {width}x{height}")
        if readback not in READBACKS:
            raise ValueError(f"readback must be one of {READBACKS}, got {readback!r}")
        offscreen_context()
        if readback == "auto":
            renderer = gl.gl_info.get_renderer().lower()
            software = any(name in renderer for name in ("llvmpipe", "softpipe", "swrast"))
            readback = "sync" if software else "pbo"
        self.readback = readback
        limit = gl.GLint()
        gl.glGetIntegerv(gl.GL_MAX_RENDERBUFFER_SIZE, ctypes.byref(limit))
        if max(width, height) > limit.value:
            raise ValueError(f"render size {width}x{height} exceeds GL limit {limit.value}")
        self.width, self.height = width, height
        self.bgra = bgra
        self._read_format = gl.GL_BGRA if bgra else gl.GL_RGBA
        self.shaders = shaders
        self.clear_color = tuple(clear_color)
        self.light_direction = tuple(light_direction)
        self.ambient = ambient
        self.near, self.far = DEFAULT_NEAR, DEFAULT_FAR
        self.project_dir = project_dir if project_dir is not None else shaders.project_dir
        self.report = report
        self.meshes = MeshBuffers(self.project_dir, report)
        self.textures = TextureCache(self.project_dir, report)
        self._targets: list[_EyeTarget] = []
        self._buffers: _PixelBuffers | None = None
        # Locations per linked program; a swapped-out program drops out by itself.
        self._slots: weakref.WeakKeyDictionary[ShaderProgram, _ProgramSlots] = (
            weakref.WeakKeyDictionary()
        )

    def queue_asset_change(self, path: Path | str, event_time_ns: int = 0) -> None:
        """Note that an asset file (OBJ, PNG) changed on disk; any thread, cheap.

        Files no entity uses are ignored. The change is taken up at the next frame: a
        texture is read again then, a mesh is parsed off the frame and swapped in when
        ready; a broken file keeps the last good one (reported once).
        """
        self.meshes.queue_change(path, event_time_ns)
        self.textures.queue_change(path, event_time_ns)

    # -- per frame --------------------------------------------------------------------
    def render(
        self,
        world: DrawableWorld,
        eyes: Sequence[EyeView],
        destinations: Sequence[Destination],
        *,
        time_s: float = 0.0,
    ) -> RenderTimings:
        """Draw ``world`` once per eye and read eye ``i`` into ``destinations[i]``.

        ``time_s`` reaches shaders as ``u_time``. Raises ``ValueError`` (before drawing
        anything) if the counts differ or a numpy destination is not a writable
        C-contiguous ``(height, width, 4)`` uint8 array; an int is trusted to address
        ``width * height * 4`` writable bytes. Entities whose mesh cannot be loaded are
        skipped (reported once); an unknown shader name draws with ``basic``.
        """
        if len(eyes) != len(destinations):
            raise ValueError(f"{len(eyes)} eyes but {len(destinations)} destinations")
        for destination in destinations:
            self._address(destination)
        frame = self.draw(world, eyes, time_s=time_s)
        timings = self.read(frame, destinations, RENDER_TIMEOUT_NS)
        if timings is None:
            raise RuntimeError(f"the GPU did not finish a frame in {RENDER_TIMEOUT_NS / 1e9} s")
        return timings

    def draw(
        self, world: DrawableWorld, eyes: Sequence[EyeView], *, time_s: float = 0.0
    ) -> DrawnFrame:
        """Draw ``world`` once per eye and start the readback; :meth:`read` finishes it.

        Entities whose mesh cannot be loaded are
        skipped (reported once); an unknown shader name draws with ``basic``.
        """
        t0 = time.perf_counter_ns()
        self._prepare(len(eyes))
        draw_list = self._gather(world)
        for eye, target in zip(eyes, self._targets, strict=False):
            self._draw_eye(eye, target, draw_list.batches, time_s)
        frame = DrawnFrame(len(eyes), 0, draw_list.drawn)
        if self.readback == "pbo":
            buffers = self._pixel_buffers(len(eyes))
            index = buffers.take()
            gl.glBindBuffer(gl.GL_PIXEL_PACK_BUFFER, buffers.names[index])
            gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
            for i, target in enumerate(self._targets[: len(eyes)]):
                gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, target.fbo)
                offset = i * buffers.eye_bytes  # an offset into the bound buffer
                gl.glReadPixels(
                    0, 0, self.width, self.height, self._read_format, gl.GL_UNSIGNED_BYTE, offset
                )
            # Unbound at once: a later glReadPixels anywhere in this context would otherwise
            # write into the buffer instead of its own destination.
            gl.glBindBuffer(gl.GL_PIXEL_PACK_BUFFER, 0)
            gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
            fence = gl.glFenceSync(gl.GL_SYNC_GPU_COMMANDS_COMPLETE, 0)
            buffers.fences[index] = fence
            gl.glFlush()  # the GPU starts now, not when the fence is first waited on
            frame.through_buffer, frame.buffer, frame.fence = True, index, fence
        else:
            gl.glFinish()
        frame.draw_ns = time.perf_counter_ns() - t0
        return frame

    def read(
        self, frame: DrawnFrame, destinations: Sequence[Destination], timeout_ns: int
    ) -> RenderTimings | None:
        """Copy ``frame``'s eye ``i`` into ``destinations[i]``; its timings, or ``None``.

        With the ``"pbo"`` readback, waits at most ``timeout_ns`` for the frame's fence and
        returns ``None`` if it did not signal (a hung or lost GPU: nothing was copied; the
        frame may be read again later). Raises ``ValueError`` (before copying anything) if
        the counts differ or a destination is not one :meth:`render` accepts, and for a
        ``"pbo"`` frame already read or whose buffer a later :meth:`draw` took (the ring
        has two: read a frame before drawing the one after next).
        """
        if frame.eyes != len(destinations):
            raise ValueError(f"{frame.eyes} eyes but {len(destinations)} destinations")
        addresses = [self._address(d) for d in destinations]
        t0 = time.perf_counter_ns()
        if not frame.through_buffer:
            gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
            for address, target in zip(addresses, self._targets, strict=False):
                gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, target.fbo)
                gl.glReadPixels(
                    0, 0, self.width, self.height, self._read_format, gl.GL_UNSIGNED_BYTE, address
                )
            gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
            waited = 0
        else:
            waited = self._copy_from_buffer(frame, addresses, timeout_ns)
            if waited is None:
                return None
        return RenderTimings(frame.draw_ns, time.perf_counter_ns() - t0, frame.drawn, waited)

    def _pixel_buffers(self, eyes: int) -> _PixelBuffers:
        eye_bytes = self.width * self.height * 4
        buffers = self._buffers
        if buffers is None or buffers.eyes < eyes or buffers.eye_bytes != eye_bytes:
            if buffers is not None:
                buffers.delete()
            buffers = self._buffers = _PixelBuffers(eye_bytes, eyes)
        return buffers

    def _copy_from_buffer(
        self, frame: DrawnFrame, addresses: list[int], timeout_ns: int
    ) -> int | None:
        """Wait for the frame's fence and copy it out: the ns waited, or ``None``."""
        buffers = self._buffers
        if frame.fence is None:
            raise ValueError("this frame was read already")
        if buffers is None or buffers.fences[frame.buffer] is not frame.fence:
            raise ValueError("a later frame took this frame's pixel buffer: it can't be read")
        t0 = time.perf_counter_ns()
        status = gl.glClientWaitSync(frame.fence, gl.GL_SYNC_FLUSH_COMMANDS_BIT, max(0, timeout_ns))
        waited = time.perf_counter_ns() - t0
        if status not in (gl.GL_ALREADY_SIGNALED, gl.GL_CONDITION_SATISFIED):
            return None  # GL_TIMEOUT_EXPIRED, or GL_WAIT_FAILED on a lost context
        buffers.release(frame.buffer)
        frame.fence = None
        size = buffers.eye_bytes * frame.eyes
        gl.glBindBuffer(gl.GL_PIXEL_PACK_BUFFER, buffers.names[frame.buffer])
        try:
            mapped = gl.glMapBufferRange(gl.GL_PIXEL_PACK_BUFFER, 0, size, gl.GL_MAP_READ_BIT)
            base = ctypes.cast(mapped, ctypes.c_void_p).value
            if not base:
                return None  # a lost context maps nothing
            try:
                for i, address in enumerate(addresses):
                    ctypes.memmove(address, base + i * buffers.eye_bytes, buffers.eye_bytes)
            finally:
                gl.glUnmapBuffer(gl.GL_PIXEL_PACK_BUFFER)
        finally:
            gl.glBindBuffer(gl.GL_PIXEL_PACK_BUFFER, 0)
        return waited

    def render_to_framebuffers(
        self, world: DrawableWorld, eyes: Sequence[EyeView], framebuffers: Sequence[Any],
        *, time_s: float = 0.0,
    ) -> RenderTimings:  # fmt: skip
        """Draw ``world`` once per eye straight into ``framebuffers[i].fbo``; no readback.

        For layer images in GPU memory (:class:`engine.gpu.gl_memory.GpuLayerTargets`):
        each framebuffer needs a colour and a depth attachment of the renderer's size. The
        drawing is only queued when this returns (``draw_ns`` is the CPU's share); wait
        for it (:func:`engine.gpu.gl_memory.wait_for_rendering`) before publishing.
        Raises ``ValueError`` if the counts differ.
        """
        if len(eyes) != len(framebuffers):
            raise ValueError(f"{len(eyes)} eyes but {len(framebuffers)} framebuffers")
        t0 = time.perf_counter_ns()
        self._prepare(0)
        draw_list = self._gather(world)
        for eye, target in zip(eyes, framebuffers, strict=True):
            self._draw_eye(eye, target, draw_list.batches, time_s)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        return RenderTimings(time.perf_counter_ns() - t0, 0, draw_list.drawn)

    def _address(self, destination: Destination) -> int:
        if isinstance(destination, np.ndarray):
            shape = (self.height, self.width, 4)
            ok = (
                destination.dtype == np.uint8
                and destination.shape == shape
                and destination.flags.c_contiguous
                and destination.flags.writeable
            )
            if not ok:
                raise ValueError(
                    f"destination must be a writable C-contiguous uint8 array of shape {shape}, "
                    f"got {destination.dtype} {destination.shape}"
                )
            return destination.ctypes.data
        if isinstance(destination, int) and destination != 0:
            return destination
        raise ValueError(
            f"destination must be a numpy array or a non-null address, got {destination!r}"
        )

    def _prepare(self, eye_count: int) -> None:
        offscreen_context()
        while len(self._targets) < eye_count:
            self._targets.append(_EyeTarget(self.width, self.height, self.bgra))
        gl.glEnable(gl.GL_DEPTH_TEST)
        gl.glDepthFunc(gl.GL_LESS)
        gl.glEnable(gl.GL_CULL_FACE)
        gl.glCullFace(gl.GL_BACK)
        gl.glFrontFace(gl.GL_CCW)
        gl.glDisable(gl.GL_BLEND)
        gl.glViewport(0, 0, self.width, self.height)

    def _gather(self, world: DrawableWorld) -> _DrawList:
        """The frame's draw list: per program, ``(gpu mesh, model, normal, colour, texture)``
        items.

        Items are sorted by mesh and texture within a program so consecutive draws share a
        VAO and a texture. Finished mesh parses are uploaded and edited files reloaded first.
        """
        self.meshes.poll()
        self.textures.poll()
        rows = world.get_components(Transform, Mesh, Material)
        if not rows:
            return _DrawList([], 0, ())
        transforms = [t for _, (t, _, _) in rows]
        positions = np.array([t.position for t in transforms], dtype=np.float64).reshape(-1, 3)
        rotations = np.array([t.rotation for t in transforms], dtype=np.float64).reshape(-1, 4)
        scales = np.array([t.scale for t in transforms], dtype=np.float64).reshape(-1, 3)
        models = model_matrices(positions, rotations, scales)
        normals = normal_matrices(rotations, scales)
        colors = np.array([mat.color for _, (_, _, mat) in rows], dtype=np.float32).reshape(-1, 4)
        model_p, normal_p, color_p = (_row_pointers(a) for a in (models, normals, colors))

        by_program: dict[int, tuple[_ProgramSlots, list]] = {}
        drawn = 0
        for i, (_, (_, mesh, material)) in enumerate(rows):
            gpu = self.meshes.get(mesh)
            if gpu is None:
                continue
            slots = self._slots_for(self.shaders.program(material.shader))
            entry = by_program.setdefault(slots.program_id, (slots, []))
            texture = self.textures.get(getattr(material, "texture", None))
            entry[1].append((gpu, model_p[i], normal_p[i], color_p[i], texture))
            drawn += 1
        batches = list(by_program.values())
        for _, items in batches:
            items.sort(key=lambda item: (id(item[0]), item[4]))
        return _DrawList(batches, drawn, (models, normals, colors))

    def _slots_for(self, program: ShaderProgram) -> _ProgramSlots:
        slots = self._slots.get(program)
        if slots is None:
            slots = self._slots[program] = _ProgramSlots(program)
        return slots

    def _draw_eye(self, eye: EyeView, target: _EyeTarget, batches: list, time_s: float) -> None:
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, target.fbo)
        gl.glClearColor(*self.clear_color)
        gl.glClear(gl.GL_COLOR_BUFFER_BIT | gl.GL_DEPTH_BUFFER_BIT)
        view = _mat4(view_matrix(eye.pose))
        projection = _mat4(projection_matrix(eye.fov, self.near, self.far))
        light = np.asarray(self.light_direction, dtype=np.float64)
        light = light / (np.linalg.norm(light) or 1.0)
        set_mat4, set_mat3, set_vec4 = gl.glUniformMatrix4fv, gl.glUniformMatrix3fv, gl.glUniform4fv
        draw, triangles, uint = gl.glDrawElements, gl.GL_TRIANGLES, gl.GL_UNSIGNED_INT
        for slots, items in batches:
            gl.glUseProgram(slots.program_id)
            gl.glUniformMatrix4fv(slots.u_view, 1, gl.GL_TRUE, view)
            gl.glUniformMatrix4fv(slots.u_projection, 1, gl.GL_TRUE, projection)
            gl.glUniform3f(slots.u_light_direction, *light)
            gl.glUniform1f(slots.u_ambient, self.ambient)
            gl.glUniform1f(slots.u_time, time_s)
            gl.glUniform3f(slots.u_camera_position, *eye.pose.position)
            gl.glUniform1i(slots.u_texture, 0)  # texture unit 0
            # Uniform calls with location -1 are no-ops in GL, so absent uniforms cost nothing.
            u_model, u_normal, u_color = slots.u_model, slots.u_normal_matrix, slots.u_color
            bound: GpuMesh | None = None
            bound_texture = -1
            gl.glActiveTexture(gl.GL_TEXTURE0)
            for gpu, model, normal, color, texture in items:
                if gpu is not bound:
                    gl.glBindVertexArray(gpu.vao(slots.position, slots.normal, slots.texcoord))
                    bound = gpu
                if texture != bound_texture:
                    gl.glBindTexture(gl.GL_TEXTURE_2D, texture)
                    bound_texture = texture
                set_mat4(u_model, 1, True, model)
                set_mat3(u_normal, 1, True, normal)
                set_vec4(u_color, 1, color)
                draw(triangles, gpu.index_count, uint, None)
        gl.glBindVertexArray(0)
        gl.glBindTexture(gl.GL_TEXTURE_2D, 0)
        gl.glUseProgram(0)

    # -- lifetime ---------------------------------------------------------------------
    def resize(self, width: int, height: int) -> None:
        """Change the per-eye size; framebuffers are remade on the next frame."""
        if width <= 0 or height <= 0:
            raise ValueError(f"render size must be positive, got {width}x{height}")
        self.close()
        self.width, self.height = width, height

    def close(self) -> None:
        """Free the framebuffers and pixel buffers (meshes and programs stay; they belong
        to the context)."""
        offscreen_context()
        for target in self._targets:
            target.delete()
        self._targets = []
        if self._buffers is not None:
            self._buffers.delete()
            self._buffers = None
        self.meshes.close()  # the parsing worker; a later OBJ starts another

    def forget_gl_objects(self) -> None:
        """Drop every GL object without deleting it: after the context was lost and
        replaced (:func:`engine.render.context.recreate_context`), they no longer exist.
        The next frame makes framebuffers, buffers and meshes again in the new context."""
        self._targets = []
        self._buffers = None
        self.meshes.close()
        self.meshes = MeshBuffers(self.project_dir, self.report)
        self.textures.forget_gl_objects()
        self._slots = weakref.WeakKeyDictionary()

"""The game side of rendering: the renderer, its shaders and the layer it publishes into.

One :class:`RenderStage` lives in the world as a resource (``world.resources[RenderStage]``);
the built-in render system (``systems/render.py``) calls :meth:`RenderStage.draw` once per
frame. Keeping the GL objects here, not in the system module, means the render system can
be edited and hot-swapped like any other while the context, buffers and layer stay put.

Each frame both eyes are drawn with the frame's pose and read back into a free image of
the layer, which is then published with that pose: on a GPU through a pixel-buffer object
and a fence (the stage waits for the fence, bounded by ``readback_timeout_ns``, maps the
buffer and copies it into the image), on a CPU renderer straight into the image (see
:mod:`engine.render.renderer`). The pixels are in the layer's format (RGBA8 or BGRA8: the
compositor chooses, the game follows). Standalone, the stage creates its own layer; under
the compositor, the compositor creates it and hands over its file descriptor.

A GPU reset loses the stage's GL context (the engine asks for contexts that are lost, not
hung, where the driver offers it). :meth:`RenderStage.check_context`, called between
frames, sees it (``glGetGraphicsResetStatus``), makes a new context and every GL object
again (framebuffers, buffers, meshes, the running shader programs), and the game goes on
from the next frame instead of dying with its context.

Where the compositor offers the layer's images in GPU memory
(``RenderSettings.layer_images``) and this GL context can import them, each eye is drawn
straight into the acquired GPU image instead: nothing is read back or uploaded; the stage
waits for the drawing to finish (a fence) before publishing. Where it cannot, it says why
(:attr:`RenderStage.image_path`) and reads back into the shared block as before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.compositor.sinks import save_png, side_by_side
from engine.contracts.gpu_layer import GpuImagesOffer
from engine.contracts.handoff import RunningNow
from engine.contracts.layer import (
    ImageSlot,
    ImageStorage,
    LayerReader,
    LayerSpec,
    LayerWriter,
    PixelFormat,
    create_layer_fd,
)
from engine.loader.history import ProjectHistory
from engine.pose.base import EyeView, Fov, Pose
from engine.render.camera import eyes_from_head


@dataclass(frozen=True)
class RenderSettings:
    """Per-eye size, clear colour, and the default view when no pose source is set.

    ``fov`` defaults to 90° across, with the height that keeps pixels square at this size.
    """

    width: int = 640
    height: int = 480
    clear_color: tuple[float, float, float, float] = (0.05, 0.05, 0.08, 1.0)
    default_head: Pose = Pose((0.0, 1.6, 0.0))
    fov: Fov | None = None
    #: The layer's pixel format; a game under the compositor takes the one it asks for.
    pixel_format: PixelFormat = PixelFormat.RGBA8
    #: How pixels come back: ``"pbo"``, ``"sync"`` or ``"auto"`` (see the renderer).
    readback: str = "auto"
    #: How long a frame's pixels may take to arrive before it is not published (under the
    #: render system's hard limit, so a stuck GPU costs frames, not the system).
    readback_timeout_ns: int = 40_000_000
    #: The layer's images in GPU memory, as the compositor offers them (``None``: none).
    layer_images: GpuImagesOffer | None = None

    @property
    def view_fov(self) -> Fov:
        return self.fov or Fov.for_image(self.width, self.height)

    @classmethod
    def parse_size(cls, text: str) -> RenderSettings:
        """``"1280x720"`` → settings of that per-eye size; ``ValueError`` otherwise."""
        try:
            w, h = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"size must look like 1280x720, got {text!r}") from None
        return cls(width=w, height=h)


@dataclass(frozen=True)
class RenderFrameTimes:
    """The last frame's cost, split as the render bench reports it."""

    draw_ns: int = 0
    readback_ns: int = 0
    publish_ns: int = 0
    drawn: int = 0


class RenderStage:
    """Renderer + shader library + layer writer for one engine.

    Args:
        settings: size and defaults.
        project_dir: where ``shaders/`` live (and their history).
        history: the project's history (shader versions join it).
        layer_fd: a layer block made by the compositor; ``None`` makes one here.
        report: where messages go (a lost context and its recovery).
        reset_status: the context's reset status (default: ``glGetGraphicsResetStatus``; a
            test injects one, as a real reset cannot be provoked on demand).
        attach: take the layer over now. ``False`` makes a warm standby's stage: the
            context, framebuffers, GPU image imports and the layer's mapping are made,
            but the layer is not touched (another game publishes into it) until
            :meth:`attach`; see :meth:`warm_up_standby`.
        running: the game's running-now words: while the GPU draws, they name the shader
            version drawing (see :meth:`engine.render.shaders.ShaderLibrary.drawing`), so
            a shader that hangs the driver is blamed, not the render system.
    """

    def __init__(
        self,
        settings: RenderSettings,
        project_dir: Path | None = None,
        history: ProjectHistory | None = None,
        layer_fd: int | None = None,
        report: Callable[[str], None] = lambda message: None,
        reset_status: Callable[[], int] | None = None,
        attach: bool = True,
        running: RunningNow | None = None,
    ) -> None:
        # Not at the top: importing this module (for RenderSettings) must not load GL.
        from engine.render.context import reset_status as context_reset_status
        from engine.render.renderer import Renderer
        from engine.render.shaders import ShaderLibrary

        self.settings = settings
        self.shaders = ShaderLibrary(project_dir, history, report=report)
        self.shaders.running = running
        self.renderer = Renderer(
            settings.width,
            settings.height,
            self.shaders,
            clear_color=settings.clear_color,
            bgra=settings.pixel_format is PixelFormat.BGRA8,
            readback=settings.readback,
            report=report,
        )
        self.spec = LayerSpec(settings.width, settings.height, eyes=2, format=settings.pixel_format)
        self.owns_layer = layer_fd is None
        self.layer_fd = create_layer_fd(self.spec, "game") if layer_fd is None else layer_fd
        self.gpu_targets, self.image_path = _import_layer_images(settings.layer_images, self.spec)
        storage = (
            ImageStorage.SHARED_MEMORY if self.gpu_targets is None else ImageStorage.GPU_MEMORY
        )
        self.writer = LayerWriter(self.layer_fd, self.spec, storage, attach=attach)
        self.last_frame = -1  # the frame number last published
        self.last = RenderFrameTimes()
        self.report = report
        self._reset_status = reset_status or context_reset_status
        self.context_lost: str | None = None  # why, until check_context recovers
        self.context_resets = 0
        self.late_readbacks = 0  # frames not published: their pixels did not arrive in time

    def warm_up_standby(self) -> list[str]:
        """For a stage made with ``attach=False``: do the one-time GL work a first frame
        would, without the world and without touching the layer. An empty world is drawn
        into the renderer's own framebuffers and read back, and the project's shader
        programs are compiled ahead (:func:`engine.render.shaders.prebuild`, which records
        nothing). Returns the programs built."""
        from engine.render.shaders import prebuild
        from engine.world.world import World

        scratch = [np.empty(self.spec.shape[1:], np.uint8) for _ in range(self.spec.eyes)]
        self.renderer.render(World(), self.eyes_for(None), scratch)
        return prebuild(self.shaders.project_dir, self.shaders.history)

    def attach(
        self,
        history: ProjectHistory | None,
        report: Callable[[str], None] | None = None,
        running: RunningNow | None = None,
    ) -> None:
        """Take over: a warm standby's stage becomes this game's. Its shader library starts
        afresh on ``history`` (the programs built ahead are taken where the texts match),
        then the layer's header is (re)initialised for this writer. Idempotent for the
        layer."""
        from engine.render.shaders import ShaderLibrary

        if report is not None:
            self.report = report
            self.renderer.report = report
        self.shaders = ShaderLibrary(self.shaders.project_dir, history, report=self.report)
        self.shaders.running = running  # the game's words: a hanging shader is named
        self.renderer.shaders = self.shaders
        self.writer.attach()

    def warm_up(self, world: object) -> None:
        """Draw once without publishing: context, programs and meshes are made now, not
        inside the first frame (where their one-time cost would trip the watchdog)."""
        with self.shaders.drawing():
            if self.gpu_targets is not None:
                # Into the image the first frame draws into again (acquired, so never shown).
                targets = self.gpu_targets.framebuffers(self.writer.acquire().index)
                self.renderer.render_to_framebuffers(world, self.eyes_for(None), targets)
                return
            scratch = [np.empty(self.spec.shape[1:], np.uint8) for _ in range(self.spec.eyes)]
            self.renderer.render(world, self.eyes_for(None), scratch)

    def eyes_for(self, pose_eyes: tuple[EyeView, ...] | None) -> tuple[EyeView, ...]:
        if pose_eyes:
            return pose_eyes
        return eyes_from_head(self.settings.default_head, fov=self.settings.view_fov)

    def draw(self, world: object, frame: int, eyes: tuple[EyeView, ...] | None) -> None:
        """Draw both eyes into a free layer image and publish it with the pose used.

        Skipped (nothing drawn or published) while the context is lost. A frame whose
        pixels do not arrive within ``readback_timeout_ns`` is not published
        (``late_readbacks``); if the context was lost meanwhile, that is recorded for
        :meth:`check_context`.
        """
        if self.context_lost is not None:
            return
        with self.shaders.drawing():  # a hang from here on is blamed on the shader drawing
            self._draw(world, frame, self.eyes_for(eyes))

    def _draw(self, world: object, frame: int, views: tuple[EyeView, ...]) -> None:
        drawn = self.renderer.draw(world, views)
        slot = self.writer.acquire()
        if self.gpu_targets is not None:
            self._draw_into_gpu_image(world, frame, views, slot)
            return
        # Addresses, not views: the layer and the renderer agree on the size by construction.
        addresses = [slot.address(i) for i in range(len(views))]
        timings = self.renderer.read(drawn, addresses, self.settings.readback_timeout_ns)
        if timings is None:
            self.late_readbacks += 1
            self._note_reset()
            return  # the slot stays acquired: the next frame draws into it again
        t0 = time.perf_counter_ns()
        self.writer.publish(slot, frame=frame, eyes=tuple(views), completed_ns=time.monotonic_ns())
        self.last = RenderFrameTimes(
            timings.draw_ns, timings.readback_ns, time.perf_counter_ns() - t0, timings.drawn
        )
        self.last_frame = frame

    def _note_reset(self) -> bool:
        from engine.render.context import GL_NO_ERROR, RESET_STATUS_NAMES

        status = self._reset_status()
        if status != GL_NO_ERROR and self.context_lost is None:
            self.context_lost = RESET_STATUS_NAMES.get(status, f"reset status {status:#x}")
        return self.context_lost is not None

    def check_context(self) -> bool:
        """Between frames: if the GL context was lost, make a new one; whether it did.

        The new context gets every GL object the stage had made again: framebuffers and
        pixel buffers on the next frame, meshes on their next draw, shader programs now
        (from the versions running). Raises ``pyglet.gl.ContextException`` if no new
        context can be made (the process then dies, and its supervisor restarts it).
        """
        if not self._note_reset():
            return False
        from engine.render.context import recreate_context

        self.report(f"render: GL context lost ({self.context_lost}); making a new one")
        recreate_context()
        self.renderer.forget_gl_objects()
        self.shaders.rebuild()
        self.context_resets += 1
        self.context_lost = None
        return True

    def _draw_into_gpu_image(
        self, world: object, frame: int, views: tuple[EyeView, ...], slot: ImageSlot
    ) -> None:
        from engine.gpu.gl_memory import wait_for_rendering

        assert self.gpu_targets is not None
        targets = self.gpu_targets.framebuffers(slot.index)
        timings = self.renderer.render_to_framebuffers(world, views, targets)
        t0 = time.perf_counter_ns()
        # The compositor samples the image as soon as it is published: it must be drawn.
        wait_for_rendering()
        t1 = time.perf_counter_ns()
        self.writer.publish(slot, frame=frame, eyes=tuple(views), completed_ns=time.monotonic_ns())
        self.last = RenderFrameTimes(
            timings.draw_ns + t1 - t0, 0, time.perf_counter_ns() - t1, timings.drawn
        )
        self.last_frame = frame

    def _latest_eyes(self) -> np.ndarray | None:
        """A copy of the newest published frame's eyes, (eyes, h, w, RGBA), rows bottom-up."""
        reader = LayerReader(self.layer_fd)
        try:
            frame = reader.read()
            if frame is None:
                return None
            if frame.pixels is None and self.gpu_targets is not None:
                return np.stack(self.gpu_targets.read(frame.index))  # RGBA already
            if frame.pixels is None:
                return None
            return frame.pixels[..., self.spec.format.rgba_order]
        finally:
            reader.close()

    def latest_image(self) -> np.ndarray | None:
        """The newest published frame, both eyes side by side, top row first (a copy)."""
        eyes = self._latest_eyes()
        return None if eyes is None else side_by_side(eyes)[::-1].copy()

    def capture(self, path: str | Path) -> Path:
        """Write the newest published frame to a PNG (both eyes side by side)."""
        eyes = self._latest_eyes()
        if eyes is None:
            raise RuntimeError("nothing has been rendered yet")
        return save_png(side_by_side(eyes), path)

    def close(self) -> None:
        self.writer.close()
        if self.gpu_targets is not None:
            self.gpu_targets.delete()
            self.gpu_targets = None
        self.renderer.close()
        if self.owns_layer:
            os.close(self.layer_fd)


def _import_layer_images(offer: GpuImagesOffer | None, spec: LayerSpec) -> tuple[object, str]:
    """The offered GPU images imported with framebuffers, or ``None``; and the path taken
    with its reason (``"gpu memory: ..."`` or ``"shared memory: ..."``). Never raises for
    an import the driver refuses: the layer then stays in shared memory."""
    if offer is None:
        return None, "shared memory: no GPU images offered"
    images = offer.images
    if images is None:
        return None, f"shared memory: {offer.reason}"
    if (images.width, images.height, images.eyes, images.images) != (
        spec.width, spec.height, spec.eyes, spec.images,
    ):  # fmt: skip
        return None, f"shared memory: the GPU images do not match the layer ({images})"
    from engine.gpu.gl_memory import GpuLayerTargets, ImportRefused

    try:
        targets = GpuLayerTargets(images, tuple(offer.fds))
    except ImportRefused as exc:
        return None, f"shared memory: cannot import the GPU images ({exc})"
    return targets, f"gpu memory: {images.count} images imported"

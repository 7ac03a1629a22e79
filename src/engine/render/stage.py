"""The game side of rendering: the renderer, its shaders and the layer it publishes into.

One :class:`RenderStage` lives in the world as a resource (``world.resources[RenderStage]``);
the built-in render system (``systems/render.py``) calls :meth:`RenderStage.draw` once per
frame. Keeping the GL objects here, not in the system module, means the render system can
be edited and hot-swapped like any other while the context, buffers and layer stay put.

Each frame both eyes are drawn with the frame's pose and read back straight into a free
image of the layer (no intermediate copy), which is then published with that pose.
Standalone, the stage creates its own layer; under the compositor, the compositor creates
it and hands over its file descriptor.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.compositor.sinks import save_png, side_by_side
from engine.contracts.layer import (
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
    """

    def __init__(
        self,
        settings: RenderSettings,
        project_dir: Path | None = None,
        history: ProjectHistory | None = None,
        layer_fd: int | None = None,
    ) -> None:
        from engine.render.renderer import Renderer
        from engine.render.shaders import ShaderLibrary

        self.settings = settings
        self.shaders = ShaderLibrary(project_dir, history)
        self.renderer = Renderer(
            settings.width,
            settings.height,
            self.shaders,
            clear_color=settings.clear_color,
            bgra=settings.pixel_format is PixelFormat.BGRA8,
        )
        self.spec = LayerSpec(settings.width, settings.height, eyes=2, format=settings.pixel_format)
        self.owns_layer = layer_fd is None
        self.layer_fd = create_layer_fd(self.spec, "game") if layer_fd is None else layer_fd
        self.writer = LayerWriter(self.layer_fd, self.spec)
        self.last_frame = -1  # the frame number last published
        self.last = RenderFrameTimes()

    def warm_up(self, world: object) -> None:
        """Draw once without publishing: context, programs and meshes are made now, not
        inside the first frame (where their one-time cost would trip the watchdog)."""
        scratch = [np.empty(self.spec.shape[1:], np.uint8) for _ in range(self.spec.eyes)]
        self.renderer.render(world, self.eyes_for(None), scratch)

    def eyes_for(self, pose_eyes: tuple[EyeView, ...] | None) -> tuple[EyeView, ...]:
        if pose_eyes:
            return pose_eyes
        return eyes_from_head(self.settings.default_head, fov=self.settings.view_fov)

    def draw(self, world: object, frame: int, eyes: tuple[EyeView, ...] | None) -> None:
        """Draw both eyes into a free layer image and publish it with the pose used."""
        views = self.eyes_for(eyes)
        slot = self.writer.acquire()
        # Addresses, not views: the layer and the renderer agree on the size by construction.
        timings = self.renderer.render(world, views, [slot.address(i) for i in range(len(views))])
        t0 = time.perf_counter_ns()
        self.writer.publish(slot, frame=frame, eyes=tuple(views), completed_ns=time.monotonic_ns())
        self.last = RenderFrameTimes(
            timings.draw_ns, timings.readback_ns, time.perf_counter_ns() - t0, timings.drawn
        )
        self.last_frame = frame

    def _latest_eyes(self) -> np.ndarray | None:
        """A copy of the newest published frame's eyes, (eyes, h, w, RGBA), rows bottom-up."""
        reader = LayerReader(self.layer_fd)
        try:
            frame = reader.read()
            return None if frame is None else frame.pixels[..., self.spec.format.rgba_order]
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
        self.renderer.close()
        if self.owns_layer:
            os.close(self.layer_fd)

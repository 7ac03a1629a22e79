"""The compositor process: its entry point, its GL composer, and the parent's handle on it.

The process never imports or runs user code. What it holds:

* the layers it reads: it creates each block itself (:func:`create_layer_fd`, sealed) and
  sends the fds to its parent over the control socket, which hands them to producers;
  where Vulkan and GL allow, each layer's images in GPU memory too
  (:mod:`engine.compositor.gpu_images`): it allocates them, imports them into its own GL
  context and sends their fds after the block's (or why it could not); it samples them in
  place and never draws into them;
* the pose handoff block, whose fd the parent passes in; the process writes it each frame;
* a control socket (``SOCK_SEQPACKET``, one JSON object per message): ``ready`` once at
  start (priorities granted, GL renderer, the layers' pixel format and how they are
  uploaded), and ``{"op": "stop"}`` answered by the final stats. It is polled without
  blocking once per frame; a parent that goes away (socket closed) stops the compositor
  too.

Start-up order matters: priority first (threads created later inherit it; the GPU
priority is asked for when the GL context is made), then the headless choice, then GL,
then the layers (their pixel format is the one the driver uploads fastest, and their GPU
images go on the GL context's device).
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.compositor.clock import DEFAULT_COMPOSE_LEAD_NS, DisplaySchedule
from engine.compositor.loop import CompositorLoop, LayerDraw
from engine.compositor.priority import (
    gpu_context_priority,
    raise_cpu_priority,
    request_gpu_priority,
)
from engine.compositor.timewarp import fov_tangents, rotation_delta
from engine.compositor.upload import UploadFormat, choose_upload, driver_preference
from engine.contracts.gpu_layer import (
    GpuImagesOffer,
    not_offered,
    recv_gpu_images,
    send_gpu_images,
)
from engine.contracts.handoff import PoseHandoffWriter
from engine.contracts.layer import (
    ImageStorage,
    LayerReader,
    LayerSpec,
    PixelFormat,
    create_layer_fd,
    recv_layer_fd,
    send_layer_fd,
)
from engine.contracts.shm import PassedFd
from engine.pose.base import EyeView, Fov
from engine.render.camera import axis_angle, quaternion_matrix
from engine.scheduler.pacing import MonotonicClock

SPAWN = multiprocessing.get_context("spawn")
MESSAGE_BYTES = 1 << 20  # the stats JSON is a few KiB; a SEQPACKET message must fit whole


@dataclass(frozen=True)
class CompositorConfig:
    """Everything the compositor process is started with (picklable).

    ``layers`` are ``(name, width, height)``, bottom first; each gets 2 eyes and 3 images
    in ``layer_format``; ``None`` (the default) takes the format the driver uploads
    fastest (:func:`engine.compositor.upload.choose_upload`: BGRA8 on Mesa, RGBA8 on
    NVIDIA). Producers read the format from the layer's header.
    ``pose`` is ``"simulated"`` (the scripted headset) or ``"trace:PATH"`` (a recorded
    head trace, looped).
    ``preview``: one more layer after the game layers, with the first one's size, for a
    preview game (candidate code on a copy of the world): named ``"preview"``, its images
    in GPU memory where the others' are. While it publishes, the headset shows it as a
    panel in front of the user and the mirror view splits into live and preview; while it
    does not, nothing changes. It is the first thing left out when time is short.
    ``hud``: the mirror view (window and capture) shows the compositor's frame rate and
    misses and the game's state in its corner (F1 in the window toggles it).
    ``mirror_headless``: without a window, draw the mirror view every frame all the same
    (what a window costs, measured: ``bench/compositor.py --preview``).
    """

    display_hz: float = 90.0
    eye_width: int = 1280
    eye_height: int = 720
    layers: tuple[tuple[str, int, int], ...] = (("game", 1280, 720),)
    layer_format: PixelFormat | None = None
    deadline_periods: float = 2.0
    grace_s: float = 0.5
    compose_lead_ns: int = DEFAULT_COMPOSE_LEAD_NS  # the start; adapted unless adapt_lead=False
    adapt_lead: bool = True
    timing_warmups: int = 2  # untimed frames before the start-up frame is timed (0: none)
    filter: str = "auto"  # "linear", "nearest", or "auto": see GLComposer
    warp: str = "auto"  # "exact", "mesh", or "auto": see GLComposer
    spin_ns: int = 1_000_000
    capture_path: str | None = None
    window: bool = False
    realtime: bool = True
    pose: str = "simulated"
    frames: int | None = None  # stop by itself after this many frames (benchmarks)
    input_script: str | None = None  # scripted input played into the input block
    #: Layer images in GPU memory: "auto" where Vulkan and GL allow it on a GPU (a CPU
    #: renderer keeps shared memory: see gpu_images.CPU_RENDERER_REASON), "on" wherever
    #: they allow it, "off" never.
    gpu_images: str = "auto"
    preview: bool = True
    hud: bool = True
    mirror_headless: bool = False

    @property
    def preview_index(self) -> int | None:
        """The preview layer's index among :meth:`all_layers` (``None``: no preview layer,
        as when ``preview`` is off or there is no game layer to size it from)."""
        return len(self.layers) if self.preview and self.layers else None

    def all_layers(self) -> tuple[tuple[str, int, int], ...]:
        """The game layers, then the preview layer (if any): what the compositor allocates."""
        if self.preview_index is None:
            return self.layers
        _, width, height = self.layers[0]
        return (*self.layers, ("preview", width, height))

    def layer_specs(self, default_format: PixelFormat = PixelFormat.BGRA8) -> list[LayerSpec]:
        """Each layer's spec (the preview's last), in ``layer_format`` or else
        ``default_format``."""
        fmt = self.layer_format or default_format
        return [LayerSpec(width=w, height=h, format=fmt) for _, w, h in self.all_layers()]


# --- control messages -----------------------------------------------------------------


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def recv_message(sock: socket.socket, timeout_s: float | None) -> dict[str, Any] | None:
    """The next JSON message, or ``None`` on timeout. Raises ``ConnectionError`` if closed."""
    sock.settimeout(timeout_s)
    try:
        data = sock.recv(MESSAGE_BYTES)
    except TimeoutError:
        return None
    if not data:
        raise ConnectionError("the other end closed the control socket")
    return json.loads(data)


# --- the GL composer ------------------------------------------------------------------


_TURN_30_DEGREES = quaternion_matrix(axis_angle((0.0, 1.0, 0.0), math.pi / 6))
#: A typical render-to-display turn (a head turning at 90 deg/s over one frame).
_TURN_1_DEGREE = quaternion_matrix(axis_angle((0.0, 1.0, 0.0), math.pi / 180))


@dataclass
class _LayerTextures:
    """Two sets of per-eye textures per layer: the set shown and the set uploaded into.

    One plain 2D texture per eye rather than an array texture: llvmpipe samples 2D
    textures about a fifth faster, and the timewarp pass is the compositor's main cost.
    """

    spec: LayerSpec
    upload: UploadFormat
    textures: list[list[int]]  # [set][eye]
    front: int = 0
    front_key: tuple[int, int] | None = None
    failed_key: tuple[int, int] | None = None
    eyes: tuple[EyeView, ...] = field(default_factory=tuple)
    gpu: Any = None  # the layer's GPU images imported here (ImportedImages), if offered
    gpu_reason: str = "not offered"  # why the layer has GPU images or not
    gpu_index: int | None = None  # the GPU image shown; None: the uploaded set is
    shown_from: str | None = None  # "gpu memory" or "shared memory": the last image's

    def texture(self, eye: int) -> int:
        """The texture shown for ``eye``: the GPU image in place, or the uploaded copy."""
        if self.gpu_index is not None:
            return self.gpu.textures[self.gpu_index][eye].texture
        return self.textures[self.front][eye]


#: GL renderers that draw on the CPU (Mesa's llvmpipe and softpipe).
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast")


def is_software_renderer(renderer: str) -> bool:
    """Whether a ``GL_RENDERER`` string names a CPU renderer."""
    return any(name in renderer.lower() for name in SOFTWARE_RENDERERS)


def preferred_upload() -> UploadFormat:
    """The layer format and upload the current context's driver copies fastest (see
    :func:`engine.compositor.upload.choose_upload`). Needs a current GL context."""
    from engine.render.context import gl

    software = is_software_renderer(gl.gl_info.get_renderer())
    return choose_upload(driver_preference(gl), software)


class GLComposer:
    """Composites layers for two eyes into offscreen textures with the timewarp pass.

    Two ways to warp (``warp``): ``"exact"`` evaluates the homography per pixel (one full
    screen triangle; what a GPU should run), ``"mesh"`` draws screen-aligned cells with an
    affine fit each (:mod:`engine.compositor.meshwarp`), which llvmpipe shades on its
    linear path several times faster. ``"auto"`` takes the mesh on a CPU renderer.
    Sampling (``filter``): ``"linear"`` (smooth) or ``"nearest"`` (sharp; llvmpipe's linear
    path handles bilinear filtering only for axis-aligned cells, so on a CPU renderer
    ``"nearest"`` is what keeps the warp cheap once the head turns). ``"auto"`` takes
    nearest on a CPU renderer, linear on a GPU.

    Layers are blended in order with premultiplied alpha (``ONE, ONE_MINUS_SRC_ALPHA``,
    OpenXR's default): a layer's colour is already multiplied by its alpha, so filtering
    never darkens edges, and a layer drawn opaque (alpha 255) covers what is below.

    Each layer's textures are stored and uploaded as the driver prefers for the layer's
    pixel format (:mod:`engine.compositor.upload`; ``preferred_upload`` is the driver's
    own choice, which the compositor process creates its layers in).

    Each new layer image is uploaded once, into the texture not being shown, and checked
    with the layer's seqlock afterwards; an image the producer overwrote during the upload
    is dropped and the previous one stays on screen (``torn_uploads`` counts them). The
    image stays in the texture after the producer is gone, which is what lets a dead game's
    last frame be reprojected through the grace period.

    The preview layer (``preview_layer``, drawn as a quad: ``LayerDraw.quad``) is drawn
    last in each eye, as a panel in the world (:mod:`engine.compositor.quad`, with the
    exact homography pass, scissored to the panel), from its left-eye image. It is not
    part of :meth:`time_frame` (it is surplus: the start-up lead is the game's).

    The mirror view (the window and the capture) is two halves (:meth:`mirror_halves`):
    the eyes, or, in a frame that had the preview, the left eye as the scene layers left
    it (a window copies it before the panel is drawn, each frame: ``mirror_wanted``; a
    capture draws it again when taken) and the preview's own picture; ``mirror_text``
    says what is written over them (:mod:`engine.compositor.mirror`).
    """

    def __init__(
        self,
        eye_width: int,
        eye_height: int,
        layer_specs: Sequence[LayerSpec],
        filter: str = "auto",
        warp: str = "auto",
        mesh_cell: int | None = None,
        preview_layer: int | None = None,
    ):
        """Raises ``ValueError`` for a ``filter`` or ``warp`` not listed above."""
        if filter not in ("auto", "linear", "nearest"):
            raise ValueError(f"filter must be 'auto', 'linear' or 'nearest', got {filter!r}")
        if warp not in ("auto", "exact", "mesh"):
            raise ValueError(f"warp must be 'auto', 'exact' or 'mesh', got {warp!r}")
        from engine.compositor.fallback import FallbackPass
        from engine.compositor.meshwarp import CELL_PX, MeshTimewarpPass
        from engine.compositor.timewarp import TimewarpPass
        from engine.render.context import gl, offscreen_context

        offscreen_context()
        self.gl = gl
        self.eye_width, self.eye_height = eye_width, eye_height
        software = is_software_renderer(gl.gl_info.get_renderer())
        preference = driver_preference(gl)
        self.preferred_upload = choose_upload(preference, software)
        if filter == "auto":
            filter = "nearest" if software else "linear"
        if warp == "auto":
            warp = "mesh" if software else "exact"
        self.filter, self.warp = filter, warp
        self._filter = gl.GL_LINEAR if filter == "linear" else gl.GL_NEAREST
        eye_format = choose_upload(None, True)  # render targets: BGRA, as ever
        self._eye_textures = [
            self._texture(eye_width, eye_height, gl.GL_LINEAR, gl.GL_CLAMP_TO_EDGE, eye_format)
            for _ in range(2)
        ]
        self._fbos = []
        for texture in self._eye_textures:
            fbo = gl.GLuint()
            gl.glGenFramebuffers(1, ctypes.byref(fbo))
            gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo.value)
            gl.glFramebufferTexture2D(
                gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_TEXTURE_2D, texture, 0
            )
            self._fbos.append(fbo.value)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        # Layers clamp to their (transparent) border: beyond the rendered image the timewarp
        # shows the layers below, not the image's edge pixels smeared outwards.
        border = gl.GL_CLAMP_TO_BORDER
        self._layers = []
        for spec in layer_specs:
            upload = self.preferred_upload
            if spec.format is not upload.layer_format:
                upload = choose_upload(preference, software, spec.format)
            sets = [
                [
                    self._texture(spec.width, spec.height, self._filter, border, upload)
                    for _ in range(spec.eyes)
                ]
                for _ in range(2)
            ]
            self._layers.append(_LayerTextures(spec, upload, sets))
        # One warp pass: the mesh draws its edge cells with its own exact program.
        self.mesh = MeshTimewarpPass(mesh_cell or CELL_PX) if warp == "mesh" else None
        self.timewarp = TimewarpPass() if warp == "exact" else None
        self.fallback = FallbackPass()
        self.preview_layer = preview_layer
        self.quad_pass = TimewarpPass() if preview_layer is not None else None
        self.mirror_wanted = False  # a window shows the mirror view: copy the live eye
        self.mirror_scale = 1.0  # ... at this scale
        self._last_frame: tuple[list[LayerDraw], Any, bool] | None = None
        self.mirror_text: Any = None  # what the mirror view says (mirror.MirrorText)
        self._mirror_view: Any = None  # its drawing in this context (mirror.MirrorView)
        self._mirrors: dict[tuple[int, int], tuple[int, int]] = {}  # size: (texture, fbo)
        # The live eye's copy for the mirror: ((w, h), (texture, fbo)), made on use.
        self._live_copy: tuple[tuple[int, int], tuple[int, int]] | None = None
        self._last_mirror: tuple[int, int] | None = None  # the size render_mirror drew
        self.preview_shown = False  # the last frame had the preview (drawn or shed)
        self.live_copied = False  # ... and the live eye was copied for the mirror then
        self.preview_draws = 0
        self.uploads = 0
        self.torn_uploads = 0
        self.rejected_images = 0
        self.gpu_images_shown = 0
        self.torn_gpu_samples = 0
        self._sampled_gpu: list[LayerDraw] = []  # last frame's GPU images, checked next frame
        self.timed_frame_ns: int | None = None  # what time_frame measured, if it ran

    def _texture(
        self, width: int, height: int, filter: int, wrap: int, upload: UploadFormat
    ) -> int:
        gl = self.gl
        name = gl.GLuint()
        gl.glGenTextures(1, ctypes.byref(name))
        gl.glBindTexture(gl.GL_TEXTURE_2D, name.value)
        # For BGRA8: unsized RGBA described as BGRA bytes; Mesa then stores BGRA, the only
        # 8-bit layout llvmpipe's linear path renders into (22.x), and BGRA8 layer images
        # upload as a plain copy. For RGBA8: sized RGBA8, what NVIDIA copies fastest.
        gl.glTexImage2D(
            gl.GL_TEXTURE_2D, 0, upload.internal_format, width, height, 0,
            upload.data_format, upload.data_type, None,
        )  # fmt: skip
        for pname, value in (
            (gl.GL_TEXTURE_MIN_FILTER, filter),
            (gl.GL_TEXTURE_MAG_FILTER, filter),
            (gl.GL_TEXTURE_WRAP_S, wrap),
            (gl.GL_TEXTURE_WRAP_T, wrap),
        ):
            gl.glTexParameteri(gl.GL_TEXTURE_2D, pname, value)
        gl.glBindTexture(gl.GL_TEXTURE_2D, 0)
        return name.value

    def attach_gpu_images(self, layer_index: int, offer: GpuImagesOffer) -> str | None:
        """Import layer ``layer_index``'s GPU images into this context, to sample in place.

        Returns ``None``, or why they cannot be used (the layer then stays in shared
        memory; nothing is raised for a driver's refusal).
        """
        from engine.gpu.gl_memory import ImportedImages, ImportRefused

        layer = self._layers[layer_index]
        if offer.images is None:
            layer.gpu_reason = offer.reason
            return offer.reason
        spec, images = layer.spec, offer.images
        if (images.width, images.height, images.eyes, images.images) != (
            spec.width, spec.height, spec.eyes, spec.images,
        ):  # fmt: skip
            layer.gpu_reason = f"the GPU images do not match the layer ({images})"
            return layer.gpu_reason
        try:
            layer.gpu = ImportedImages(images, tuple(offer.fds), self._filter)
        except ImportRefused as exc:
            layer.gpu_reason = f"the compositor's GL cannot import them: {exc}"
            return layer.gpu_reason
        layer.gpu_reason = offer.reason or "offered"
        return None

    def _show_gpu_image(self, layer: _LayerTextures, draw: LayerDraw) -> None:
        image = draw.image
        key = (image.index, image.seq)
        spec = getattr(image, "spec", None)
        same_size = spec is not None and spec.shape == layer.spec.shape
        if layer.gpu is None or not same_size or not 0 <= image.index < layer.spec.images:
            # No images of ours, or a header re-describing them: not what we allocated.
            layer.failed_key = key
            self.rejected_images += 1
            return
        # Sampled in place, never copied: the producer does not draw into this image again
        # before it has published two more, which the pacing makes a frame or more away.
        layer.gpu_index, layer.front_key, layer.eyes = image.index, key, tuple(image.eyes)
        layer.shown_from = "gpu memory"
        self.gpu_images_shown += 1

    def _upload(self, draw: LayerDraw) -> None:
        layer, image = self._layers[draw.layer], draw.image
        key = (image.index, image.seq)
        if key in (layer.front_key, layer.failed_key):
            return
        if getattr(image, "storage", None) is ImageStorage.GPU_MEMORY:
            self._show_gpu_image(layer, draw)
            return
        pixels = getattr(image, "pixels", None)
        if pixels is None or pixels.shape != layer.spec.shape or pixels.dtype != np.uint8:
            # The producer re-described the block with another size: not what we allocated.
            layer.failed_key = key
            self.rejected_images += 1
            return
        back = 1 - layer.front
        # A quad layer shows its left eye only: the right one is never uploaded.
        self._upload_pixels(layer, back, pixels, eyes=1 if draw.quad is not None else None)
        # glTexSubImage2D has copied the client memory when it returns: check it is whole.
        if draw.source.still_valid(image):
            layer.front, layer.front_key, layer.eyes = back, key, tuple(image.eyes)
            layer.gpu_index, layer.shown_from = None, "shared memory"
            self.uploads += 1
        else:
            layer.failed_key = key
            self.torn_uploads += 1

    def _upload_pixels(
        self, layer: _LayerTextures, texture_set: int, pixels: np.ndarray, eyes: int | None = None
    ) -> None:
        """Upload the first ``eyes`` eyes (``None``: all) of ``pixels`` into a texture set."""
        gl, spec, upload = self.gl, layer.spec, layer.upload
        gl.glPixelStorei(gl.GL_UNPACK_ALIGNMENT, 1)
        for eye, texture in enumerate(layer.textures[texture_set][:eyes]):
            gl.glBindTexture(gl.GL_TEXTURE_2D, texture)
            gl.glTexSubImage2D(
                gl.GL_TEXTURE_2D, 0, 0, 0, spec.width, spec.height, upload.data_format,
                upload.data_type, ctypes.c_void_p(pixels[eye].ctypes.data),
            )  # fmt: skip
        gl.glBindTexture(gl.GL_TEXTURE_2D, 0)

    def _warp(
        self,
        layer: _LayerTextures,
        texture: int,
        delta: np.ndarray,
        out_tan: tuple[float, float, float, float],
        src_tan: tuple[float, float, float, float],
    ) -> None:
        if self.mesh is not None:
            viewport = (self.eye_width, self.eye_height)
            size = (layer.spec.width, layer.spec.height)
            self.mesh.draw(texture, delta, out_tan, src_tan, viewport, size)
        else:
            assert self.timewarp is not None
            self.timewarp.draw(texture, delta, out_tan, src_tan)

    def time_frame(
        self,
        eyes: tuple[EyeView, EyeView],
        repeats: int = 5,
        warmups: int = 2,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> int:
        """The slowest of ``repeats`` full frames, in ns of ``clock``: every layer
        uploaded and warped by a typical turn.

        What a frame costs before any has run; the compositor starts its compose lead
        from it, so the first frames are not late while the lead adapts. ``warmups``
        untimed frames come first: the first touch of each texture set costs several
        times a steady frame (14.6 ms against 5 ms on an H200), and a lead started from
        that held one layer at half rate. The frames alternate between each layer's two
        texture sets, so that the first real uploads do not fault in texture memory
        nobody has touched yet (that made the frame a layer's images start arriving a
        millisecond slower than any before it). At least 2 frames are timed.
        """
        gl = self.gl
        # Written, not np.zeros: untouched pages all read the one shared zero page.
        blanks = [np.full(layer.spec.shape, 128, np.uint8) for layer in self._layers]
        worst = 0
        warmups, repeats = max(0, warmups), max(2, repeats)
        for repeat in range(warmups + repeats):
            start = clock()
            for i, (layer, blank) in enumerate(zip(self._layers, blanks, strict=True)):
                if i == self.preview_layer:
                    continue  # surplus: not what the lead is started from
                if layer.gpu is None:  # GPU images are sampled in place, never uploaded
                    self._upload_pixels(layer, repeat % 2, blank)
            gl.glBlendFunc(gl.GL_ONE, gl.GL_ONE_MINUS_SRC_ALPHA)
            for e, fbo in enumerate(self._fbos):
                gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo)
                gl.glViewport(0, 0, self.eye_width, self.eye_height)
                gl.glClear(gl.GL_COLOR_BUFFER_BIT)
                tan = fov_tangents(eyes[e].fov)
                for i, layer in enumerate(self._layers):
                    if i == self.preview_layer:
                        continue
                    (gl.glEnable if i else gl.glDisable)(gl.GL_BLEND)
                    texture = (
                        layer.textures[repeat % 2][0]
                        if layer.gpu is None
                        else layer.gpu.textures[repeat % layer.spec.images][0].texture
                    )
                    self._warp(layer, texture, _TURN_1_DEGREE, tan, tan)
            gl.glDisable(gl.GL_BLEND)
            gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
            self.finish()
            if repeat >= warmups:
                worst = max(worst, clock() - start)
        self.timed_frame_ns = worst
        return worst

    def compose(
        self, draws: Sequence[LayerDraw], eyes: tuple[EyeView, EyeView], fallback: bool
    ) -> None:
        gl = self.gl
        self._check_gpu_samples()
        quad = next((d for d in draws if d.quad is not None), None)
        for draw in draws:
            if not draw.shed:  # a shed preview costs nothing: the mirror keeps its last
                self._upload(draw)
        self.preview_shown = quad is not None and self._layers[quad.layer].front_key is not None
        self.live_copied = False
        self._last_frame = (list(draws), eyes, fallback)
        gl.glBlendFunc(gl.GL_ONE, gl.GL_ONE_MINUS_SRC_ALPHA)
        for e, (eye, fbo) in enumerate(zip(eyes, self._fbos, strict=True)):
            out_tan = fov_tangents(eye.fov)
            gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo)
            gl.glViewport(0, 0, self.eye_width, self.eye_height)
            self._draw_scene(e, eye, draws, fallback, sampled=self._sampled_gpu if e == 0 else None)
            if quad is not None and self.preview_shown and not quad.shed:
                if e == 0 and self.mirror_wanted:
                    self._copy_live_eye(fbo)
                    gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo)
                self._draw_quad(quad, eye, out_tan, first_eye=e == 0)
            gl.glDisable(gl.GL_BLEND)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)

    def _draw_scene(
        self,
        e: int,
        eye: EyeView,
        draws: Sequence[LayerDraw],
        fallback: bool,
        sampled: list[LayerDraw] | None,
    ) -> None:
        """Eye ``e``'s scene (the fallback and the projection layers, not the quad) into
        the bound framebuffer; GPU images sampled are added to ``sampled`` (if given)."""
        gl = self.gl
        out_tan = fov_tangents(eye.fov)
        gl.glDisable(gl.GL_DEPTH_TEST)
        gl.glDisable(gl.GL_BLEND)
        gl.glClearColor(0.0, 0.0, 0.0, 1.0)
        gl.glClear(gl.GL_COLOR_BUFFER_BIT)
        if fallback:
            self.fallback.draw(eye, out_tan)
        for i, draw in enumerate(draws):
            layer = self._layers[draw.layer]
            if layer.front_key is None or draw.quad is not None:
                continue  # nothing whole uploaded yet; the quad goes on top, after
            # The base layer over a plain clear needs no blending: on a CPU renderer
            # blending is a read-modify-write of every pixel, a third of the pass.
            if i == 0 and draw.layer == 0 and not fallback:
                gl.glDisable(gl.GL_BLEND)
            else:
                gl.glEnable(gl.GL_BLEND)
            source_eye = min(e, len(layer.eyes) - 1)
            rendered = layer.eyes[source_eye]
            delta = rotation_delta(rendered.pose.orientation, eye.pose.orientation)
            texture = layer.texture(source_eye)
            self._warp(layer, texture, delta, out_tan, fov_tangents(rendered.fov))
            if sampled is not None and layer.gpu_index is not None:
                sampled.append(draw)

    def _draw_quad(
        self,
        draw: LayerDraw,
        eye: EyeView,
        out_tan: tuple[float, float, float, float],
        first_eye: bool,
    ) -> None:
        """The preview's left-eye image as a panel in ``eye``, blended over the scene, only
        the panel's box on the screen shaded (a scissor)."""
        from engine.compositor.quad import quad_homography, quad_screen_bounds, scissor_box

        assert draw.quad is not None and self.quad_pass is not None
        bounds = quad_screen_bounds(draw.quad, eye)
        homography = quad_homography(draw.quad, eye)
        if bounds is None or homography is None:
            return  # not in view of this eye
        gl, layer = self.gl, self._layers[draw.layer]
        gl.glEnable(gl.GL_SCISSOR_TEST)
        gl.glScissor(*scissor_box(bounds, self.eye_width, self.eye_height))
        gl.glEnable(gl.GL_BLEND)
        self.quad_pass.draw_homography(layer.texture(0), homography)
        gl.glDisable(gl.GL_SCISSOR_TEST)
        if first_eye:
            self.preview_draws += 1
            if layer.gpu_index is not None:
                self._sampled_gpu.append(draw)

    def _render_target(self, width: int, height: int) -> tuple[int, int]:
        """A colour texture and its framebuffer, ``width`` x ``height``."""
        gl = self.gl
        texture = self._texture(
            width, height, gl.GL_LINEAR, gl.GL_CLAMP_TO_EDGE, choose_upload(None, True)
        )
        fbo = gl.GLuint()
        gl.glGenFramebuffers(1, ctypes.byref(fbo))
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo.value)
        gl.glFramebufferTexture2D(
            gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_TEXTURE_2D, texture, 0
        )
        return texture, fbo.value

    def _live_target(self, scale: float) -> tuple[int, int]:
        """The live eye's copy for the mirror view at ``scale`` (texture, framebuffer)."""
        size = (max(1, round(self.eye_width * scale)), max(1, round(self.eye_height * scale)))
        if self._live_copy is None or self._live_copy[0] != size:
            self._live_copy = (size, self._render_target(*size))
        return self._live_copy[1]

    def _copy_live_eye(self, fbo: int) -> None:
        """Copy eye ``fbo`` as the scene layers left it (before the panel) for the mirror
        view, at its scale (``mirror_scale``: a window at half size copies a quarter)."""
        gl, w, h = self.gl, self.eye_width, self.eye_height
        _, target = self._live_target(self.mirror_scale)
        (tw, th), _ = self._live_copy  # type: ignore[misc]
        gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, fbo)
        gl.glBindFramebuffer(gl.GL_DRAW_FRAMEBUFFER, target)
        gl.glBlitFramebuffer(0, 0, w, h, 0, 0, tw, th, gl.GL_COLOR_BUFFER_BIT, gl.GL_NEAREST)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        self.live_copied = True

    def _redraw_live_eye(self) -> None:
        """Draw the last frame's left-eye scene again, full size, into the live copy: for
        a capture, whose frames did not copy it (only a window pays for that per frame)."""
        draws, eyes, fallback = self._last_frame
        gl = self.gl
        _, target = self._live_target(1.0)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, target)
        gl.glViewport(0, 0, self.eye_width, self.eye_height)
        gl.glBlendFunc(gl.GL_ONE, gl.GL_ONE_MINUS_SRC_ALPHA)
        self._draw_scene(0, eyes[0], draws, fallback, sampled=None)
        gl.glDisable(gl.GL_BLEND)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        self.live_copied = True

    def _preview_shed(self) -> bool:
        """Whether the last frame left the preview out of the eyes (time was short)."""
        return self._last_frame is not None and any(d.shed for d in self._last_frame[0])

    def mirror_halves(self) -> tuple[int, int, bool]:
        """The mirror view's left and right textures, and whether it is split: the live
        scene's left eye and the preview's picture in a frame that had the preview (once
        the live eye was copied: ``mirror_wanted``, or drawn again by
        :meth:`render_mirror`), else the two eyes."""
        if self.preview_shown and self.preview_layer is not None:
            preview = self._layers[self.preview_layer].texture(0)
            if self._preview_shed():
                return self._eye_textures[0], preview, True  # no panel in the eye: it is live
            if self.live_copied and self._live_copy is not None:
                return self._live_copy[1][0], preview, True
        return self._eye_textures[0], self._eye_textures[1], False

    def render_mirror(self, scale: float = 1.0, text: bool = True) -> int:
        """Draw the mirror view offscreen, ``scale`` times both eyes' size, with
        ``mirror_text`` over it (unless ``text`` is false); returns its texture
        (:meth:`read_mirror` reads it)."""
        from engine.compositor.mirror import MirrorView

        size = (max(1, round(2 * self.eye_width * scale)), max(1, round(self.eye_height * scale)))
        if size not in self._mirrors:
            self._mirrors[size] = self._render_target(*size)
        if self._mirror_view is None:
            self._mirror_view = MirrorView(self.mirror_text)
        if self.preview_shown and not self.live_copied and not self._preview_shed():
            self._redraw_live_eye()
        texture, fbo = self._mirrors[size]
        self.gl.glBindFramebuffer(self.gl.GL_FRAMEBUFFER, fbo)
        self._mirror_view.draw(self.mirror_halves(), *size, text=text)
        self.gl.glBindFramebuffer(self.gl.GL_FRAMEBUFFER, 0)
        self._last_mirror = size
        return texture

    def read_mirror(self) -> np.ndarray:
        """The mirror view :meth:`render_mirror` drew last, ``uint8 (h, w, 4)``, rows
        bottom-to-top. Raises ``RuntimeError`` if none was drawn."""
        if self._last_mirror is None:
            raise RuntimeError("no mirror view was drawn (call render_mirror first)")
        gl, (w, h) = self.gl, self._last_mirror
        out = np.empty((h, w, 4), np.uint8)
        gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
        gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, self._mirrors[self._last_mirror][1])
        gl.glReadPixels(
            0, 0, w, h, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE, ctypes.c_void_p(out.ctypes.data)
        )
        gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, 0)
        return out

    def _check_gpu_samples(self) -> None:
        """Count GPU images the producer started rewriting while the last frame sampled
        them (that frame is finished now). Nothing to undo: the count says whether the
        producer kept to the ring."""
        for draw in self._sampled_gpu:
            if not draw.source.still_valid(draw.image):
                self.torn_gpu_samples += 1
        self._sampled_gpu = []

    def warm_up(self, eyes: tuple[EyeView, EyeView]) -> None:
        """Draw every pass once (fallback, each layer's empty texture) and wait for it.

        llvmpipe compiles a shader's machine code at its first draw (tens of ms); doing
        that before the first slot keeps it out of the frame times.
        """
        gl = self.gl
        for layer in self._layers:
            for e, fbo in enumerate(self._fbos):
                gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo)
                gl.glViewport(0, 0, self.eye_width, self.eye_height)
                tan = fov_tangents(eyes[e].fov)
                # With and without blending, each its own llvmpipe variant; for the mesh
                # both programs too (a large turn sends every cell to the exact one).
                gl.glBlendFunc(gl.GL_ONE, gl.GL_ONE_MINUS_SRC_ALPHA)
                for blend in (False, True):
                    (gl.glEnable if blend else gl.glDisable)(gl.GL_BLEND)
                    for turn in (np.eye(3), _TURN_30_DEGREES):
                        self._warp(layer, layer.textures[0][0], turn, tan, tan)
                gl.glDisable(gl.GL_BLEND)
        if self.quad_pass is not None:  # its first draw compiles it (llvmpipe)
            gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self._fbos[0])
            gl.glEnable(gl.GL_BLEND)
            self.quad_pass.draw(self._layers[-1].textures[0][0], np.eye(3), tan, tan)
            gl.glDisable(gl.GL_BLEND)
        self.compose([], eyes, fallback=True)
        self.finish()

    # -- EyeSurface (what sinks use) ---------------------------------------------------
    def finish(self) -> None:
        self.gl.glFinish()

    def read_eyes(self) -> np.ndarray:
        gl = self.gl
        out = np.empty((2, self.eye_height, self.eye_width, 4), np.uint8)
        gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
        for e, fbo in enumerate(self._fbos):
            gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, fbo)
            gl.glReadPixels(
                0, 0, self.eye_width, self.eye_height, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE,
                ctypes.c_void_p(out[e].ctypes.data),
            )  # fmt: skip
        gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, 0)
        return out

    def layer_uploads(self) -> list[UploadFormat]:
        """How each layer (bottom first) is stored and uploaded."""
        return [layer.upload for layer in self._layers]

    def layer_images(self) -> list[dict[str, Any]]:
        """Per layer: where its images can be (``offered``: "gpu memory" or "shared
        memory", and ``why``) and where the last one shown came from (``shown_from``)."""
        return [
            {
                "offered": "gpu memory" if layer.gpu is not None else "shared memory",
                "why": layer.gpu_reason,
                "shown_from": layer.shown_from,
            }
            for layer in self._layers
        ]

    def eye_textures(self) -> tuple[int, int]:
        return (self._eye_textures[0], self._eye_textures[1])

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "uploads": self.uploads,
            "torn_uploads": self.torn_uploads,
            "rejected_images": self.rejected_images,
            "warp": self.warp,
            "filter": self.filter,
            "layer_formats": [layer.spec.format.name for layer in self._layers],
            "uploads_as": [layer.upload.describe() for layer in self._layers],
            "driver_prefers": self.preferred_upload.describe(),
            "timed_frame_ms": None if self.timed_frame_ns is None else self.timed_frame_ns / 1e6,
            "gpu_images_shown": self.gpu_images_shown,
            "preview_draws": self.preview_draws,
            "torn_gpu_samples": self.torn_gpu_samples,
            "layer_images": self.layer_images(),
        }
        if self.mesh is not None:
            stats["mesh_cells_affine"] = self.mesh.rect_cells
            stats["mesh_cells_exact"] = self.mesh.edge_cells
            stats["mesh_reused"] = self.mesh.reused_meshes
        return stats


# --- the process ----------------------------------------------------------------------


class RecoveringComposer:
    """A :class:`GLComposer` that makes itself again when its GL context is lost.

    A GPU reset (a game's shader hanging the GPU, a driver recovering) loses every robust
    context on the device, the compositor's too (``EGL_EXT_create_context_robustness``:
    ``glGetGraphicsResetStatus`` then says so). Before each frame this asks; once lost,
    it makes a new context (:func:`engine.render.context.recreate_context`) and a new
    composer in it (``make``), imports the layers' GPU images again, warms it up, and
    composes the frame there. The layers' images are uploaded again from their blocks as
    the frame reads them, so a dead game's last frame still shows. Everything else is the
    current composer's (attributes are looked up there). The mirror window is made
    again by its sink (:class:`~engine.compositor.sinks.MirrorWindowSink`), which sees
    :attr:`context_resets` go up.

    Args:
        make: builds a composer in the current context.
        reset_status: the current context's reset status (default
            ``glGetGraphicsResetStatus``; a test injects one: a real reset cannot be
            provoked on demand).
        report: where a loss and the recovery are said.

    A context that cannot be made again raises ``pyglet.gl.ContextException`` from
    :meth:`compose` (the loop counts a failed frame and tries again next frame).
    """

    def __init__(
        self,
        make: Callable[[], GLComposer],
        reset_status: Callable[[], int] | None = None,
        report: Callable[[str], None] = lambda message: None,
    ) -> None:
        from engine.render.context import reset_status as context_reset_status

        self._set: dict[str, Any] = {}
        self._make = make
        self._reset_status = reset_status or context_reset_status
        self.report = report
        self.current = make()
        self.context_resets = 0
        self._offers: dict[int, GpuImagesOffer] = {}

    #: Its own attributes; any other that is set (``mirror_text``) is the composer's, set
    #: on the current one and again on each one made after a loss.
    _OWN = frozenset(
        {"_make", "_reset_status", "report", "current", "context_resets", "_offers", "_set"}
    )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in RecoveringComposer._OWN:
            object.__setattr__(self, name, value)
            return
        self._set[name] = value
        setattr(self.current, name, value)

    def attach_gpu_images(self, layer_index: int, offer: GpuImagesOffer) -> str | None:
        """As :meth:`GLComposer.attach_gpu_images`; kept to import again after a loss."""
        self._offers[layer_index] = offer
        return self.current.attach_gpu_images(layer_index, offer)

    def compose(
        self, draws: Sequence[LayerDraw], eyes: tuple[EyeView, EyeView], fallback: bool
    ) -> None:
        status = self._reset_status()
        if status:
            self._recover(status, eyes)
        self.current.compose(draws, eyes, fallback)

    def _recover(self, status: int, eyes: tuple[EyeView, EyeView]) -> None:
        from engine.render.context import RESET_STATUS_NAMES, recreate_context

        why = RESET_STATUS_NAMES.get(status, f"reset status {status:#x}")
        self.report(f"compositor: GL context lost ({why}); making a new one")
        recreate_context()
        composer = self._make()
        for name, value in self._set.items():
            setattr(composer, name, value)
        for index, offer in self._offers.items():
            problem = composer.attach_gpu_images(index, offer)
            if problem and offer.offered:
                self.report(f"compositor: layer {index} back in shared memory: {problem}")
        composer.warm_up(eyes)
        self.current = composer  # the old one's GL objects went with the old context
        self.context_resets += 1

    def stats(self) -> dict[str, Any]:
        return {**self.current.stats(), "context_resets": self.context_resets}


def make_pose_source(spec: str, fov: Fov | None = None) -> Any:
    """``"simulated"`` or ``"trace:PATH"`` as a pose source. Raises ``ValueError`` otherwise.

    ``fov`` is each eye's field of view (default: 90° across and square pixels at the eye
    size the compositor presents).
    """
    from engine.pose.simulated import SimulatedHeadset, TracePoseSource

    fov = fov or Fov()
    if spec == "simulated":
        return SimulatedHeadset(fov=fov)
    if spec.startswith("trace:"):
        return TracePoseSource.load(spec[len("trace:") :], loop=True, fov=fov)
    raise ValueError(f"unknown pose source {spec!r} (use 'simulated' or 'trace:PATH')")


def compositor_main(
    config: CompositorConfig,
    pose_fd: int,
    control: socket.socket,
    input_fd: int | None = None,
    status_fd: int | None = None,
) -> None:
    """The compositor process's entry point (run with the ``spawn`` context).

    ``input_fd`` is the input block it writes (keyboard, mouse, ``config.input_script``).
    ``status_fd`` is the live game's status block (read-only): its systems table, which
    the mirror's HUD shows (:mod:`engine.contracts.status`).

    Runs until told to stop, until ``config.frames`` frames, or until the parent closes
    the control socket; dies with its parent (:func:`~engine.launcher.containment.die_with_parent`).
    Exceptions at start-up propagate (the process exits non-zero and the parent sees the
    socket close); once running, nothing a client does can raise here, and an exception
    in a frame (compose, present, pose) costs that frame only (the loop counts and reports
    it).
    """
    parent = multiprocessing.parent_process()
    if parent is not None:  # first: a compositor never outlives its supervisor
        from engine.launcher.containment import die_with_parent, set_process_name

        die_with_parent(parent.pid, parent.sentinel)
        set_process_name("compositor")  # what ps and top show
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cpu = raise_cpu_priority(config.realtime)
    import pyglet  # choose headless before anything loads pyglet.gl

    pyglet.options["headless"] = not config.window
    os.environ["PYGLET_HEADLESS"] = "0" if config.window else "1"
    request_gpu_priority("high")  # before the context is made: it is asked for then
    from engine.render.context import gl_description, offscreen_context

    offscreen_context()
    preferred = preferred_upload()
    specs = config.layer_specs(preferred.layer_format)
    from engine.compositor.sinks import HeadlessSink, MirrorWindowSink

    composer = RecoveringComposer(
        lambda: GLComposer(
            config.eye_width,
            config.eye_height,
            specs,
            filter=config.filter,
            warp=config.warp,
            preview_layer=config.preview_index,
        ),
        report=_stderr_report,
    )
    readers, allocator = _share_layers(config, specs, composer, control)
    sink = (
        MirrorWindowSink(composer, config.capture_path)
        if config.window
        else HeadlessSink(composer, config.capture_path, config.mirror_headless)
    )
    if input_fd is not None:
        sink = input_feed(sink, input_fd, config.input_script)
    gpu = gpu_context_priority()
    pose_source = make_pose_source(config.pose, Fov.for_image(config.eye_width, config.eye_height))
    eyes = pose_source.sample(0, time.monotonic_ns()).eyes
    composer.warm_up(eyes)
    period_ns = round(1e9 / config.display_hz)
    lead_ns = min(config.compose_lead_ns, period_ns - 1_000_000)
    if config.adapt_lead:
        timed = composer.time_frame(eyes, warmups=config.timing_warmups)
        lead_ns = start_lead_ns(timed, period_ns, lead_ns)
    clock = MonotonicClock(spin_ns=config.spin_ns)
    schedule = DisplaySchedule(period_ns, clock.now_ns() + 2 * period_ns, lead_ns)
    loop = CompositorLoop(
        clock=clock,
        schedule=schedule,
        pose_source=pose_source,
        layers=list(zip([name for name, _, _ in config.all_layers()], readers, strict=True)),
        composer=composer,
        sink=sink,
        handoff=PoseHandoffWriter(pose_fd),
        deadline_ns=round(config.deadline_periods * period_ns),
        grace_ns=round(config.grace_s * 1e9),
        adapt_lead=config.adapt_lead,
        report=_stderr_report,
        preview_layer=config.preview_index,
    )
    mirror_text = None
    if config.window or config.capture_path or config.mirror_headless:  # a mirror view
        from engine.compositor.mirror import MirrorText

        status = None
        if status_fd is not None:
            from engine.contracts.status import StatusReader

            status = StatusReader(status_fd)
        mirror_text = composer.mirror_text = MirrorText(loop, hud_on=config.hud, status=status)
    if input_fd is not None:
        game_watches = loop.watches[: len(config.layers)]  # the preview's is no game's
        sink.started = lambda: any(w.image is not None for w in game_watches)
    priority = {"cpu": cpu, **gpu}
    # Every layer has the one format: the first says how they all upload.
    upload = composer.layer_uploads()[0] if specs else preferred
    formats = {"layer_format": upload.layer_format.name, "upload": upload.describe()}
    layer_images = [f"{entry['offered']} ({entry['why']})" for entry in composer.layer_images()]
    ready = {
        "op": "ready",
        "priority": priority,
        "gl": gl_description(),
        **formats,
        "layer_images": layer_images,
    }
    send_message(control, ready)
    control.setblocking(False)
    stop_requested = False

    def should_stop() -> bool:
        nonlocal stop_requested
        try:
            data = control.recv(MESSAGE_BYTES)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if not data:
            return True  # the parent is gone
        message = json.loads(data)
        if message.get("op") == "game_state":
            if mirror_text is not None:
                mirror_text.tell(str(message.get("state")))
            return False
        stop_requested = message.get("op") == "stop"
        return stop_requested

    started = time.monotonic()
    loop.run(frames=config.frames, stop=should_stop)
    sink.close()
    stats = {
        **loop.stats_dict(),
        "seconds": time.monotonic() - started,
        "priority": priority,
        "gl": composer.stats(),
        "capture": str(getattr(sink, "captured", None) or "") or None,
        "capture_error": getattr(sink, "capture_error", None),
    }
    if input_fd is not None:
        stats["input"] = sink.stats()
    mirror_stats = getattr(sink, "mirror_stats", None)
    if mirror_stats is not None and mirror_stats() is not None:
        stats["mirror"] = mirror_stats()
    try:
        control.setblocking(True)
        send_message(control, {"op": "stats", "stats": stats})
    except OSError:
        pass  # nobody is listening any more
    if allocator is not None:
        allocator.close()


def start_lead_ns(timed_ns: int, period_ns: int, configured_ns: int) -> int:
    """The compose lead an adapting loop starts from, given a frame timed before the first.

    Twice the timed frame plus 1 ms (at least ``configured_ns``): the first frames with a
    layer run with cold caches while the producer starts up beside them (on a 2-core
    machine they came to 1.9 times the median compose, and a start at 1.5 times missed
    three refreshes in a row). Up to a period less 1 ms; a frame that cannot fit that
    starts at half rate (up to two periods less 1 ms). The loop adapts it from then on.
    """
    full_rate_most = period_ns - 1_000_000
    fits = timed_ns + 1_000_000 <= full_rate_most
    most = full_rate_most if fits else 2 * period_ns - 1_000_000
    return min(max(configured_ns, 2 * timed_ns + 1_000_000), most)


def _share_layers(
    config: CompositorConfig,
    specs: list[LayerSpec],
    composer: RecoveringComposer,
    control: socket.socket,
) -> tuple[list[LayerReader], Any]:
    """Create each layer's block and, where possible, its GPU images; send both to the
    parent (block first, then the GPU images or why there are none). Returns the readers
    and the Vulkan allocator (``None`` without one), which must outlive the layers."""
    from engine.compositor.gpu_images import GpuImagesUnavailable, open_allocator

    software = is_software_renderer(composer.gl.gl_info.get_renderer())
    allocator, why_not = open_allocator(config.gpu_images, software)
    readers = []
    for i, ((name, _, _), spec) in enumerate(zip(config.all_layers(), specs, strict=True)):
        offer = not_offered(why_not)
        if allocator is not None:
            try:
                offer = allocator.allocate(spec)
            except GpuImagesUnavailable as exc:
                offer = not_offered(f"allocation refused: {exc}")
            problem = composer.attach_gpu_images(i, offer)
            if problem:
                offer = not_offered(problem)
        else:
            composer.attach_gpu_images(i, offer)
        fd = create_layer_fd(spec, name=f"layer-{name}")
        # A layer offered GPU images normally never reads the block's image bytes, so they
        # are not faulted in up front (a producer that falls back to the block pays about a
        # millisecond per ring image, once, on the compositor's side).
        readers.append(LayerReader(fd, populate=not offer.offered))
        send_layer_fd(control, fd, spec)
        send_gpu_images(control, offer)
        os.close(fd)  # the reader's mapping and the parent's copy keep the block alive
    return readers, allocator


def _stderr_report(message: str) -> None:
    """The compositor's messages: straight to fd 2 (no Python buffering, never raises)."""
    try:
        os.write(2, f"compositor: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


class CompositorHandle:
    """The parent's side of a running compositor process.

    Example:
        >>> handle = CompositorHandle.start(CompositorConfig(), pose_fd)     # doctest: +SKIP
        >>> handle.layers          # [(fd, LayerSpec)] to hand to producers  # doctest: +SKIP
        >>> handle.preview_layer   # (fd, LayerSpec) for a preview game, or None # doctest: +SKIP
        >>> stats = handle.stop()                                           # doctest: +SKIP

    ``layers`` are the game layers; the preview layer (``CompositorConfig.preview``) is
    ``preview_layer``, and ``preview_index`` its index for :meth:`gpu_images_for_child`.
    """

    def __init__(self, process: Any, control: socket.socket) -> None:
        self.process = process
        self.control = control
        self.layers: list[tuple[int, LayerSpec]] = []
        self.preview_layer: tuple[int, LayerSpec] | None = None
        self.preview_index: int | None = None
        #: Per layer, its GPU images as offered (fds owned here), or why there are none.
        self.gpu_images: list[GpuImagesOffer] = []
        self.ready: dict[str, Any] = {}

    @classmethod
    def start(
        cls,
        config: CompositorConfig,
        pose_fd: int,
        timeout_s: float = 60.0,
        input_fd: int | None = None,
        status_fd: int | None = None,
    ) -> CompositorHandle:
        """Spawn the process and wait for its layers and ``ready``; ``input_fd`` is the
        input block it is to write (``None``: no input), ``status_fd`` the live game's
        status block it reads for the HUD (``None``: none).

        Raises ``RuntimeError`` if it dies or is not ready within ``timeout_s``.
        """
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = SPAWN.Process(
            target=compositor_main,
            args=(config, PassedFd(pose_fd), child, _passed(input_fd), _passed(status_fd)),
            name="engine-compositor",
            daemon=True,
        )
        process.start()
        child.close()
        handle = cls(process, parent)
        try:
            parent.settimeout(timeout_s)
            for i, _ in enumerate(config.all_layers()):
                layer = recv_layer_fd(parent)
                if i == config.preview_index:
                    handle.preview_layer, handle.preview_index = layer, i
                else:
                    handle.layers.append(layer)
                handle.gpu_images.append(recv_gpu_images(parent))
            ready = recv_message(parent, timeout_s)
        except (OSError, ConnectionError, ValueError) as exc:
            handle.kill()
            raise RuntimeError(f"the compositor did not start: {exc}") from exc
        if not ready or ready.get("op") != "ready":
            handle.kill()
            raise RuntimeError(f"the compositor did not start (got {ready!r})")
        handle.ready = ready
        return handle

    def alive(self) -> bool:
        return self.process.is_alive()

    def gpu_images_for_child(self, layer: int) -> GpuImagesOffer:
        """Layer ``layer``'s GPU images offer, its fds wrapped to pass to a ``spawn``
        child (which receives its own copies; every child gets the same images). The
        preview layer's index is ``preview_index``. Raises ``IndexError`` for no such
        layer."""
        offer = self.gpu_images[layer]
        return GpuImagesOffer(offer.images, tuple(PassedFd(fd) for fd in offer.fds), offer.reason)

    def tell_game_state(self, state: str) -> None:
        """Tell the compositor what the game is doing, for the mirror's HUD: one of
        ``engine.compositor.mirror.GAME_STATES`` (``"restarting"`` while a new game comes
        up; a fresh image from the game says ``running`` by itself). Others are ignored
        there. Never raises: a compositor that is gone is the supervisor's to notice."""
        try:
            send_message(self.control, {"op": "game_state", "state": state})
        except OSError:
            pass

    def stop(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Ask it to stop and return its final stats (``{}`` if it could not say)."""
        stats: dict[str, Any] = {}
        try:
            send_message(self.control, {"op": "stop"})
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                message = recv_message(self.control, max(0.0, deadline - time.monotonic()))
                if message is None:
                    break
                if message.get("op") == "stats":
                    stats = message["stats"]
                    break
        except (OSError, ConnectionError, ValueError):
            pass
        self.process.join(timeout_s)
        self.kill()
        return stats

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        for fd, _ in self.layers + ([self.preview_layer] if self.preview_layer else []):
            try:
                os.close(fd)
            except OSError:
                pass
        self.layers = []
        self.preview_layer = None
        for offer in self.gpu_images:
            offer.close()
        self.gpu_images = []
        self.control.close()


# --- input (see engine.compositor.input_feed) -------------------------------------------


def input_feed(sink: Any, input_fd: int, script_path: str | None) -> Any:
    """``sink`` wrapped so that it also writes the input block (window events, script).

    Raises :class:`~engine.input.script.InputScriptError` or ``OSError`` for a script that
    cannot be played (the compositor then fails to start, saying why).
    """
    from engine.compositor.input_feed import InputFeed
    from engine.contracts.input import InputWriter
    from engine.input.script import load_script

    script = load_script(script_path) if script_path else None
    return InputFeed(sink, InputWriter(input_fd), script)


def _passed(fd: int | None) -> PassedFd | None:
    return None if fd is None else PassedFd(fd)

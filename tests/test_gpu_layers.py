"""Layer images in GPU memory, across real processes: the compositor's side (this test
process) allocates them with Vulkan and imports them into its GL context; a producer
started with the ``spawn`` context receives the fds over a Unix socket, imports them into
its own GL context, draws into them and publishes through the layer block; the pixels the
compositor's side samples are checked.

On a machine without a GPU this runs on Mesa: lavapipe (``mesa-vulkan-drivers``) allocates,
llvmpipe imports. Tests skip only where Vulkan itself is missing (no loader, no driver).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import socket
import time

import numpy as np
import pytest

from engine.contracts.gpu_layer import GpuImagesOffer, recv_gpu_images, send_gpu_images
from engine.contracts.layer import (
    ImageStorage,
    LayerReader,
    LayerSpec,
    LayerWriter,
    create_layer_fd,
    recv_layer_fd,
    send_layer_fd,
)
from engine.pose.base import EyeView, Pose

SPAWN = multiprocessing.get_context("spawn")
SPEC = LayerSpec(width=1280, height=720, eyes=2, images=3)
CHILD_TIMEOUT_S = 60


def colour(frame: int, eye: int) -> tuple[int, int, int, int]:
    """A colour per frame and eye that survives the 8-bit round trip exactly."""
    return ((frame * 37) % 256, (frame * 11 + 100 * eye) % 256, (eye * 90 + 20) % 256, 255)


def frame_eyes(frame: int, eyes: int) -> tuple[EyeView, ...]:
    return tuple(EyeView(Pose((float(frame), 0.0, float(e)))) for e in range(eyes))


# --- children (module level, so spawned interpreters can import them) -----------------


def receive(address: str) -> tuple[int, LayerSpec, GpuImagesOffer]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(address)
        fd, spec = recv_layer_fd(sock)
        return fd, spec, recv_gpu_images(sock)


def draw_frames(address: str, frames: int, sync: str, results) -> None:  # noqa: ANN001
    """Import the offered images, then for each frame clear each eye of the acquired image
    to ``colour(frame, eye)`` (a quarter of it white, so it is not one flat colour), wait
    (``sync``: "fence" or "flush"), publish; pause a little between frames."""
    os.environ["PYGLET_HEADLESS"] = "1"
    from engine.gpu import gl_memory
    from engine.render.context import gl, offscreen_context

    offscreen_context()
    fd, spec, offer = receive(address)
    assert offer.images is not None, offer.reason
    imported = gl_memory.ImportedImages(offer.images, offer.fds)
    offer.close()  # the imports hold the memory; this process's fds are no longer needed
    targets = [[gl_memory.ImageFramebuffer(t) for t in row] for row in imported.textures]
    writer = LayerWriter(fd, spec, ImageStorage.GPU_MEMORY)
    for frame in range(1, frames + 1):
        slot = writer.acquire()
        for eye in range(spec.eyes):
            gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, targets[slot.index][eye].fbo)
            gl.glViewport(0, 0, spec.width, spec.height)
            gl.glDisable(gl.GL_SCISSOR_TEST)
            gl.glClearColor(*(c / 255 for c in colour(frame, eye)))
            gl.glClear(gl.GL_COLOR_BUFFER_BIT | gl.GL_DEPTH_BUFFER_BIT)
            gl.glEnable(gl.GL_SCISSOR_TEST)
            gl.glScissor(0, 0, spec.width // 2, spec.height // 2)
            gl.glClearColor(1.0, 1.0, 1.0, 1.0)
            gl.glClear(gl.GL_COLOR_BUFFER_BIT)
            gl.glDisable(gl.GL_SCISSOR_TEST)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        if sync == "fence":
            gl_memory.wait_for_rendering()
        else:
            gl.glFlush()
        writer.publish(slot, frame, frame_eyes(frame, spec.eyes), time.monotonic_ns())
        time.sleep(0.01)
    results.put("done")


# --- the compositor's side ------------------------------------------------------------


@pytest.fixture
def allocator(gl):  # noqa: ANN001, ANN201
    """A Vulkan allocator on this GL context's device; skips only where Vulkan is missing."""
    from engine.compositor.gpu_images import GpuImagesUnavailable, VulkanImageAllocator
    from engine.gpu import vulkan

    try:
        vulkan.Loader()
    except vulkan.VulkanUnavailable as exc:
        pytest.skip(f"no Vulkan on this machine: {exc}")
    try:
        made = VulkanImageAllocator.for_current_context()
    except GpuImagesUnavailable as exc:
        if "no Vulkan 1.1 driver" in str(exc) or "Vulkan: no devices" in str(exc):
            pytest.skip(f"no Vulkan driver on this machine: {exc}")
        raise
    yield made
    made.close()


def read_texture(gl, texture: int, width: int, height: int) -> np.ndarray:  # noqa: ANN001
    """A texture's pixels, (height, width, 4) RGBA, through a scratch framebuffer."""
    fbo = gl.GLuint()
    gl.glGenFramebuffers(1, ctypes.byref(fbo))
    gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo.value)
    gl.glFramebufferTexture2D(
        gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_TEXTURE_2D, texture, 0
    )
    out = np.empty((height, width, 4), np.uint8)
    gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
    gl.glReadPixels(0, 0, width, height, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE, out.ctypes.data)
    gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
    gl.glDeleteFramebuffers(1, ctypes.byref(fbo))
    return out


def expected(frame: int, eye: int, spec: LayerSpec) -> np.ndarray:
    pixels = np.empty((spec.height, spec.width, 4), np.uint8)
    pixels[:] = colour(frame, eye)
    pixels[: spec.height // 2, : spec.width // 2] = 255
    return pixels


def start_producer(tmp_path, offer: GpuImagesOffer, frames: int, sync: str = "fence"):  # noqa: ANN001, ANN201
    """Spawn ``draw_frames`` and hand it a fresh block and ``offer``; returns
    ``(child, results, block fd)``."""
    address = str(tmp_path / "gpu.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(address)
    server.listen(1)
    results = SPAWN.Queue()
    child = SPAWN.Process(target=draw_frames, args=(address, frames, sync, results), daemon=True)
    child.start()
    fd = create_layer_fd(SPEC, "gpu-test")
    server.settimeout(CHILD_TIMEOUT_S)
    connection, _ = server.accept()
    with connection, server:
        send_layer_fd(connection, fd, SPEC)
        send_gpu_images(connection, offer)
    return child, results, fd


def test_a_producer_draws_into_gpu_images_and_the_compositor_samples_its_pixels(
    gl, allocator, tmp_path
):
    """50 frames drawn by another process into the same six imported images (no re-import):
    every frame the reader sees is exactly the colours drawn for it, in both eyes."""
    from engine.compositor.gpu_images import offer_layer_images

    offer, imported = offer_layer_images(allocator, SPEC)
    assert imported is not None, offer.reason
    child, results, fd = start_producer(tmp_path, offer, frames=50)
    reader = LayerReader(fd)
    checked, stale, last = 0, [], 0
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while last < 50 and time.monotonic() < deadline:
            frame = reader.read()
            if frame is None or frame.frame == last:
                time.sleep(0.002)
                continue
            assert frame.storage is ImageStorage.GPU_MEMORY and frame.pixels is None
            eyes = [
                read_texture(gl, t, SPEC.width, SPEC.height) for t in imported.names(frame.index)
            ]
            if not reader.still_valid(frame):
                continue  # overwritten while read: not a verdict on this frame
            last = frame.frame
            checked += 1
            if not all(
                np.array_equal(eyes[e], expected(frame.frame, e, SPEC)) for e in range(SPEC.eyes)
            ):
                stale.append(frame.frame)
        assert results.get(timeout=CHILD_TIMEOUT_S) == "done"
    finally:
        child.join(CHILD_TIMEOUT_S)
        reader.close()
        os.close(fd)
        imported.delete()
    assert child.exitcode == 0
    assert last == 50 and checked >= 10, (last, checked)
    assert stale == [], f"{len(stale)} of {checked} frames showed other pixels: {stale}"

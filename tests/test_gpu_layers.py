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


def draw_frames(address: str, frames: int, sync: str, results, checked) -> None:  # noqa: ANN001
    """Import the offered images, then for each frame clear each eye of the acquired image
    to ``colour(frame, eye)`` (a quarter of it white, so it is not one flat colour), wait
    (``sync``: "fence" or "flush"), publish, and wait until the reader has checked it."""
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
        checked.get(timeout=CHILD_TIMEOUT_S)
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
    results, checked = SPAWN.Queue(), SPAWN.Queue()
    child = SPAWN.Process(
        target=draw_frames, args=(address, frames, sync, results, checked), daemon=True
    )
    child.start()
    fd = create_layer_fd(SPEC, "gpu-test")
    server.settimeout(CHILD_TIMEOUT_S)
    connection, _ = server.accept()
    with connection, server:
        send_layer_fd(connection, fd, SPEC)
        send_gpu_images(connection, offer)
    return child, results, checked, fd


def test_a_producer_draws_into_gpu_images_and_the_compositor_samples_its_pixels(
    gl, allocator, tmp_path
):
    """50 frames drawn by another process into the same six imported images (no re-import),
    each read as soon as it is published: every frame is exactly the colours drawn for it,
    in both eyes. (With glFlush instead of the fence, some frames show older pixels.)"""
    from engine.compositor.gpu_images import offer_layer_images

    offer, imported = offer_layer_images(allocator, SPEC)
    assert imported is not None, offer.reason
    child, results, checked_frames, fd = start_producer(tmp_path, offer, frames=50)
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
            assert reader.still_valid(frame)  # the producer waits for the check
            last = frame.frame
            checked += 1
            if not all(
                np.array_equal(eyes[e], expected(frame.frame, e, SPEC)) for e in range(SPEC.eyes)
            ):
                stale.append(frame.frame)
            checked_frames.put(frame.frame)
        assert results.get(timeout=CHILD_TIMEOUT_S) == "done"
    finally:
        child.join(CHILD_TIMEOUT_S)
        reader.close()
        os.close(fd)
        imported.delete()
    assert child.exitcode == 0
    assert last == 50 and checked == 50, (last, checked)
    assert stale == [], f"{len(stale)} of {checked} frames showed other pixels: {stale}"


# --- end to end: the compositor process and a game process ------------------------------

#: The game's clear colour (RenderSettings' default) in 8 bits: what a frame of an empty
#: world shows; the compositor's own fallback (sky and floor) never does.
GAME_CLEAR = (13, 13, 20)
#: Each eye as large as the layer, so the layer fills the view.
GAME_COMPOSITOR = dict(
    eye_width=64, eye_height=48, layers=(("game", 64, 48),), grace_s=60.0, gpu_images="on"
)


def run_game(tmp_path, monkeypatch, env=(), kill_once=False, **compositor):  # noqa: ANN001, ANN201
    """Run the supervisor with the engine's render system on an empty world until the game
    has drawn 30 frames (with ``kill_once``: SIGKILL it then, and run its successor for
    30 frames); return ``(stats, capture, supervisor messages)``."""
    from conftest import load_png
    from engine.compositor.process import CompositorConfig
    from engine.launcher.game_process import RENDER_SYSTEM
    from engine.launcher.supervisor import Supervisor
    from engine.policy import FailurePolicy, Settings

    for name, value in env:
        monkeypatch.setenv(name, value)  # inherited by the compositor and the game
    project = tmp_path / "game"
    (project / "systems").mkdir(parents=True)
    capture = tmp_path / "capture.png"
    config = CompositorConfig(
        **{**GAME_COMPOSITOR, **compositor, "capture_path": str(capture), "adapt_lead": False}
    )
    messages: list[str] = []
    sup = Supervisor(
        project,
        compositor=config,
        render=RENDER_SYSTEM,
        watch=False,
        report=messages.append,
        policy=FailurePolicy(Settings(loop_faults=10**9)),
    )
    with sup:
        sup.start()
        assert sup.run_until(lambda: sup.game_frames > 30, CHILD_TIMEOUT_S), messages
        if kill_once:
            os.kill(sup.game_pid, 9)
            assert sup.run_until(lambda: bool(sup.restarts), CHILD_TIMEOUT_S), messages
            restarted = sup.game_frames
            assert sup.run_until(lambda: sup.game_frames > restarted + 30, CHILD_TIMEOUT_S)
        stats = sup.stop()
    return stats, load_png(capture), messages


def shows_the_game(capture: np.ndarray) -> bool:
    """Whether the centre of each eye of a capture is the game's clear colour."""
    centres = [capture[24, 32, :3], capture[24, 96, :3]]
    return all(np.abs(c.astype(int) - GAME_CLEAR).max() <= 1 for c in centres)


def test_a_game_draws_into_gpu_memory_and_the_compositor_shows_it(allocator, tmp_path, monkeypatch):
    stats, capture, messages = run_game(tmp_path, monkeypatch)
    gl_stats = stats["compositor"]["gl"]
    images, _preview = gl_stats["layer_images"]  # the game layer, the preview layer
    assert images["offered"] == "gpu memory", images
    assert images["shown_from"] == "gpu memory", images
    assert gl_stats["gpu_images_shown"] > 20 and gl_stats["uploads"] == 0, gl_stats
    assert gl_stats["torn_gpu_samples"] == 0
    assert any("layer images in gpu memory" in m for m in messages), messages
    assert shows_the_game(capture), capture[24, [32, 96]]


@pytest.mark.parametrize(
    "env, why",
    [
        # The loader reads VK_DRIVER_FILES first, VK_ICD_FILENAMES where that is unset.
        (
            [
                ("VK_DRIVER_FILES", "/nonexistent/icd.json"),
                ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
            ],
            "Vulkan",
        ),
        ([("MESA_EXTENSION_OVERRIDE", "-GL_EXT_memory_object_fd")], "GL_EXT_memory_object_fd"),
    ],
    ids=["without-a-vulkan-driver", "without-the-gl-extension"],
)
def test_without_vulkan_or_the_gl_extension_the_layer_stays_in_shared_memory(
    allocator, gl, tmp_path, monkeypatch, env, why
):
    if env[0][0] == "MESA_EXTENSION_OVERRIDE" and "Mesa" not in gl.gl_info.get_version_string():
        pytest.skip("hiding a GL extension this way needs Mesa")
    stats, capture, messages = run_game(tmp_path, monkeypatch, env=env)
    gl_stats = stats["compositor"]["gl"]
    images, _preview = gl_stats["layer_images"]  # the game layer, the preview layer
    assert images["offered"] == "shared memory" and why in images["why"], images
    assert images["shown_from"] == "shared memory", images
    assert gl_stats["uploads"] > 20 and gl_stats["gpu_images_shown"] == 0, gl_stats
    assert any(why in m for m in messages), messages  # the supervisor says why
    assert shows_the_game(capture), capture[24, [32, 96]]


def test_a_restarted_game_draws_into_the_same_gpu_images(allocator, tmp_path, monkeypatch, capfd):
    """The compositor allocates once; the game killed with SIGKILL is replaced by one that
    imports the same images again (the supervisor hands it the same fds) and the layer
    comes back, still sampled in place: nothing was ever uploaded. (The capture is taken
    after the last game stopped and the layer was excluded: not checked here.)"""
    stats, _, messages = run_game(tmp_path, monkeypatch, kill_once=True, grace_s=0.05)
    imports = capfd.readouterr().out.count("game: layer images in gpu memory")
    assert imports == 2, imports  # the first game and its successor
    assert stats["restarts"] and stats["restarts"][0]["first_frame_ms"] is not None
    assert stats["compositor_restarts"] == []  # one compositor, so one allocation
    layer = stats["compositor"]["layers"]["game"]
    assert layer["exclusions"] >= 1 and layer["restorations"] >= 1, layer
    gl_stats = stats["compositor"]["gl"]
    assert gl_stats["layer_images"][0]["shown_from"] == "gpu memory"
    assert gl_stats["uploads"] == 0 and gl_stats["gpu_images_shown"] > 40, gl_stats


# --- a hostile producer ------------------------------------------------------------------


def publish_a_few(writer: LayerWriter, frames: int = 10) -> None:
    for frame in range(1, frames + 1):
        slot = writer.acquire()
        writer.publish(slot, frame, frame_eyes(frame, writer.spec.eyes), time.monotonic_ns())
        time.sleep(0.01)


def import_with_wrong_sizes(block_fd: int, spec: LayerSpec, offer: GpuImagesOffer) -> None:
    """Import the images as four times their size, draw into them all, and publish a
    header describing another size."""
    import dataclasses

    os.environ["PYGLET_HEADLESS"] = "1"
    from engine.gpu import gl_memory
    from engine.render.context import gl, offscreen_context

    offscreen_context()
    images = offer.images
    wrong = dataclasses.replace(
        images,
        width=images.width * 2,
        height=images.height * 2,
        sizes=tuple(s * 4 for s in images.sizes),
    )
    writer = LayerWriter(
        block_fd, LayerSpec(spec.width // 2, spec.height, spec.eyes, spec.images, spec.format),
        ImageStorage.GPU_MEMORY,
    )  # fmt: skip
    publish_a_few(writer)
    try:
        imported = gl_memory.ImportedImages(wrong, tuple(offer.fds))
    except gl_memory.ImportRefused:
        return
    for row in imported.textures:
        for texture in row:
            target = gl_memory.ImageFramebuffer(texture)
            gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, target.fbo)
            gl.glViewport(0, 0, wrong.width, wrong.height)
            gl.glClearColor(1.0, 0.0, 1.0, 1.0)
            gl.glClear(gl.GL_COLOR_BUFFER_BIT)
    gl_memory.wait_for_rendering()
    publish_a_few(writer)


def close_the_fds_and_publish(block_fd: int, spec: LayerSpec, offer: GpuImagesOffer) -> None:
    """Close every GPU image fd (never import), then publish frames claiming GPU images."""
    offer.close()
    publish_a_few(LayerWriter(block_fd, spec, ImageStorage.GPU_MEMORY))


def scribble_over_the_header(block_fd: int, spec: LayerSpec, offer: GpuImagesOffer) -> None:
    """Publish properly, then overwrite the header page with garbage, then claim GPU
    storage with an image index far outside the ring and an unknown storage kind."""
    import mmap

    publish_a_few(LayerWriter(block_fd, spec, ImageStorage.GPU_MEMORY))
    block = mmap.mmap(block_fd, 4096)
    rng = np.random.default_rng(7)
    block[:4096] = rng.integers(0, 256, 4096, np.uint8).tobytes()
    time.sleep(0.1)
    writer = LayerWriter(block_fd, spec, ImageStorage.GPU_MEMORY)
    publish_a_few(writer)
    words = np.frombuffer(block, np.uint32)
    words[64 // 4] = 99  # latest_index
    time.sleep(0.1)
    words[68 // 4] = 7  # image_storage
    time.sleep(0.1)


HOSTILE = [import_with_wrong_sizes, close_the_fds_and_publish, scribble_over_the_header]


def test_a_hostile_producer_never_hurts_the_compositor(allocator):
    """Producers that import the images with the wrong size and draw past them, close the
    fds, or scribble over the header one after another: the compositor presents on, and
    refuses what does not match what it allocated."""
    from engine.compositor.process import CompositorConfig, CompositorHandle
    from engine.contracts.handoff import PoseHandoffReader
    from engine.contracts.shm import PassedFd, create_block_fd

    pose_fd = create_block_fd("pose")
    pose = PoseHandoffReader(pose_fd)
    config = CompositorConfig(
        eye_width=64, eye_height=48, layers=(("game", 64, 48),), gpu_images="on"
    )
    handle = CompositorHandle.start(config, pose_fd)

    def presented() -> int:
        for _ in range(10_000):
            record = pose.read()
            if record is not None:
                return record.frame
            time.sleep(0.0005)
        raise AssertionError("the pose handoff never settled")

    exits = []
    try:
        assert handle.gpu_images[0].offered, handle.gpu_images[0].reason
        fd, spec = handle.layers[0]
        for hostile in HOSTILE:
            before = presented()
            child = SPAWN.Process(
                target=hostile,
                args=(PassedFd(fd), spec, handle.gpu_images_for_child(0)),
                daemon=True,
            )
            child.start()
            child.join(CHILD_TIMEOUT_S)
            exits.append((hostile.__name__, child.exitcode))
            deadline = time.monotonic() + CHILD_TIMEOUT_S
            while presented() < before + 30 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert handle.alive(), f"the compositor died after {hostile.__name__}: {exits}"
            assert presented() >= before + 30, f"the compositor stalled after {hostile.__name__}"
        stats = handle.stop()
    finally:
        handle.kill()
        pose.close()
        os.close(pose_fd)
    assert stats["frames"] > 90, exits
    assert stats["gl"]["rejected_images"] > 0, stats["gl"]  # the other size was refused
    assert stats["layers"]["game"]["last_error"], stats["layers"]["game"]


# --- the handoff message and the allocator's refusals (no GL needed) ----------------------


def make_images(**changes):  # noqa: ANN003, ANN201
    from engine.contracts.gpu_layer import GpuLayerImages

    values = dict(
        width=8, height=4, eyes=2, images=3, sizes=(128,) * 6,
        device_uuid=b"d" * 16, driver_uuid=b"v" * 16,
    )  # fmt: skip
    return GpuLayerImages(**{**values, **changes})


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_gpu_images_travel_with_their_fds_and_arrive_as_described():
    images = make_images(dedicated=False)
    fds = [os.memfd_create(f"image{i}") for i in range(images.count)]
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        send_gpu_images(left, GpuImagesOffer(images, tuple(fds), "made by a test"))
        got = recv_gpu_images(right)
        send_gpu_images(left, GpuImagesOffer(None, (), "no Vulkan here"))
        refused = recv_gpu_images(right)
    assert got.images == images and got.reason == "made by a test"
    assert len(got.fds) == 6 and not set(got.fds) & set(fds)  # the receiver's own copies
    assert [os.fstat(a).st_ino for a in got.fds] == [os.fstat(b).st_ino for b in fds]
    assert not refused.offered and refused.reason == "no Vulkan here"
    got.close()
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize(
    "damage",
    ["magic", "truncated", "count", "size", "fds"],
)
def test_a_malformed_gpu_images_message_is_refused_and_its_fds_closed(damage):
    import struct

    from engine.contracts import gpu_layer

    images = make_images()
    head = gpu_layer._HEAD.pack(gpu_layer.MAGIC, 1, 8, 4, 2, 3, 1, 1, 1, b"d" * 16, b"v" * 16, 6, 0)
    sizes = [128] * 6
    fd_count = 6
    if damage == "magic":
        head = b"NOTMAGIC" + head[8:]
    elif damage == "count":
        head = head[:72] + struct.pack("<II", 5, 0)
    elif damage == "size":
        sizes[3] = 3  # less than one eye's pixels
    elif damage == "fds":
        fd_count = 5
    message = head + b"".join(struct.pack("<Q", s) for s in sizes)
    if damage == "truncated":
        message = message[:-4]
    fds = [os.memfd_create("image") for _ in range(fd_count)]
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        socket.send_fds(left, [message], fds)
        for fd in fds:
            os.close(fd)
        before = open_fd_count()
        with pytest.raises(ValueError):
            recv_gpu_images(right)
        assert open_fd_count() == before  # every received fd was closed again
    assert images.count == 6


def test_without_a_vulkan_loader_the_allocator_says_so():
    from engine.compositor.gpu_images import GpuImagesUnavailable, VulkanImageAllocator

    with pytest.raises(GpuImagesUnavailable, match="no Vulkan loader"):
        VulkanImageAllocator.for_uuids([b"d" * 16], b"v" * 16, library="libvulkan-absent.so.1")


def test_the_allocator_refuses_a_device_the_gl_context_does_not_run_on(allocator):
    from engine.compositor.gpu_images import GpuImagesUnavailable, VulkanImageAllocator

    with pytest.raises(GpuImagesUnavailable, match="no Vulkan device matches the GL context"):
        VulkanImageAllocator.for_uuids([b"another device.."], allocator.chosen.driver_uuid)


def test_a_context_without_the_images_device_refuses_to_import_them(gl):
    from engine.gpu.gl_memory import import_problem

    problem = import_problem(make_images())
    assert problem is not None and ("device" in problem or "not offered" in problem)


def test_the_gl_context_still_draws_after_an_allocator_is_closed_or_refused(gl, allocator):
    """On NVIDIA, destroying a Vulkan instance ended the process's EGL context (nothing
    current, every GL call ignored): a compositor that refuses a device, or closes its
    allocator, must keep a GL context that draws."""
    from engine.compositor.gpu_images import GpuImagesUnavailable, VulkanImageAllocator
    from engine.gpu.gl_memory import context_uuids

    devices, driver = context_uuids()
    with pytest.raises(GpuImagesUnavailable):
        VulkanImageAllocator.for_uuids([b"another device.."], driver)
    VulkanImageAllocator.for_current_context().close()
    assert context_uuids() == (devices, driver)
    texture = gl.GLuint()
    gl.glGenTextures(1, ctypes.byref(texture))
    gl.glBindTexture(gl.GL_TEXTURE_2D, texture.value)
    gl.glTexImage2D(
        gl.GL_TEXTURE_2D, 0, gl.GL_RGBA8, 4, 4, 0, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE, None
    )
    fbo = gl.GLuint()
    gl.glGenFramebuffers(1, ctypes.byref(fbo))
    gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo.value)
    gl.glFramebufferTexture2D(
        gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_TEXTURE_2D, texture.value, 0
    )
    gl.glViewport(0, 0, 4, 4)
    gl.glClearColor(0.0, 1.0, 0.0, 1.0)
    gl.glClear(gl.GL_COLOR_BUFFER_BIT)
    pixel = np.zeros(4, np.uint8)
    gl.glReadPixels(1, 1, 1, 1, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE, pixel.ctypes.data)
    gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
    gl.glDeleteFramebuffers(1, ctypes.byref(fbo))
    gl.glDeleteTextures(1, ctypes.byref(texture))
    assert tuple(pixel) == (0, 255, 0, 255)


def test_a_writer_attaching_to_a_published_layer_never_draws_into_the_image_shown():
    """A restarted game attaches to the block whose latest image the compositor may still
    be sampling in place: its first frame goes into the image after that one."""
    for published in range(SPEC.images):
        fd = create_layer_fd(SPEC, "restart")
        first = LayerWriter(fd, SPEC, ImageStorage.GPU_MEMORY)
        for frame in range(published + 1):
            first.publish(first.acquire(), frame, frame_eyes(frame, 2), 0)
        reader = LayerReader(fd)
        shown = reader.read()
        first.close()  # the game dies
        second = LayerWriter(fd, SPEC, ImageStorage.GPU_MEMORY)
        assert shown is not None and shown.index == published
        assert second.acquire().index == (published + 1) % SPEC.images
        assert reader.read() is None  # nothing of the new game's yet, the old frame stays
        second.close(), reader.close(), os.close(fd)


def test_a_gpu_layer_frame_has_no_pixels_and_cannot_be_copied_out():
    fd = create_layer_fd(SPEC, "gpu-frame")
    writer, reader = LayerWriter(fd, SPEC, ImageStorage.GPU_MEMORY), LayerReader(fd)
    slot = writer.acquire()
    assert slot.pixels is None
    writer.publish(slot, 7, frame_eyes(7, 2), 0)
    frame = reader.read()
    assert frame is not None and frame.storage is ImageStorage.GPU_MEMORY
    assert frame.pixels is None and frame.frame == 7
    assert reader.read_into(np.empty(SPEC.shape, np.uint8)) is None
    assert "GPU memory" in reader.last_error
    writer.close(), reader.close(), os.close(fd)


def test_auto_keeps_a_cpu_renderers_layers_in_shared_memory_and_says_why(allocator):
    from engine.compositor.gpu_images import CPU_RENDERER_REASON, open_allocator

    assert open_allocator("auto", software_renderer=True) == (None, CPU_RENDERER_REASON)
    assert open_allocator("off", software_renderer=False)[0] is None
    for mode in ("on", "auto"):
        on_a_gpu, why = open_allocator(mode, software_renderer=mode == "on")
        assert on_a_gpu is not None and why.startswith("Vulkan on"), why
        on_a_gpu.close()
    with pytest.raises(ValueError):
        open_allocator("sometimes")

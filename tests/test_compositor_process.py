"""The compositor as a real process: it presents with or without a producer, shows what a
producer publishes, survives a producer that scribbles over its layer, captures PNGs and
reports the priority it was granted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import load_png
from engine.compositor.process import CompositorConfig, CompositorHandle
from engine.contracts.handoff import PoseHandoffReader
from engine.contracts.layer import LayerWriter, PixelFormat
from engine.contracts.shm import create_block_fd

SMALL = CompositorConfig(eye_width=64, eye_height=48, layers=(("game", 32, 24),), grace_s=0.05)
TIMEOUT_S = 30


def presented(pose: PoseHandoffReader) -> int:
    """The compositor's newest frame number. A read may come back empty (the writer was
    mid-record every time: the reader never waits for it); then it is simply read again."""
    for _ in range(10_000):
        record = pose.read()
        if record is not None:
            return record.frame
        time.sleep(0.0005)
    raise AssertionError("the pose handoff never settled")


def wait_for(predicate, timeout_s: float = TIMEOUT_S) -> bool:  # noqa: ANN001
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def publish_frames(handle: CompositorHandle, pose: PoseHandoffReader, count: int, color) -> None:  # noqa: ANN001
    fd, spec = handle.layers[0]
    writer = LayerWriter(fd, spec)
    published, last = 0, None
    give_up = time.monotonic() + TIMEOUT_S
    while published < count and time.monotonic() < give_up:
        record = pose.read()
        if record is None or record.frame == last:
            time.sleep(0.001)
            continue
        last = record.frame
        slot = writer.acquire()
        slot.pixels[...] = np.asarray(color)[spec.format.rgba_order]  # the header's order
        writer.publish(slot, record.frame, record.sample.eyes, time.monotonic_ns())
        published += 1
    writer.close()
    assert published == count


def test_compositor_presents_shows_a_layer_and_captures_both_eyes(tmp_path):
    pose_fd = create_block_fd("pose")
    pose = PoseHandoffReader(pose_fd)
    capture = tmp_path / "capture.png"
    handle = CompositorHandle.start(
        CompositorConfig(**{**SMALL.__dict__, "capture_path": str(capture)}), pose_fd
    )
    try:
        assert handle.ready["priority"]["cpu"]  # SCHED_FIFO, a nice value, or a refusal
        # Asked for HIGH: granted where offered (NVIDIA), reported absent elsewhere (Mesa).
        assert handle.ready["priority"]["gpu"].startswith(("not offered", "HIGH granted"))
        assert handle.ready["priority"]["gpu_reset"]
        # The layers are in the format this driver uploads fastest, and say how.
        assert handle.ready["layer_format"] == handle.layers[0][1].format.name
        assert handle.ready["upload"].startswith(handle.ready["layer_format"] + " as GL_")
        if "llvmpipe" in handle.ready["gl"]:
            assert handle.ready["layer_format"] == "BGRA8"  # Mesa stores BGRA
        assert wait_for(lambda: presented(pose) > 5)
        publish_frames(handle, pose, 20, (200, 30, 40, 255))
        frame = presented(pose)
        assert wait_for(lambda: presented(pose) > frame + 20)  # past deadline + grace
        stats = handle.stop()
    finally:
        handle.kill()
    assert stats["frames"] > 20
    assert stats["layers"]["game"]["fresh_frames"] > 0
    assert stats["gl"]["uploads"] > 0
    # The game layer and the preview layer (CompositorConfig.preview), in one format.
    assert stats["gl"]["layer_formats"] == [handle.ready["layer_format"]] * 2
    assert stats["priority"] == handle.ready["priority"]
    assert stats["capture"] == str(capture)
    image = load_png(capture)
    assert image.shape == (48, 128, 4)  # two eyes side by side
    # After the producer stopped the layer was excluded: the capture shows the fallback
    # (sky on top, floor below), not the last red frame.
    assert stats["layers"]["game"]["state"] == "excluded"
    assert not np.all(image[5, 32, :3] == (200, 30, 40))


@pytest.mark.parametrize("layer_format", list(PixelFormat))
def test_a_fresh_layer_is_what_the_capture_shows(tmp_path, layer_format):
    pose_fd = create_block_fd("pose")
    pose = PoseHandoffReader(pose_fd)
    capture = tmp_path / "capture.png"
    options = {"capture_path": str(capture), "grace_s": 60, "layer_format": layer_format}
    config = CompositorConfig(**{**SMALL.__dict__, **options})
    handle = CompositorHandle.start(config, pose_fd)
    try:
        publish_frames(handle, pose, 10, (200, 30, 40, 255))
        stats = handle.stop()
    finally:
        handle.kill()
    assert stats["layers"]["game"]["state"] in ("fresh", "reprojected")
    image = load_png(capture)
    for x in (32, 96):  # the centre of each eye
        assert tuple(image[24, x, :3]) == (200, 30, 40)


def test_a_scribbled_layer_is_excluded_and_the_compositor_goes_on():
    pose_fd = create_block_fd("pose")
    pose = PoseHandoffReader(pose_fd)
    handle = CompositorHandle.start(SMALL, pose_fd)
    try:
        publish_frames(handle, pose, 5, (0, 255, 0, 255))
        import mmap

        fd, spec = handle.layers[0]
        block = mmap.mmap(fd, spec.block_size)
        block[:4096] = np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()
        frame = presented(pose)
        # Deadline (2 periods) + grace (0.05 s) is about 7 frames; leave plenty of room.
        assert wait_for(lambda: presented(pose) > frame + 60)
        stats = handle.stop()
    finally:
        handle.kill()
    layer = stats["layers"]["game"]
    assert layer["state"] == "excluded" and layer["excluded_frames"] > 0
    assert layer["last_error"]  # why it could not be read


def test_the_compositor_process_never_imports_the_game_or_the_loader():
    code = (
        "import sys, engine.compositor.process\n"
        "bad = [m for m in sys.modules if m.startswith(('engine.game', 'engine.loader'))]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.fixture
def virtual_display(monkeypatch):  # noqa: ANN001, ANN201
    """A real X server (Xvfb) for the mirror window; skipped where Xvfb is not installed."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    display = f":{150 + os.getpid() % 100}"
    server = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socket_path = Path(f"/tmp/.X11-unix/X{display[1:]}")
    if not wait_for(socket_path.exists, 10):
        server.kill()
        pytest.skip("Xvfb did not start")
    monkeypatch.setenv("DISPLAY", display)
    yield display
    server.terminate()
    server.wait(5)


def test_the_mirror_window_shows_the_composed_eyes_on_a_real_display(tmp_path, virtual_display):
    pose_fd = create_block_fd("pose")
    pose = PoseHandoffReader(pose_fd)
    capture = tmp_path / "capture.png"
    config = CompositorConfig(
        **{**SMALL.__dict__, "capture_path": str(capture), "grace_s": 60, "window": True}
    )
    handle = CompositorHandle.start(config, pose_fd)
    try:
        assert "GLX" in handle.ready["priority"]["gpu"]  # a windowed (GLX) context, not EGL
        publish_frames(handle, pose, 10, (30, 200, 40, 255))
        frame = presented(pose)
        assert wait_for(lambda: presented(pose) > frame + 10)  # it keeps presenting
        stats = handle.stop()
    finally:
        handle.kill()
    assert stats["frames"] > 10
    image = load_png(capture)
    assert tuple(image[24, 32, :3]) == (30, 200, 40)

"""The preview layer beside the live scene: in the headset a panel drawn over the scene
(real GL), in the mirror view and the capture live on the left and preview on the right,
labelled; nothing changes while it does not publish; a late preview goes before the live
layer does. Producers are real threads publishing into the real compositor's layers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import load_png
from engine.compositor.process import CompositorConfig, CompositorHandle
from engine.contracts.handoff import PoseHandoffReader
from engine.contracts.layer import LayerWriter
from engine.contracts.shm import create_block_fd
from test_compositor_process import virtual_display  # noqa: F401  (a fixture)

LIVE = (200, 30, 40, 255)
PREVIEW = (30, 60, 220, 255)
#: Eyes tall enough for the mirror's text (mirror.MIN_TEXT_HEIGHT), the layer as large. A
#: deadline of 10 periods: a producer thread on a loaded CI machine is not late by accident.
CONFIG = CompositorConfig(
    eye_width=160,
    eye_height=120,
    layers=(("game", 160, 120),),
    grace_s=60.0,
    deadline_periods=10.0,
    adapt_lead=False,
)
#: Compositor frames that are surely past that deadline.
PAST_DEADLINE = 40
TIMEOUT_S = 30


class Producer:
    """A thread publishing one colour into a layer at every new pose frame until stopped."""

    def __init__(self, layer: tuple[int, object], pose_fd: int, color) -> None:  # noqa: ANN001
        fd, spec = layer
        self.writer = LayerWriter(fd, spec)
        self.pose = PoseHandoffReader(pose_fd)
        self.pixels = np.asarray(color, np.uint8)[spec.format.rgba_order]  # the header's order
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            record = self.pose.read()
            if record is None or record.frame == last:
                time.sleep(0.001)
                continue
            last = record.frame
            slot = self.writer.acquire()
            slot.pixels[...] = self.pixels
            self.writer.publish(slot, record.frame, record.sample.eyes, time.monotonic_ns())
            self.published += 1

    def wait_for(self, frames: int) -> None:
        give_up = time.monotonic() + TIMEOUT_S
        target = self.published + frames
        while self.published < target:
            assert time.monotonic() < give_up, "the producer stopped getting poses"
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.writer.close()
        self.pose.close()


def wait_frames(pose: PoseHandoffReader, frames: int) -> None:
    """Let the compositor present ``frames`` more frames."""
    give_up = time.monotonic() + TIMEOUT_S
    start = None
    while time.monotonic() < give_up:
        record = pose.read()
        if record is not None:
            start = record.frame if start is None else start
            if record.frame >= start + frames:
                return
        time.sleep(0.002)
    raise AssertionError("the compositor stopped presenting")


def run(tmp_path, steps, config: CompositorConfig = CONFIG):  # noqa: ANN001, ANN201
    """Start a compositor capturing to a file; ``steps(handle, pose_fd, pose)`` drives the
    producers (and returns those still running at stop); return (stats, capture)."""
    pose_fd = create_block_fd("pose")
    pose = PoseHandoffReader(pose_fd)
    capture = tmp_path / "capture.png"
    handle = CompositorHandle.start(
        CompositorConfig(**{**config.__dict__, "capture_path": str(capture)}), pose_fd
    )
    running: list[Producer] = []
    try:
        running = steps(handle, pose_fd, pose)
        stats = handle.stop()  # producers still publishing: the last frame shows them
    finally:
        for producer in running:
            producer.stop()
        handle.kill()
        pose.close()
    return stats, load_png(capture)


def colour_at(image: np.ndarray, x: int, y: int = 60) -> tuple[int, int, int]:
    return tuple(int(c) for c in image[y, x, :3])


def has_text(region: np.ndarray) -> bool:
    """Whether a region holds white (label) pixels: the scene's colours have none."""
    return bool(np.any(np.all(region[..., :3] > 200, axis=-1)))


def has_hud(region: np.ndarray) -> bool:
    """Whether a region holds the HUD's yellow: the scene's colours have no such green."""
    return bool(np.any(region[..., 1] > 150))


def test_the_handle_gives_the_preview_layer_like_a_game_layer():
    pose_fd = create_block_fd("pose")
    handle = CompositorHandle.start(CONFIG, pose_fd)
    try:
        assert len(handle.layers) == 1  # the game layers, as before
        assert handle.preview_index == 1
        fd, spec = handle.preview_layer
        assert spec == handle.layers[0][1]  # the same spec as the game's
        offer = handle.gpu_images_for_child(handle.preview_index)
        assert offer.offered == handle.gpu_images[0].offered  # where the game's are
    finally:
        handle.kill()
    no_preview = CompositorHandle.start(
        CompositorConfig(**{**CONFIG.__dict__, "preview": False}), pose_fd
    )
    try:
        assert no_preview.preview_layer is None and no_preview.preview_index is None
    finally:
        no_preview.kill()


def test_a_publishing_preview_splits_the_capture_into_live_and_preview(tmp_path):
    def steps(handle, pose_fd, pose):  # noqa: ANN001, ANN202
        live = Producer(handle.layers[0], pose_fd, LIVE)
        live.wait_for(10)
        preview = Producer(handle.preview_layer, pose_fd, PREVIEW)
        preview.wait_for(30)
        return [live, preview]

    stats, image = run(tmp_path, steps)
    assert image.shape == (120, 320, 4)
    # Live on the left without the headset's panel over it, the preview on the right.
    assert colour_at(image, 80) == LIVE[:3]
    assert colour_at(image, 240) == PREVIEW[:3]
    # Each half labelled at its top (rows are bottom first).
    assert has_text(image[100:, :160]) and has_text(image[100:, 160:])
    assert stats["gl"]["preview_draws"] > 0  # drawn in the headset too
    layers = stats["layers"]
    assert layers["preview"]["published_frames"] >= 20  # some arrive two between frames
    assert layers["preview"]["published_fps"] > 0 and layers["game"]["published_fps"] > 0


def test_a_stopped_preview_returns_the_view_to_live_only(tmp_path):
    def steps(handle, pose_fd, pose):  # noqa: ANN001, ANN202
        live = Producer(handle.layers[0], pose_fd, LIVE)
        preview = Producer(handle.preview_layer, pose_fd, PREVIEW)
        preview.wait_for(20)
        preview.stop()
        live.wait_for(PAST_DEADLINE)
        return [live]

    stats, image = run(tmp_path, steps)
    assert stats["layers"]["preview"]["state"] == "excluded"
    assert stats["preview"]["exclusions_late"] >= 1
    # Both halves are the live game's eyes again, with no labels.
    assert colour_at(image, 80) == LIVE[:3] and colour_at(image, 240) == LIVE[:3]
    assert not has_text(image[100:, 160:])


def test_a_late_preview_is_excluded_before_the_live_one(tmp_path):
    def steps(handle, pose_fd, pose):  # noqa: ANN001, ANN202
        live = Producer(handle.layers[0], pose_fd, LIVE)
        preview = Producer(handle.preview_layer, pose_fd, PREVIEW)
        preview.wait_for(20)
        live.stop()  # both late from the same moment
        preview.stop()
        wait_frames(pose, PAST_DEADLINE)
        return []

    stats, image = run(tmp_path, steps)
    # The live layer is still reprojected from its last image (its grace is 60 s); the
    # preview, which has none, is gone.
    assert stats["layers"]["game"]["state"] == "reprojected"
    assert stats["layers"]["preview"]["state"] == "excluded"
    assert colour_at(image, 80) == LIVE[:3] and colour_at(image, 240) == LIVE[:3]


def test_without_a_preview_the_capture_is_the_two_eyes_as_before(tmp_path):
    def steps(handle, pose_fd, pose):  # noqa: ANN001, ANN202
        live = Producer(handle.layers[0], pose_fd, LIVE)
        live.wait_for(20)
        return [live]

    stats, image = run(tmp_path, steps)
    assert stats["layers"]["preview"]["state"] == "waiting"
    assert stats["gl"]["preview_draws"] == 0
    assert colour_at(image, 80) == LIVE[:3] and colour_at(image, 240) == LIVE[:3]
    assert has_hud(image[:30, :160])  # the HUD, bottom left
    assert not has_text(image[100:, :])  # no labels


# --- the panel in the headset (the GL composer, in this process) ------------------------


def test_the_preview_is_a_panel_over_the_scene_in_each_eye(gl):
    from engine.compositor.loop import LayerDraw
    from engine.compositor.process import GLComposer
    from engine.compositor.quad import quad_in_front
    from engine.contracts.layer import LayerSpec
    from engine.pose.base import EyeView, Fov, Pose

    w, h = 160, 120
    spec = LayerSpec(width=w, height=h)
    composer = GLComposer(w, h, [spec, spec], preview_layer=1)
    fov = Fov.for_image(w, h)
    eyes = (EyeView(Pose((-0.03, 1.6, 0.0)), fov), EyeView(Pose((0.03, 1.6, 0.0)), fov))

    class Source:
        def still_valid(self, frame):  # noqa: ANN001
            return True

    class Frame:
        def __init__(self, color) -> None:  # noqa: ANN001
            self.index, self.seq, self.frame, self.eyes = 0, 2, 1, eyes
            self.pixels = np.empty((2, h, w, 4), np.uint8)
            self.pixels[...] = np.asarray(color, np.uint8)[spec.format.rgba_order]

    quad = quad_in_front(Pose((0.0, 1.6, 0.0)), aspect=h / w)
    draws = [
        LayerDraw(0, Frame(LIVE), Source(), False),
        LayerDraw(1, Frame(PREVIEW), Source(), False, quad=quad),
    ]
    composer.compose(draws, eyes, fallback=False)
    composer.finish()
    out = composer.read_eyes()
    # 0.8 m wide at 1.5 m in a 90 degree view: about 27% of the eye's width, centred.
    for eye in out:
        assert tuple(eye[h // 2, w // 2, :3]) == PREVIEW[:3]
        assert tuple(eye[h // 2, 10, :3]) == LIVE[:3]
        assert tuple(eye[h // 2, w - 10, :3]) == LIVE[:3]
        row = np.all(eye[h // 2, :, :3] == PREVIEW[:3], axis=-1)
        assert 0.2 * w < row.sum() < 0.35 * w
    # The mirror view: drawn again for a capture, the live eye without the panel.
    composer.render_mirror()
    mirror = composer.read_mirror()
    assert tuple(mirror[h // 2, w // 2, :3]) == LIVE[:3]
    assert tuple(mirror[h // 2, w + w // 2, :3]) == PREVIEW[:3]
    # Shed (time is short): the eyes are the scene alone.
    composer.compose(
        [draws[0], LayerDraw(1, draws[1].image, Source(), False, quad, True)], eyes, False
    )
    composer.finish()
    assert tuple(composer.read_eyes()[0][h // 2, w // 2, :3]) == LIVE[:3]
    left, right, split = composer.mirror_halves()  # the mirror: the live eye as it is
    assert split and left == composer.eye_textures()[0]


@pytest.mark.parametrize("hud", [True, False])
def test_the_hud_can_be_turned_off(tmp_path, hud):
    config = CompositorConfig(**{**CONFIG.__dict__, "hud": hud})

    def steps(handle, pose_fd, pose):  # noqa: ANN001, ANN202
        live = Producer(handle.layers[0], pose_fd, LIVE)
        live.wait_for(20)
        return [live]

    _, image = run(tmp_path, steps, config)
    assert has_hud(image[:30, :160]) is hud


# --- the words of the mirror view (pure: the loop with a manual clock) -------------------


def test_the_labels_and_hud_say_each_layers_frame_rate_and_the_games_state():
    from engine.compositor.mirror import MirrorText
    from test_compositor_loop import make_preview_loop

    loop, clock, game, preview, _ = make_preview_loop()
    text = MirrorText(loop)
    for frame in range(150):  # 100 Hz; the preview publishes every other frame
        game.publish()
        if frame % 2 == 0:
            preview.publish()
        loop.step()
    assert text.refresh()
    assert text.labels == ("live 100 fps", "preview 50 fps")
    assert text.hud == ("compositor 100 fps, missed 0", "game running, 100 fps")
    assert not text.refresh()  # within REFRESH_NS: nothing recomputed, nothing to lay out
    # The game stops; the supervisor says it is restarting: that is what the HUD says
    # until the new game's first image, then "running" again by itself.
    text.tell("restarting")
    for _ in range(60):
        loop.step()
    text.refresh()
    assert text.hud[1].startswith("game restarting, ")
    game.publish()
    loop.step()
    clock.advance(300_000_000)
    text.refresh()
    assert text.hud[1].startswith("game running, ")
    text.toggle_hud()
    text.refresh()
    assert text.hud == ()


def test_the_games_state_follows_its_layer_unless_the_supervisor_said_otherwise():
    from engine.compositor.loop import LayerState
    from engine.compositor.mirror import game_state

    assert game_state(LayerState.WAITING, None) == "starting"
    assert game_state(LayerState.REPROJECTED, None) == "late"
    assert game_state(LayerState.EXCLUDED, None) == "excluded"
    assert game_state(LayerState.EXCLUDED, "restarting") == "restarting"
    assert game_state(LayerState.FRESH, "restarting") == "running"


def test_the_compositor_takes_the_games_state_and_goes_on(tmp_path):
    def steps(handle, pose_fd, pose):  # noqa: ANN001, ANN202
        live = Producer(handle.layers[0], pose_fd, LIVE)
        live.wait_for(5)
        handle.tell_game_state("restarting")
        handle.tell_game_state("no such state")  # ignored
        live.wait_for(10)  # it goes on presenting (the producer is paced by its frames)
        return [live]

    stats, _ = run(tmp_path, steps)
    assert stats["frames"] >= 15 and stats["failed_frames"] == 0  # 5 + 10 poses taken


@pytest.mark.usefixtures("virtual_display")
def test_the_mirror_window_shows_live_and_preview_on_a_real_display(tmp_path):
    config = CompositorConfig(**{**CONFIG.__dict__, "window": True})

    def steps(handle, pose_fd, pose):  # noqa: ANN001, ANN202
        live = Producer(handle.layers[0], pose_fd, LIVE)
        preview = Producer(handle.preview_layer, pose_fd, PREVIEW)
        preview.wait_for(30)
        return [live, preview]

    stats, image = run(tmp_path, steps, config)
    assert stats["failed_frames"] == 0, stats["last_failure"]  # the window's text drew
    assert colour_at(image, 80) == LIVE[:3] and colour_at(image, 240) == PREVIEW[:3]

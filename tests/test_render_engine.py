"""Rendering inside a running engine: the render system, the layer, live shaders, capture."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_until, write
from engine.contracts.layer import LayerReader
from engine.loader.history import VersionStatus
from engine.pose.base import Pose
from engine.render.stage import RenderSettings

pytest.importorskip("pyglet")

SCENE = """
from engine.render.components import Material, Mesh, Transform

def setup(world):
    world.create_entity(Transform(position=(0.0, 1.6, -3.0)), Mesh("cube"),
                        Material(color=(1.0, 0.0, 0.0, 1.0)))
"""

SETTINGS = RenderSettings(width=96, height=64, default_head=Pose((0.0, 1.6, 0.0)))


class StillHead:
    """A pose source that never moves: the cube stays in the middle of both eyes."""

    def sample(self, frame, display_time_ns):
        from engine.pose.base import PoseSample
        from engine.render.camera import eyes_from_head

        head = Pose((0.0, 1.6, 0.0))
        return PoseSample(frame, display_time_ns, head, eyes_from_head(head))


def centre(image: np.ndarray) -> tuple[int, int, int]:
    h, w = image.shape[:2]
    return tuple(int(c) for c in image[h // 2, w // 2, :3])


@pytest.mark.parametrize("readback", ["sync", "pbo"])
def test_render_system_publishes_both_eyes_with_the_frames_pose(
    project, make_engine, readback
) -> None:
    from dataclasses import replace

    write(project / "game.py", SCENE)
    settings = replace(SETTINGS, readback=readback)
    eng = make_engine(project, render=settings, pose_source=StillHead())
    assert eng.render_stage.renderer.readback == readback
    for _ in range(3):
        eng.step()
    reader = LayerReader(eng.render_stage.layer_fd)
    frame = reader.read()
    assert frame is not None, reader.last_error
    assert frame.frame == 3
    left, right = np.array(frame.pixels)
    r, g, b = centre(left)
    assert r > 100 and g < 40 and b < 40  # the red cube, lit
    assert centre(right)[0] > 100
    assert not np.array_equal(left, right)  # the eyes are offset
    corner = tuple(int(c) for c in left[0, 0, :3])
    assert corner != centre(left)
    expected = StillHead().sample(3, 0).eyes
    assert frame.eyes[0].pose.position == pytest.approx(expected[0].pose.position)
    assert frame.eyes[1].pose.position == pytest.approx(expected[1].pose.position)
    assert eng.stats()["systems"]["render.render"]["calls"] == 3
    reader.close()


def test_a_bgra_layer_holds_the_frame_blue_first_and_captures_stay_rgba(
    project, make_engine
) -> None:
    from dataclasses import replace

    from engine.contracts.layer import PixelFormat

    write(project / "game.py", SCENE)
    settings = replace(SETTINGS, pixel_format=PixelFormat.BGRA8)
    eng = make_engine(project, render=settings, pose_source=StillHead())
    eng.step()
    assert eng.render_stage.spec.format is PixelFormat.BGRA8
    reader = LayerReader(eng.render_stage.layer_fd)
    frame = reader.read()
    reader.close()
    b, g, r = centre(frame.pixels[0])
    assert r > 100 and g < 40 and b < 40  # the red cube, stored blue first
    image = eng.render_stage.latest_image()
    h, w = image.shape[:2]
    r, g, b = (int(c) for c in image[h // 2, w // 4, :3])  # the left eye's centre
    assert r > 100 and g < 40 and b < 40


GREEN = """#version 330 core
in vec3 v_normal;
in vec3 v_world_position;
uniform vec4 u_color;
uniform vec3 u_light_direction;
uniform float u_ambient;
out vec4 frag_color;
void main() {
    frag_color = vec4(0.0, 1.0, 0.0, 1.0);
}
"""


def test_shader_edits_swap_live_and_broken_ones_keep_the_last_good(project, make_engine) -> None:
    write(project / "game.py", SCENE)
    eng = make_engine(project, render=SETTINGS, pose_source=StillHead())
    eng.start_watching()
    eng.step()

    def latest_centre():  # of the left eye (the image is both eyes side by side)
        return centre(eng.render_stage.latest_image()[:, : SETTINGS.width])

    assert latest_centre()[0] > 100
    frag = write(project / "shaders" / "basic.frag", GREEN)
    run_until(eng, lambda: latest_centre() == (0, 255, 0))
    broken = GREEN.replace("frag_color = vec4(0.0, 1.0, 0.0, 1.0);", "frag_color = oops;")
    frag.write_text(broken)
    run_until(eng, lambda: any(not s.ok for s in eng.shader_swaps))
    for _ in range(3):
        eng.step()
    assert latest_centre() == (0, 255, 0)  # the last good program keeps drawing
    error = next(s for s in eng.shader_swaps if not s.ok).error
    assert str(frag) in str(error) and ":9:" in str(error)  # the line of `oops`
    h = eng.history_store.unit("shaders", "basic.frag", suffix=".frag")
    assert [v.status for v in h.versions][-1] is VersionStatus.ERROR
    assert h.active_number == 1
    # Shaders share the modules' undo: back to the built-in look, then forward again.
    with pytest.raises(LookupError):
        eng.undo("basic.frag")  # v1 is the first project version: nothing before it
    frag.write_text(GREEN.replace("0.0, 1.0, 0.0", "0.0, 0.0, 1.0"))
    run_until(eng, lambda: latest_centre() == (0, 0, 255))
    assert eng.undo("basic.frag") == 1
    eng.step()
    assert latest_centre() == (0, 255, 0)
    assert eng.redo("basic.frag") == 3
    eng.step()
    assert latest_centre() == (0, 0, 255)


def test_cli_capture_writes_a_png_of_both_eyes(project, tmp_path) -> None:
    write(project / "game.py", SCENE)
    out = tmp_path / "cap.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.launcher.cli",
            "run",
            str(project),
            "--frames",
            "5",
            "--size",
            "80x60",
            "--capture",
            str(out),
            "--quiet",
            "--no-watch",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (160, 60)


GUILTY_CONTEXT_RESET = 0x8253


def test_a_lost_gl_context_is_made_again_and_the_game_draws_on(project, make_engine) -> None:
    """A GPU reset cannot be provoked here: the stage is told of one (the reset status it
    reads is injected), and everything after that is real: a new context, the project's
    running shader built again in it, frames drawn and published from it."""
    from pyglet import gl

    write(project / "game.py", SCENE)
    write(project / "shaders" / "basic.frag", GREEN)
    messages: list[str] = []
    eng = make_engine(project, render=SETTINGS, pose_source=StillHead(), report=messages.append)
    stage = eng.render_stage
    statuses = [0]
    stage._reset_status = lambda: statuses[-1]
    eng.step()
    assert centre(stage.latest_image()[:, : SETTINGS.width]) == (0, 255, 0)
    before = gl.current_context
    statuses.append(GUILTY_CONTEXT_RESET)
    # The status is read between frames: the next frame starts with a new context.
    real_status = stage._reset_status
    stage._reset_status = lambda: statuses.pop() if len(statuses) > 1 else real_status()
    published = stage.last_frame
    eng.step()
    assert stage.context_resets == 1
    assert gl.current_context is not before
    assert any("GL context lost (GL_GUILTY_CONTEXT_RESET)" in m for m in messages)
    eng.step()
    assert stage.last_frame > published  # frames are published again
    assert centre(stage.latest_image()[:, : SETTINGS.width]) == (0, 255, 0)  # the project shader


def test_a_frame_whose_pixels_never_arrive_is_not_published(project, make_engine) -> None:
    write(project / "game.py", SCENE)
    eng = make_engine(project, render=SETTINGS, pose_source=StillHead())
    stage = eng.render_stage
    eng.step()
    published = stage.last_frame
    read = stage.renderer.read
    stage.renderer.read = lambda frame, destinations, timeout_ns: None  # a fence never signals
    eng.step()
    assert stage.late_readbacks == 1 and stage.last_frame == published
    assert stage.context_lost is None  # the context itself is fine: the next frame draws
    stage.renderer.read = read
    eng.step()
    assert stage.last_frame > published

"""Assets with real files and real GL: meshes and textures from the project folder,
large OBJ files parsed off the frame, and edited files reloaded with a last-good fallback."""

from __future__ import annotations

import esper
import numpy as np
import pytest

from engine.compositor.sinks import save_png
from engine.pose.base import Pose
from engine.render.camera import eyes_from_head
from engine.render.components import Material, Mesh, Transform

pytest.importorskip("pyglet")

W, H = 160, 120
HEAD = Pose((0.0, 1.6, 0.0))
WHITE = (1.0, 1.0, 1.0, 1.0)
TRIANGLE = "v -1 -1 0\nv 1 -1 0\nv 0 1 0\nvn 0 0 1\nf 1//1 2//1 3//1\n"
#: A square facing the camera, textured corner to corner, lit head-on (no shading).
SQUARE = (
    "v -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\n"
    "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvn 0 0 1\n"
    "f 1/1/1 2/2/1 3/3/1 4/4/1\n"
)


@pytest.fixture
def world(request):
    name = f"test-assets-{request.node.name}"
    esper.switch_world(name)
    yield esper
    esper.switch_world("default")
    esper.delete_world(name)


@pytest.fixture
def make_renderer(tmp_path):
    from engine.render.renderer import Renderer
    from engine.render.shaders import ShaderLibrary

    made = []

    def make(project, messages=None):
        report = messages.append if messages is not None else (lambda m: None)
        r = Renderer(W, H, ShaderLibrary(project), clear_color=(0, 0, 0, 1), report=report)
        # Lit head-on with no ambient term, a white texel shows at full brightness.
        r.light_direction, r.ambient = (0.0, 0.0, 1.0), 1.0
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def centre(renderer, world) -> tuple[int, int, int]:
    image = np.zeros((H, W, 4), np.uint8)
    renderer.render(world, eyes_from_head(HEAD)[:1], [image])
    return tuple(int(c) for c in image[H // 2, W // 2, :3])


def loaded_centre(renderer, world) -> tuple[int, int, int]:
    centre(renderer, world)  # starts the parses
    assert renderer.meshes.wait_loaded(timeout_s=120)
    return centre(renderer, world)


def solid_png(path, rgb) -> None:
    image = np.zeros((8, 8, 4), np.uint8)
    image[..., :3], image[..., 3] = rgb, 255
    save_png(image, path)


def test_a_relative_mesh_path_resolves_from_the_project_not_the_working_directory(
    tmp_path, world, make_renderer, monkeypatch
):
    project = tmp_path / "game"
    (project / "models").mkdir(parents=True)
    (project / "models" / "tri.obj").write_text(TRIANGLE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    renderer = make_renderer(project)
    world.create_entity(
        Transform((0.0, 1.6, -2.0)), Mesh(path="models/tri.obj"), Material((1, 0, 0, 1))
    )
    r, g, b = loaded_centre(renderer, world)
    assert r > 200 and g < 30 and b < 30


def test_an_obj_is_not_drawn_until_parsed_then_appears(tmp_path, world, make_renderer):
    (tmp_path / "tri.obj").write_text(TRIANGLE)
    renderer = make_renderer(tmp_path)
    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh(path="tri.obj"), Material(WHITE))
    assert centre(renderer, world) == (0, 0, 0)  # parsing elsewhere: this frame goes on
    assert renderer.meshes.loading() == 1
    assert renderer.meshes.wait_loaded(timeout_s=120)
    assert centre(renderer, world) == (255, 255, 255)


def test_an_edited_obj_reloads_and_a_broken_edit_keeps_the_last_good_mesh(
    tmp_path, world, make_renderer
):
    messages: list[str] = []
    path = tmp_path / "shape.obj"
    path.write_text(TRIANGLE)
    renderer = make_renderer(tmp_path, messages)
    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh(path="shape.obj"), Material(WHITE))
    assert loaded_centre(renderer, world) == (255, 255, 255)
    # Moved off the centre: the centre goes dark once the edit is parsed.
    path.write_text(TRIANGLE.replace("v 0 1 0", "v 1 -0.5 0"))
    renderer.queue_asset_change(path)
    assert loaded_centre(renderer, world) == (0, 0, 0)
    path.write_text(TRIANGLE)
    renderer.queue_asset_change(path)
    assert loaded_centre(renderer, world) == (255, 255, 255)
    path.write_text("v 1 2 3\nf 1 2 9\n")  # broken
    renderer.queue_asset_change(path)
    assert loaded_centre(renderer, world) == (255, 255, 255)
    assert centre(renderer, world) == (255, 255, 255)
    broken = [m for m in messages if "shape.obj" in m]
    assert len(broken) == 1 and "out of range" in broken[0] and "last good" in broken[0]


def test_a_texture_shows_edits_reload_and_a_broken_png_keeps_the_old_one(
    tmp_path, world, make_renderer
):
    messages: list[str] = []
    (tmp_path / "square.obj").write_text(SQUARE)
    png = tmp_path / "textures" / "skin.png"
    solid_png(png, (0, 200, 0))
    renderer = make_renderer(tmp_path, messages)
    world.create_entity(
        Transform((0.0, 1.6, -2.0)),
        Mesh(path="square.obj"),
        Material(WHITE, texture="textures/skin.png"),
    )
    assert loaded_centre(renderer, world) == (0, 200, 0)
    solid_png(png, (0, 0, 180))
    renderer.queue_asset_change(png)
    assert centre(renderer, world) == (0, 0, 180)
    png.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    renderer.queue_asset_change(png)
    assert centre(renderer, world) == (0, 0, 180)
    assert centre(renderer, world) == (0, 0, 180)
    assert len(messages) == 1 and "skin.png" in messages[0] and "last good" in messages[0]


def test_a_missing_texture_draws_untextured_and_is_reported_once(tmp_path, world, make_renderer):
    messages: list[str] = []
    renderer = make_renderer(tmp_path, messages)
    world.create_entity(
        Transform((0.0, 1.6, -2.0)), Mesh("cube"), Material((1, 0, 0, 1), texture="nope.png")
    )
    for _ in range(3):
        r, g, b = centre(renderer, world)
        assert r > 200 and g < 30 and b < 30
    assert len(messages) == 1 and "nope.png" in messages[0]

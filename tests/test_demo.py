"""The bundled demo looks like a 3D scene on a first run: lit spheres and cubes on a floor
with a grid, drawn by the real renderer (headless GL)."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from engine import Mesh
from engine.contracts.layer import LayerReader
from engine.game import bundled_example
from engine.pose.base import Pose, PoseSample
from engine.render.camera import eyes_from_head
from engine.render.stage import RenderSettings

pytest.importorskip("pyglet")

HEAD = Pose((0.0, 1.6, 0.0))  # standing, looking down -Z at the scene


class StillHead:
    def sample(self, frame, display_time_ns):  # noqa: ANN001, ANN201
        return PoseSample(frame, display_time_ns, HEAD, eyes_from_head(HEAD))


@pytest.fixture
def demo(tmp_path, make_engine):  # noqa: ANN001, ANN201
    copy = shutil.copytree(
        bundled_example(), tmp_path / "demo", ignore=shutil.ignore_patterns(".engine")
    )
    settings = RenderSettings(width=320, height=240, default_head=HEAD)
    eng = make_engine(copy, render=settings, pose_source=StillHead())
    for _ in range(3):
        eng.step()
    reader = LayerReader(eng.render_stage.layer_fd)
    frame = reader.read()
    assert frame is not None, reader.last_error
    left = np.array(frame.pixels)[0][::-1, :, :3].astype(int)  # top row first
    reader.close()
    return eng, left


def test_the_demo_has_spheres_cubes_and_a_floor_grid(demo):
    eng, _ = demo
    shapes = Counter(mesh.primitive for _, mesh in eng.world.get_component(Mesh))
    assert shapes["sphere"] >= 2 and shapes["plane"] == 1
    assert shapes["cube"] >= 2 + 10  # the cubes, and the grid's lines


def test_the_spheres_are_smoothly_lit(demo):
    _, left = demo
    r, g, b = left[..., 0], left[..., 1], left[..., 2]
    green = left[(g > 60) & (g > r + 40) & (g > b + 40)]  # the green sphere
    # Lit per pixel (diffuse + ambient, smooth normals): many shades, not a flat colour.
    assert len(green) > 200
    assert len(np.unique(green, axis=0)) > 30


def test_the_floor_shows_its_grid(demo):
    _, left = demo
    floor = left[-40:]  # the bottom rows: floor only, in front of the viewer
    brightness = floor.sum(axis=-1)
    light, dark = np.percentile(brightness, 90), np.percentile(brightness, 2)
    assert light > 200  # the lit grey floor
    assert dark < 0.7 * light  # and the lines across it, darker

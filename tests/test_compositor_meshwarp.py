"""The mesh timewarp (the compositor's path on CPU renderers): its cells against the exact
homography, the float32 exactness llvmpipe needs to take a cell as a rectangle, and the GL
pass against the exact GL pass on real (headless) GL."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import compose_layer_once, compose_layers_once
from engine.compositor.meshwarp import (
    EDGE_SLACK_TEXELS,
    MAX_FIT_ERROR,
    affine_error_px,
    cell_bounds,
    warp_mesh,
)
from engine.compositor.timewarp import fov_tangents, timewarp_homography
from engine.pose.base import EyeView, Fov, Pose
from engine.render.camera import axis_angle, quaternion_matrix, quaternion_multiply

FOV = Fov.for_image(320, 180)
TAN = fov_tangents(FOV)


def head(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> tuple[float, ...]:
    """An orientation turned by the given degrees about Y, then X, then Z."""
    q = axis_angle((0.0, 1.0, 0.0), math.radians(yaw))
    for axis, angle in (((1.0, 0.0, 0.0), pitch), ((0.0, 0.0, 1.0), roll)):
        q = quaternion_multiply(q, axis_angle(axis, math.radians(angle)))
    return q


def turn(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """The display-to-render rotation of a head turned so from where it rendered."""
    return quaternion_matrix(head(yaw, pitch, roll))


def cell_areas(mesh, width: int, height: int) -> float:
    """Total pixel area of a mesh's cells (each cell is two triangles)."""
    total = 0.0
    for verts in (mesh.rects, mesh.edges):
        for tri in verts.reshape(-1, 6, 4):
            (xa, ya), (xc, yc) = tri[0, :2], tri[2, :2]
            total += abs(xc - xa) * width / 2 * abs(yc - ya) * height / 2
    return total


def test_cell_bounds_cover_the_size_with_a_narrower_last_cell():
    assert cell_bounds(300, 128).tolist() == [0, 128, 256, 300]
    assert cell_bounds(256, 128).tolist() == [0, 128, 256]
    with pytest.raises(ValueError):
        cell_bounds(10, 0)


def test_equal_poses_give_every_cell_affine_and_exact_uv():
    h = timewarp_homography(np.eye(3), TAN, TAN)
    mesh = warp_mesh(h, 320, 180, (320, 180), cell=64)
    assert len(mesh.edges) == 0 and mesh.cells == 5 * 3
    xy, uv = mesh.rects[:, :2].astype(float), mesh.rects[:, 2:].astype(float)
    assert np.allclose(uv, (xy + 1.0) / 2.0, atol=1e-6)  # the image maps onto itself
    assert affine_error_px(h, 320, 180, (320, 180), cell=64) < 0.01


@settings(max_examples=40, deadline=None)
@given(
    yaw=st.floats(-3.0, 3.0),
    pitch=st.floats(-3.0, 3.0),
    roll=st.floats(-3.0, 3.0),
    cell=st.sampled_from([32, 64, 128]),
)
def test_cells_tile_the_eye_are_exactly_rectangles_and_stay_close_to_the_homography(
    yaw, pitch, roll, cell
):
    w, h = 320, 180
    homography = timewarp_homography(turn(yaw, pitch, roll), TAN, TAN)
    mesh = warp_mesh(homography, w, h, (w, h), cell=cell)
    assert cell_areas(mesh, w, h) == pytest.approx(w * h)  # every pixel in one cell
    quads = mesh.rects.reshape(-1, 6, 4)
    a, b, c, d = quads[:, 0], quads[:, 1], quads[:, 2], quads[:, 5]
    # Triangles ABC and ACD share a diagonal and are screen-aligned ...
    assert np.array_equal(quads[:, 3], a) and np.array_equal(quads[:, 4], c)
    assert np.array_equal(a[:, 1], b[:, 1]) and np.array_equal(b[:, 0], c[:, 0])
    assert np.array_equal(c[:, 1], d[:, 1]) and np.array_equal(d[:, 0], a[:, 0])
    # ... and their uv is exactly affine in float32: what llvmpipe checks bitwise.
    assert np.array_equal(a[:, 2:] - b[:, 2:], d[:, 2:] - c[:, 2:])
    assert np.array_equal(a[:, 2:] - d[:, 2:], b[:, 2:] - c[:, 2:])
    # Affine cells sample inside the image (up to the edge slack, plus the fit error the
    # fitted corners may add to the exact ones) and near the exact uv.
    slack = (EDGE_SLACK_TEXELS + MAX_FIT_ERROR) / np.array([w, h])
    assert np.all(mesh.rects[:, 2:] >= -slack - 1e-6)
    assert np.all(mesh.rects[:, 2:] <= 1.0 + slack + 1e-6)
    # The fit is checked at centre and corners; between them a projective map can bend a
    # little further (a quadratic's worst point lies between the checked ones).
    assert affine_error_px(homography, w, h, (w, h), cell=cell) <= 2 * MAX_FIT_ERROR


def test_cells_that_leave_the_image_take_the_exact_warp():
    homography = timewarp_homography(turn(6.0), TAN, TAN)  # about 20 px uncovered
    mesh = warp_mesh(homography, 320, 180, (320, 180), cell=16)
    assert len(mesh.edges) and len(mesh.rects)  # the middle still fits, the side does not
    uncovered = homography @ np.array([-1.0, 0.0, 1.0])  # the left edge, mid-height
    assert uncovered[0] / uncovered[2] < 0.0  # samples left of the image: must be exact
    left_column = mesh.edges[:, 0] == np.float32(-1.0)
    assert left_column.any()
    assert not mesh.edges[:, 2:].any()  # edge cells carry positions only
    # A turn behind the render eye leaves nothing affine.
    behind = warp_mesh(timewarp_homography(turn(170.0), TAN, TAN), 320, 180, (320, 180))
    assert len(behind.rects) == 0 and behind.cells == 3 * 2


# --- on GL ----------------------------------------------------------------------------


def compose(warp: str, image: np.ndarray, rendered, now, cell: int = 32):
    options = {"filter": "nearest", "warp": warp, "mesh_cell": cell}
    return compose_layer_once(image, rendered, now, **options)


def blocky_image(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((2, h, w, 4), np.uint8)
    image[..., :3] = rng.integers(0, 255, (2, h // 8, w // 8, 3)).repeat(8, 1).repeat(8, 2)
    image[..., 3] = 255
    return image


def test_mesh_warp_with_equal_poses_reproduces_the_image(gl):
    image = blocky_image(320, 176, seed=3)
    eyes = (EyeView(Pose(), FOV), EyeView(Pose(), FOV))
    out, stats = compose("mesh", image, eyes, eyes)
    assert stats["warp"] == "mesh" and stats["mesh_cells_exact"] == 0
    assert np.array_equal(out, image)


@pytest.mark.parametrize("degrees", [(1.0, 0.5, 0.3), (-0.8, 1.2, -0.6), (12.0, 0.0, 0.0)])
def test_mesh_warp_matches_the_exact_warp(gl, degrees):
    image = blocky_image(320, 176, seed=4)
    rendered = (EyeView(Pose(), FOV),) * 2
    now = (EyeView(Pose(orientation=head(*degrees)), FOV),) * 2
    mesh, stats = compose("mesh", image, rendered, now)
    exact, _ = compose("exact", image, rendered, now)
    assert stats["mesh_cells_affine"] > 0
    differs = np.any(mesh[..., :3] != exact[..., :3], axis=-1)
    # Nearest sampling of 8x8 blocks: the two agree except where a sample point sits
    # within the fit error of a block edge, and in the edge slack along the border.
    assert differs.mean() < 0.03
    assert np.array_equal(mesh[:, 4:-4, 4:-4, 3], exact[:, 4:-4, 4:-4, 3])  # same coverage


def test_layers_with_the_same_pose_share_one_mesh(gl):
    """One game's layers carry the same pose: their warp is computed and uploaded once."""
    base = blocky_image(320, 176, seed=5)
    overlay = np.zeros_like(base)
    overlay[:, 40:120, 60:200] = (0, 60, 0, 128)  # premultiplied half-transparent green
    rendered = (EyeView(Pose(), FOV),) * 2
    now = (EyeView(Pose(orientation=head(1.0, 0.5, 0.0)), FOV),) * 2
    both, stats = compose_layers_once([base, overlay], rendered, now, warp="mesh")
    # Every draw after the first: here both eyes have the same pose, so the same warp too.
    assert stats["mesh_reused"] == 3
    alone, _ = compose_layer_once(base, rendered, now, warp="mesh")
    outside = np.ones(both.shape[:3], bool)
    outside[:, 30:130, 50:210] = False  # away from the overlay and its warp
    assert np.array_equal(both[outside], alone[outside])
    assert not np.array_equal(both, alone)

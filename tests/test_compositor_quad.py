"""The preview's panel as a quad layer: where it is placed, and the homography that draws it
(checked against projecting points of the panel by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.compositor.quad import (
    quad_homography,
    quad_in_front,
    quad_screen_bounds,
    scissor_box,
)
from engine.compositor.timewarp import fov_tangents
from engine.pose.base import EyeView, Fov, Pose
from engine.render.camera import axis_angle, quaternion_matrix, quaternion_multiply


def project(point: np.ndarray, eye: EyeView) -> np.ndarray:
    """A world point's NDC on ``eye``'s screen, the plain pinhole way."""
    p = quaternion_matrix(eye.pose.orientation).T @ (point - np.asarray(eye.pose.position))
    left, right, up, down = fov_tangents(eye.fov)
    tx, ty = p[0] / -p[2], p[1] / -p[2]
    return np.array([(tx - left) / (right - left) * 2 - 1, (ty - down) / (up - down) * 2 - 1])


def uv_at(h: np.ndarray, ndc: np.ndarray) -> tuple[np.ndarray, float]:
    v = h @ np.array([ndc[0], ndc[1], 1.0])
    return v[:2] / v[2], v[2]


def test_a_panel_appears_upright_ahead_of_where_the_head_looks():
    turned = quaternion_multiply(
        axis_angle((0.0, 1.0, 0.0), math.radians(90)),
        axis_angle((1.0, 0.0, 0.0), math.radians(-30)),  # and looking down
    )
    quad = quad_in_front(Pose((1.0, 1.7, 0.0), tuple(turned)), aspect=0.5)
    # Turned 90 degrees left: ahead is -X.
    assert quad.center == pytest.approx((1.0 - 1.5, 1.7, 0.0))
    assert quad.up == (0.0, 1.0, 0.0)
    assert quad.right == pytest.approx((0.0, 0.0, -1.0))  # the user's right, facing -X
    assert (quad.width, quad.height) == pytest.approx((0.8, 0.4))


@pytest.mark.parametrize("turn_deg", [0.0, 10.0, -25.0])
def test_the_homography_maps_each_point_of_the_panel_to_its_texture_coordinates(turn_deg):
    quad = quad_in_front(Pose((0.0, 1.6, 0.0)), aspect=9 / 16)
    # The eye looks a little aside and sits 3 cm left of the head, as a left eye does.
    q = tuple(axis_angle((0.0, 1.0, 0.0), math.radians(turn_deg)))
    eye = EyeView(Pose((-0.03, 1.6, 0.0), q), Fov.for_image(1280, 720))
    h = quad_homography(quad, eye)
    assert h is not None
    center, right, up = (np.asarray(v) for v in (quad.center, quad.right, quad.up))
    for u, v in ((0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.25, 0.9)):
        point = center + (u - 0.5) * quad.width * right + (v - 0.5) * quad.height * up
        uv, w = uv_at(h, project(point, eye))
        assert w > 0  # in front of the eye
        assert uv == pytest.approx((u, v), abs=1e-9)
    bounds = quad_screen_bounds(quad, eye)
    assert bounds is not None
    corners = np.array(
        [
            project(center + sx * quad.width / 2 * right + sy * quad.height / 2 * up, eye)
            for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
        ]
    )
    assert bounds == pytest.approx((*corners.min(axis=0), *corners.max(axis=0)))


def test_a_panel_behind_the_eye_is_not_in_view():
    quad = quad_in_front(Pose((0.0, 1.6, 0.0)), aspect=9 / 16)
    behind = tuple(axis_angle((0.0, 1.0, 0.0), math.pi))
    eye = EyeView(Pose((0.0, 1.6, 0.0), behind))
    assert quad_screen_bounds(quad, eye) is None
    h = quad_homography(quad, eye)
    assert h is not None
    assert uv_at(h, np.array([0.0, 0.0]))[1] < 0  # behind: the pass discards it


def test_a_scissor_box_covers_the_bounds_rounded_outwards():
    assert scissor_box((-0.5, -1.0, 0.5, 0.01), 100, 50) == (25, 0, 50, 26)

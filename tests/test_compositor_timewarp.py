"""Rotational timewarp: the numpy reference, then the GL pass against it on real (headless) GL,
and the fallback floor/horizon."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import compose_layer_once, compose_layers_once
from engine.compositor.timewarp import (
    fov_tangents,
    pixel_ndc,
    reproject,
    rotation_delta,
    timewarp_homography,
    timewarp_uv,
)
from engine.pose.base import EyeView, Fov, Pose
from engine.render.camera import axis_angle

FOV = Fov()  # 90 degrees each way
TAN = fov_tangents(FOV)


def yaw(degrees: float) -> tuple[float, float, float, float]:
    """Turning the head left by ``degrees`` (about +Y)."""
    return axis_angle((0.0, 1.0, 0.0), math.radians(degrees))


def test_equal_poses_give_the_identity():
    q = axis_angle((0.3, 0.8, 0.1) / np.linalg.norm((0.3, 0.8, 0.1)), 0.7)
    assert np.allclose(rotation_delta(q, q), np.eye(3))
    ndc = pixel_ndc(8, 6)
    uv, valid = timewarp_uv(np.eye(3), TAN, TAN, ndc)
    assert valid.all()
    assert np.allclose(uv, (ndc + 1.0) / 2.0)


def test_turning_left_samples_further_left_in_the_old_image():
    # The head turned left since the image was rendered: what is now straight ahead was
    # left of centre in the image, so the centre pixel samples u < 0.5 (and v stays put).
    delta = rotation_delta(yaw(0.0), yaw(10.0))
    (u, v), valid = timewarp_uv(delta, TAN, TAN, np.array([0.0, 0.0]))
    assert valid
    assert u == pytest.approx(0.5 - math.tan(math.radians(10.0)) / 2.0)
    assert v == pytest.approx(0.5)


def test_turning_right_samples_further_right():
    delta = rotation_delta(yaw(0.0), yaw(-10.0))
    (u, _), _ = timewarp_uv(delta, TAN, TAN, np.array([0.0, 0.0]))
    assert u > 0.5


def test_a_turn_beyond_the_image_leaves_the_uncovered_edge_empty():
    delta = rotation_delta(yaw(0.0), yaw(30.0))
    uv, valid = timewarp_uv(delta, TAN, TAN, pixel_ndc(16, 4))
    assert not valid[:, 0].any()  # the left edge now looks at what was never rendered
    assert valid[:, -1].all()


def test_rays_behind_the_render_eye_are_invalid():
    delta = rotation_delta(yaw(0.0), yaw(180.0))
    _, valid = timewarp_uv(delta, TAN, TAN, pixel_ndc(4, 4))
    assert not valid.any()


def test_the_homography_is_the_same_mapping():
    rng = np.random.default_rng(3)
    out_tan = fov_tangents(Fov(-0.8, 0.7, 0.75, -0.9))
    for _ in range(5):
        axis = rng.normal(size=3)
        q = axis_angle(axis / np.linalg.norm(axis), rng.uniform(-0.5, 0.5))
        delta = rotation_delta(yaw(0.0), q)
        ndc = pixel_ndc(9, 7)
        uv, valid = timewarp_uv(delta, out_tan, TAN, ndc)
        h = (
            np.concatenate([ndc, np.ones(ndc.shape[:-1] + (1,))], axis=-1)
            @ timewarp_homography(delta, out_tan, TAN).T
        )
        assert np.all(h[..., 2][valid] > 0)
        assert np.allclose(h[..., :2][valid] / h[..., 2:][valid], uv[valid])


def test_cpu_reproject_shifts_a_vertical_line_the_right_way():
    image = np.zeros((32, 64, 4), np.uint8)
    image[:, 32, :] = 255  # a vertical line at the centre column
    out = reproject(image, rotation_delta(yaw(0.0), yaw(10.0)), TAN, TAN)
    columns = np.nonzero(out[16, :, 0])[0]
    assert len(columns) == 1 and columns[0] > 32  # turned left: the world moves right


# --- the GL pass ----------------------------------------------------------------------


def compose_once(eyes_rendered, eyes_now, image: np.ndarray):
    return compose_layer_once(image, eyes_rendered, eyes_now)[0]


def test_gl_timewarp_matches_the_numpy_reference(gl):
    rng = np.random.default_rng(1)
    h, w = 48, 64
    image = np.zeros((2, h, w, 4), np.uint8)
    image[..., :3] = rng.integers(0, 255, (2, h // 8, w // 8, 3)).repeat(8, 1).repeat(8, 2)
    image[..., 3] = 255
    rendered = (EyeView(Pose(orientation=yaw(0.0)), FOV),) * 2
    now = (EyeView(Pose(orientation=yaw(7.0)), FOV),) * 2
    out = compose_once(rendered, now, image)
    expected = reproject(image[0], rotation_delta(yaw(0.0), yaw(7.0)), TAN, TAN)
    # Blocks of 8x8 pixels: away from block edges, bilinear GL sampling equals nearest.
    agree = np.all(out[0, ..., :3] == expected[..., :3], axis=-1)
    assert agree.mean() > 0.75
    error = np.abs(out[0, ..., :3].astype(int) - expected[..., :3]).mean()
    unwarped_error = np.abs(out[0, ..., :3].astype(int) - image[0, ..., :3]).mean()
    assert error < unwarped_error / 4
    assert not out[0, :, 0, :3].any()  # the uncovered left edge is black


def test_gl_timewarp_with_equal_poses_reproduces_the_image(gl):
    h, w = 16, 32
    image = np.zeros((2, h, w, 4), np.uint8)
    image[0, ..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 8
    image[1, ..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 16
    image[..., 3] = 255
    eyes = (EyeView(Pose(), FOV), EyeView(Pose(), FOV))
    out = compose_once(eyes, eyes, image)
    assert np.array_equal(out, image)


def test_fallback_shows_floor_below_and_sky_above_the_horizon_whatever_the_yaw(gl):
    from engine.compositor.fallback import FLOOR, fallback_colors
    from engine.compositor.process import GLComposer

    h, w = 32, 32
    composer = GLComposer(w, h, [])
    rows = []
    for degrees in (0.0, 40.0):
        eye = EyeView(Pose((0.0, 1.6, 0.0), yaw(degrees)), FOV)
        composer.compose([], (eye, eye), fallback=True)
        composer.finish()
        out = composer.read_eyes()[0, ..., :3].astype(float) / 255.0
        reference = fallback_colors(eye, TAN, pixel_ndc(w, h))
        below = np.all(np.isclose(reference, FLOOR), axis=-1)
        assert below[: h // 2].all() and not below[h // 2 :].any()  # looking level
        # Sky pixels match exactly; floor pixels are floor or grid line.
        assert np.allclose(out[~below], reference[~below], atol=2 / 255)
        rows.append(out[h // 2 + 2])
    # Sky depends only on elevation: turning the head does not move the horizon.
    assert np.allclose(rows[0], rows[1], atol=2 / 255)


@pytest.mark.parametrize("warp", ["exact", "mesh"])
def test_layers_blend_as_premultiplied_alpha(gl, warp):
    """Layer colours are premultiplied by alpha (OpenXR's default): over an opaque base,
    ``out = overlay + base * (1 - alpha)``; a transparent overlay leaves the base alone."""
    h, w = 48, 64
    eyes = (EyeView(Pose(), Fov.for_image(w, h)),) * 2
    base = np.zeros((2, h, w, 4), np.uint8)
    base[...] = (200, 0, 40, 255)
    overlay = np.zeros((2, h, w, 4), np.uint8)
    overlay[:, :, : w // 2] = (0, 64, 20, 128)  # half covered, half transparent
    out, _ = compose_layers_once([base, overlay], eyes, eyes, warp=warp, filter="nearest")
    covered, clear = out[:, :, : w // 2, :3], out[:, :, w // 2 :, :3]
    expected = np.array([200 * 127 / 255, 64, 20 + 40 * 127 / 255])
    assert np.abs(covered.astype(float) - expected).max() <= 1.5, covered[0, 0, 0]
    assert (clear == (200, 0, 40)).all()

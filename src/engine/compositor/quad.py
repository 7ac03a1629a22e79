"""Quad layers: a flat panel placed in the world, as an OpenXR quad layer is.

The preview layer is shown in the headset this way: a panel about 1.5 m in front of the
user, 0.8 m wide, placed where the user looked when it appeared and left there
(world-locked), drawn over the scene layers. Its picture is the layer's left-eye image,
the same for both eyes (a flat picture, not a stereo window).

A plane seen by a pinhole eye is a homography of the screen, like the rotational
timewarp (:mod:`engine.compositor.timewarp`): :func:`quad_homography` gives the matrix
that the timewarp's own GL pass evaluates, mapping each screen point to the panel's
texture coordinates (outside 0..1: off the panel, the texture's transparent border).
:func:`quad_screen_bounds` gives the panel's box on the screen, so the pass shades only
that (a scissor), not the whole eye.

Conventions are the timewarp's: eyes look down -Z, +Y up, NDC -1..1, ``v = 0`` the bottom
row of an image. Pure numpy: no GL here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.compositor.timewarp import fov_tangents
from engine.pose.base import EyeView, Pose
from engine.render.camera import quaternion_matrix

#: Where a panel appears: this far in front of the head (metres) ...
PANEL_DISTANCE_M = 1.5
#: ... and this wide; its height follows the image's aspect.
PANEL_WIDTH_M = 0.8


@dataclass(frozen=True, slots=True)
class QuadPlacement:
    """A panel in the world: its centre, unit right and up axes, and size (metres)."""

    center: tuple[float, float, float]
    right: tuple[float, float, float]
    up: tuple[float, float, float]
    width: float
    height: float


def quad_in_front(
    head: Pose,
    aspect: float,
    distance: float = PANEL_DISTANCE_M,
    width: float = PANEL_WIDTH_M,
) -> QuadPlacement:
    """A panel ``distance`` ahead of ``head`` at eye height, upright, facing the head.

    ``aspect`` is the image's height over its width. "Ahead" is the head's forward
    direction levelled onto the floor plane, so a panel placed while looking down still
    stands upright; looking straight up or down, ahead is -Z.
    """
    forward = quaternion_matrix(head.orientation) @ np.array([0.0, 0.0, -1.0])
    level = np.array([forward[0], 0.0, forward[2]])
    norm = float(np.linalg.norm(level))
    level = level / norm if norm > 1e-6 else np.array([0.0, 0.0, -1.0])
    up = np.array([0.0, 1.0, 0.0])
    right = np.cross(level, up)
    center = np.asarray(head.position, dtype=np.float64) + distance * level
    return QuadPlacement(
        center=tuple(float(x) for x in center),  # type: ignore[arg-type]
        right=tuple(float(x) for x in right),  # type: ignore[arg-type]
        up=(0.0, 1.0, 0.0),
        width=width,
        height=width * aspect,
    )


def _ndc_to_ray(eye: EyeView) -> np.ndarray:
    left, right, up, down = fov_tangents(eye.fov)
    return np.array(
        [
            [(right - left) / 2.0, 0.0, (right + left) / 2.0],
            [0.0, (up - down) / 2.0, (up + down) / 2.0],
            [0.0, 0.0, -1.0],
        ]
    )


def _panel_to_eye(quad: QuadPlacement, eye: EyeView) -> np.ndarray:
    """``A`` with ``A @ (s, t, 1)`` the eye-space point ``s`` m right, ``t`` m up of centre."""
    to_world = quaternion_matrix(eye.pose.orientation)
    to_eye = to_world.T
    offset = np.asarray(quad.center) - np.asarray(eye.pose.position)
    return np.column_stack(
        [to_eye @ np.asarray(quad.right), to_eye @ np.asarray(quad.up), to_eye @ offset]
    )


def quad_homography(quad: QuadPlacement, eye: EyeView) -> np.ndarray | None:
    """The 3x3 ``H`` with ``uv = h[:2] / h[2]``, ``h = H @ (x, y, 1)`` for a screen point in
    NDC, valid where ``h[2] > 0`` (the panel is in front of the eye there): what
    :class:`~engine.compositor.timewarp.TimewarpPass` draws with.

    ``None`` when the eye is (nearly) in the panel's plane: it sees the panel edge-on.
    """
    panel_to_eye = _panel_to_eye(quad, eye)
    if abs(np.linalg.det(panel_to_eye)) < 1e-9:
        return None
    # A screen point's ray r (z = -1) meets the panel at A @ (s, t, 1) = lambda * r, so
    # A^-1 @ r = (s, t, 1) / lambda: the third component is positive in front of the eye.
    to_uv = np.array(
        [
            [1.0 / quad.width, 0.0, 0.5],
            [0.0, 1.0 / quad.height, 0.5],
            [0.0, 0.0, 1.0],
        ]
    )
    return to_uv @ np.linalg.inv(panel_to_eye) @ _ndc_to_ray(eye)


def quad_screen_bounds(
    quad: QuadPlacement, eye: EyeView
) -> tuple[float, float, float, float] | None:
    """The panel's box on ``eye``'s screen, ``(x0, y0, x1, y1)`` in NDC clipped to -1..1,
    or ``None`` when none of it is in view (wholly behind the eye, or off the screen).

    A panel partly behind the eye is given the whole screen (its visible part is bounded by
    the screen, and the pass discards what is behind).
    """
    to_eye = quaternion_matrix(eye.pose.orientation).T
    position = np.asarray(eye.pose.position)
    half_w, half_h = quad.width / 2, quad.height / 2
    center, right, up = (np.asarray(v) for v in (quad.center, quad.right, quad.up))
    left, rgt, top, down = fov_tangents(eye.fov)
    corners = [
        to_eye @ (center + sx * half_w * right + sy * half_h * up - position)
        for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    ]
    behind = sum(p[2] > -1e-6 for p in corners)
    if behind == len(corners):
        return None
    if behind:
        return (-1.0, -1.0, 1.0, 1.0)
    xs, ys = [], []
    for p in corners:
        tx, ty = p[0] / -p[2], p[1] / -p[2]
        xs.append((tx - left) / (rgt - left) * 2.0 - 1.0)
        ys.append((ty - down) / (top - down) * 2.0 - 1.0)
    x0, x1, y0, y1 = max(min(xs), -1.0), min(max(xs), 1.0), max(min(ys), -1.0), min(max(ys), 1.0)
    if x0 >= x1 or y0 >= y1:
        return None
    return (x0, y0, x1, y1)


def scissor_box(
    bounds: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int]:
    """NDC ``bounds`` as a GL scissor ``(x, y, w, h)`` in pixels, rounded outwards."""
    x0, y0, x1, y1 = bounds
    px0 = max(0, math.floor((x0 + 1) / 2 * width))
    py0 = max(0, math.floor((y0 + 1) / 2 * height))
    px1 = min(width, math.ceil((x1 + 1) / 2 * width))
    py1 = min(height, math.ceil((y1 + 1) / 2 * height))
    return (px0, py0, max(0, px1 - px0), max(0, py1 - py0))

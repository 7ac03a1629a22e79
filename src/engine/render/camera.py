"""The engine's one quaternion and matrix module: quaternions, eye poses to view
matrices, OpenXR fields of view to projections.

Quaternions are ``(x, y, z, w)`` tuples, multiplied as Hamilton products. All matrices
are float32 numpy arrays in the usual mathematical layout (row-major storage, column
vectors: ``clip = P @ V @ M @ p``). Uploading to GL therefore needs ``transpose=GL_TRUE``
(or ``m.T``). Clip space is OpenGL's: z in -1..1, looking down -Z.

Everything here is pure numpy and importable without a GL context, so pose sources (the
simulated headset, the compositor) can use :func:`eyes_from_head` too.

Why not pyrr: it builds a numpy array per call, so its quaternion calls (to a matrix,
product, axis-angle, slerp) were 3 to 220 times slower than the scalar ones here, which
the compositor makes every frame (and its slerp lands 0.2 % of the arc off); it converts
one quaternion at a time where the renderer converts every entity's at once (over 200
times slower for 1000); only the projection costs about the same (``python
bench/vector_math.py`` measures each, in one run). And its matrices are for row vectors,
except ``create_from_quaternion``'s (pyrr issue #70): each use would need a transpose to
get right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from engine.pose.base import EyeView, Fov, Pose

#: Average adult interpupillary distance, metres.
DEFAULT_IPD = 0.064
#: Near and far clip planes, metres. The near plane is close because hands are.
DEFAULT_NEAR = 0.05
DEFAULT_FAR = 100.0


def _rotation_rows(x, y, z, w):  # noqa: ANN001, ANN202 - floats or arrays alike
    """The rows of the rotation of the unit quaternion (x, y, z, w)."""
    return (
        (1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)),
        (2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)),
        (2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)),
    )


def quaternion_matrix(q: Sequence[float]) -> np.ndarray:
    """The 3x3 rotation of the quaternion ``q`` (xyzw); normalised first, zero -> identity.

    Scalar arithmetic, not :func:`quaternion_matrices`: for one quaternion, a dozen numpy
    calls cost about ten times more (the compositor makes several per frame).
    """
    x, y, z, w = (float(v) for v in q)
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not norm > 0.0:
        return np.eye(3)
    return np.array(_rotation_rows(x / norm, y / norm, z / norm, w / norm))


def quaternion_matrices(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) of N quaternions (N, 4) xyzw, vectorised.

    Quaternions are normalised; a zero quaternion gives the identity (a half-typed
    ``Transform.rotation`` should draw, not crash).
    """
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0.0, q / np.where(norm > 0.0, norm, 1.0), (0.0, 0.0, 0.0, 1.0))
    rows = _rotation_rows(q[:, 0], q[:, 1], q[:, 2], q[:, 3])
    return np.ascontiguousarray(np.moveaxis(np.array(rows), -1, 0))


def quaternion_multiply(a: Sequence[float], b: Sequence[float]) -> tuple[float, ...]:
    """The Hamilton product ``a * b`` (xyzw): rotate by ``b`` first, then by ``a``."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    )


def axis_angle(axis: Sequence[float], angle: float) -> tuple[float, float, float, float]:
    """The quaternion (xyzw) rotating ``angle`` radians about the unit vector ``axis``."""
    s = math.sin(angle / 2.0)
    return (axis[0] * s, axis[1] * s, axis[2] * s, math.cos(angle / 2.0))


def slerp(a: Sequence[float], b: Sequence[float], t: float) -> tuple[float, float, float, float]:
    """Spherical interpolation between unit quaternions ``a`` and ``b`` (xyzw), the short way."""
    qa = np.asarray(a, dtype=np.float64)
    qb = np.asarray(b, dtype=np.float64)
    dot = float(qa @ qb)
    if dot < 0.0:  # q and -q are the same rotation; take the shorter arc
        qb, dot = -qb, -dot
    if dot > 0.9995:  # nearly equal: lerp is exact enough and avoids dividing by ~0
        q = qa + t * (qb - qa)
    else:
        theta = math.acos(dot)
        q = (math.sin((1.0 - t) * theta) * qa + math.sin(t * theta) * qb) / math.sin(theta)
    q /= np.linalg.norm(q)
    return (float(q[0]), float(q[1]), float(q[2]), float(q[3]))


def model_matrices(positions: np.ndarray, rotations: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Model matrices (N, 4, 4) float32 from N positions, quaternions and scales: T * R * S."""
    n = len(positions)
    m = np.zeros((n, 4, 4), dtype=np.float32)
    m[:, :3, :3] = quaternion_matrices(rotations) * np.asarray(scales)[:, None, :]
    m[:, :3, 3] = positions
    m[:, 3, 3] = 1.0
    return m


def normal_matrices(rotations: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Normal matrices (N, 3, 3) float32: the inverse transpose of R * S, i.e. R * S^-1.

    A zero scale axis gets a zero column (the shape is flat; its normals are whatever the
    other axes say) instead of a division by zero.
    """
    s = np.asarray(scales, dtype=np.float64)
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s != 0.0)
    return (quaternion_matrices(rotations) * inv[:, None, :]).astype(np.float32)


def pose_matrix(pose: Pose) -> np.ndarray:
    """The 4x4 transform placing something at ``pose`` (local -> world)."""
    m = np.eye(4, dtype=np.float32)
    m[:3, :3] = quaternion_matrix(pose.orientation)
    m[:3, 3] = pose.position
    return m


def view_matrix(pose: Pose) -> np.ndarray:
    """The 4x4 view matrix (world -> eye) of an eye at ``pose``: the rigid inverse."""
    r = quaternion_matrix(pose.orientation)
    m = np.eye(4, dtype=np.float32)
    m[:3, :3] = r.T
    m[:3, 3] = -r.T @ np.asarray(pose.position, dtype=np.float64)
    return m


def projection_matrix(fov: Fov, near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR) -> np.ndarray:
    """The asymmetric perspective projection of an OpenXR field of view, GL clip space.

    Same matrix as OpenXR's ``XrMatrix4x4f_CreateProjectionFov`` for OpenGL: a point on the
    frustum's left edge lands at x = -1, on its top edge at y = +1; ``near`` maps to z = -1
    and ``far`` to z = +1. Raises ``ValueError`` for an empty field of view or bad planes.
    """
    tan_l, tan_r = math.tan(fov.left), math.tan(fov.right)
    tan_u, tan_d = math.tan(fov.up), math.tan(fov.down)
    width, height = tan_r - tan_l, tan_u - tan_d
    if width <= 0.0 or height <= 0.0:
        raise ValueError(f"empty field of view: {fov}")
    if not 0.0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near} far={far}")
    p = np.zeros((4, 4), dtype=np.float32)
    p[0, 0] = 2.0 / width
    p[0, 2] = (tan_r + tan_l) / width
    p[1, 1] = 2.0 / height
    p[1, 2] = (tan_u + tan_d) / height
    p[2, 2] = -(far + near) / (far - near)
    p[2, 3] = -2.0 * far * near / (far - near)
    p[3, 2] = -1.0
    return p


def eyes_from_head(
    head: Pose, ipd: float = DEFAULT_IPD, fov: Fov | tuple[Fov, Fov] = Fov()
) -> tuple[EyeView, EyeView]:
    """Left and right eye views of a head: each eye ``ipd / 2`` along the head's ±X axis.

    Both eyes keep the head's orientation (no toe-in, as in every current headset).
    ``fov`` is one field of view for both eyes, or a ``(left, right)`` pair.
    """
    left_fov, right_fov = fov if isinstance(fov, tuple) else (fov, fov)
    right_axis = quaternion_matrix(head.orientation)[:, 0]
    centre = np.asarray(head.position, dtype=np.float64)
    offset = right_axis * (ipd / 2.0)
    left = Pose(tuple(float(v) for v in centre - offset), head.orientation)
    right = Pose(tuple(float(v) for v in centre + offset), head.orientation)
    return EyeView(left, left_fov), EyeView(right, right_fov)

"""The engine's camera maths (engine.render.camera) against pyrr, call for call.

Why the engine keeps its own small module rather than calling pyrr: the compositor and the
renderer make a handful of these calls per frame, and pyrr builds every result with numpy,
which costs microseconds a call where the engine's scalar versions cost hundreds of
nanoseconds. This bench measures that (and checks both give the same numbers, in the
engine's column-vector layout), in the same run, on this machine. Runs in a few seconds.

    python bench/vector_math.py
"""

from __future__ import annotations

import math
import timeit

import numpy as np
import pyrr
from rich.console import Console
from rich.table import Table

from engine.pose.base import Fov
from engine.pose.simulated import slerp
from engine.render.camera import (
    axis_angle,
    projection_matrix,
    quaternion_matrices,
    quaternion_matrix,
    quaternion_multiply,
)

NEAR, FAR = 0.05, 100.0
FOV = Fov(left=-0.9, right=0.8, up=0.85, down=-0.95)  # asymmetric, as a headset's
Q1 = axis_angle((0.0, 1.0, 0.0), 0.3)
Q2 = axis_angle((1.0, 0.0, 0.0), 0.2)
A1, A2 = np.array(Q1), np.array(Q2)
BATCH = np.array([axis_angle((0.0, 1.0, 0.0), 0.001 * i) for i in range(1000)])


def pyrr_projection(fov: Fov) -> np.ndarray:
    bounds = [math.tan(a) * NEAR for a in (fov.left, fov.right, fov.down, fov.up)]
    # pyrr's matrices are for row vectors: transposed to the engine's column vectors.
    return pyrr.matrix44.create_perspective_projection_from_bounds(*bounds, NEAR, FAR).T


def pyrr_batch(qs: np.ndarray) -> np.ndarray:
    # pyrr converts one quaternion at a time.
    return np.array([pyrr.matrix33.create_from_quaternion(q) for q in qs])


#: (what, engine call, pyrr call, the two results agree)
CASES = [
    (
        "quaternion -> 3x3",
        lambda: quaternion_matrix(Q1),
        lambda: pyrr.matrix33.create_from_quaternion(A1),
    ),
    (
        "quaternion product",
        lambda: quaternion_multiply(Q1, Q2),
        lambda: pyrr.quaternion.cross(A1, A2),
    ),
    (
        "axis-angle -> quaternion",
        lambda: axis_angle((0.0, 1.0, 0.0), 0.3),
        lambda: pyrr.quaternion.create_from_axis_rotation(np.array([0.0, 1.0, 0.0]), 0.3),
    ),
    ("slerp", lambda: slerp(Q1, Q2, 0.25), lambda: pyrr.quaternion.slerp(A1, A2, 0.25)),
    (
        "asymmetric projection",
        lambda: projection_matrix(FOV, NEAR, FAR),
        lambda: pyrr_projection(FOV),
    ),
    ("1000 quaternions -> 3x3", lambda: quaternion_matrices(BATCH), lambda: pyrr_batch(BATCH)),
]


def per_call_us(fn, budget_s: float = 0.4) -> float:  # noqa: ANN001
    """Best of five timings of as many calls as fit in about ``budget_s / 5``."""
    number, took = timeit.Timer(fn).autorange()
    number = max(1, int(number * budget_s / 5 / max(took, 1e-9)))
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    table = Table(title="camera maths per call: engine.render.camera vs pyrr 0.10")
    for column in ("what", "engine µs", "pyrr µs", "pyrr / engine", "same result"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for what, ours, theirs in CASES:
        same = np.allclose(np.asarray(ours(), float), np.asarray(theirs(), float), atol=1e-5)
        engine_us, pyrr_us = per_call_us(ours), per_call_us(theirs)
        table.add_row(
            what, f"{engine_us:.2f}", f"{pyrr_us:.2f}", f"{pyrr_us / engine_us:.1f}x", str(same)
        )
    Console().print(table)


if __name__ == "__main__":
    main()

"""The simulated headset is a pure function of time; traces replay what was recorded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.pose.base import Fov, Pose, PoseSource
from engine.pose.simulated import SimulatedHeadset, TracePoseSource, record_trace, slerp
from engine.render.camera import axis_angle, quaternion_matrix

SECOND = 1_000_000_000
times = st.integers(min_value=0, max_value=10**15)  # up to ~11 days of uptime


def forward(pose: Pose) -> np.ndarray:
    return quaternion_matrix(pose.orientation) @ np.array([0.0, 0.0, -1.0])


def angle_between(a: Pose, b: Pose) -> float:
    dot = abs(float(np.dot(a.orientation, b.orientation)))
    return 2.0 * math.acos(min(1.0, dot))


def test_simulated_headset_is_a_pose_source():
    assert isinstance(SimulatedHeadset(), PoseSource)
    assert isinstance(TracePoseSource([(0, Pose())]), PoseSource)


@given(t=times)
def test_the_same_time_gives_the_same_pose_whatever_came_before(t):
    fresh = SimulatedHeadset().sample(7, t)
    used = SimulatedHeadset()
    used.sample(0, t + 123_456_789)
    used.sample(1, max(0, t - 5 * SECOND))
    assert used.sample(7, t) == fresh
    assert fresh.frame == 7 and fresh.display_time_ns == t


@given(t=times)
def test_the_head_stays_at_height_and_its_orientation_is_unit(t):
    sample = SimulatedHeadset(height=1.7).sample(0, t)
    assert sample.head.position == (0.0, 1.7, 0.0)
    assert np.linalg.norm(sample.head.orientation) == pytest.approx(1.0)


def test_the_motion_follows_the_script():
    headset = SimulatedHeadset(period_s=8.0, yaw_amplitude_deg=30, pitch_amplitude_deg=10)
    assert forward(headset.head(0)) == pytest.approx([0.0, 0.0, -1.0])
    # A quarter period in: yaw at its +30 degree peak (turned left), pitch back at zero.
    f = forward(headset.head(2 * SECOND))
    assert math.degrees(math.atan2(-f[0], -f[2])) == pytest.approx(30.0)
    assert f[1] == pytest.approx(0.0, abs=1e-9)
    # An eighth in: pitch at its +10 degree peak (looking up).
    f = forward(headset.head(SECOND))
    assert math.degrees(math.asin(f[1])) == pytest.approx(10.0, abs=1e-6)
    # Periodic.
    assert headset.head(3 * SECOND) == headset.head(11 * SECOND)


def test_eyes_are_an_ipd_apart_with_the_given_fov():
    fov = Fov(-0.9, 0.8, 0.85, -0.95)
    sample = SimulatedHeadset(ipd=0.07, fov=fov).sample(0, 3 * SECOND)
    left, right = sample.eyes
    gap = np.subtract(right.pose.position, left.pose.position)
    assert np.linalg.norm(gap) == pytest.approx(0.07)
    assert left.fov == fov and right.fov == fov
    assert np.mean([left.pose.position, right.pose.position], axis=0) == pytest.approx(
        sample.head.position
    )


def test_a_recorded_trace_replays_the_recorded_poses(tmp_path):
    headset = SimulatedHeadset()
    path = tmp_path / "trace.jsonl"
    recorded_at = [i * SECOND // 10 for i in range(81)]  # 8 s at 10 Hz
    assert record_trace(headset, path, recorded_at) == 81
    trace = TracePoseSource.load(path)
    for t in recorded_at:
        assert trace.sample(0, t).head == headset.head(t)


def test_a_trace_interpolates_between_samples(tmp_path):
    headset = SimulatedHeadset()
    path = tmp_path / "trace.jsonl"
    record_trace(headset, path, [i * SECOND // 10 for i in range(81)])
    trace = TracePoseSource.load(path)
    for t in (SECOND // 20, 1234 * SECOND // 1000, 7 * SECOND + SECOND // 20):
        replayed, truth = trace.head(t), headset.head(t)
        assert angle_between(replayed, truth) < math.radians(0.2)
        assert np.linalg.norm(replayed.orientation) == pytest.approx(1.0)


def test_a_trace_holds_still_outside_its_span_unless_it_loops():
    a = Pose((0.0, 1.6, 0.0))
    b = Pose((1.0, 1.6, 0.0), axis_angle((0.0, 1.0, 0.0), math.pi / 2))
    held = TracePoseSource([(SECOND, a), (2 * SECOND, b)])
    assert held.head(0) == a
    assert held.head(5 * SECOND) == b
    mid = held.head(SECOND + SECOND // 2)
    assert mid.position == pytest.approx((0.5, 1.6, 0.0))
    assert angle_between(mid, Pose(orientation=axis_angle((0, 1, 0), math.pi / 4))) < 1e-6
    looped = TracePoseSource([(SECOND, a), (2 * SECOND, b)], loop=True)
    assert looped.head(3 * SECOND + SECOND // 2).position == pytest.approx((0.5, 1.6, 0.0))


def test_slerp_takes_the_short_way_round():
    q = axis_angle((0.0, 1.0, 0.0), 0.2)
    minus_q = tuple(-v for v in q)
    assert slerp(q, minus_q, 0.5) == pytest.approx(q)


def test_a_malformed_trace_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"time_ns": 0, "position": [0, 1, 0], "orientation": [0, 0, 0, 1]}\n{"time_ns": 5}\n'
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        TracePoseSource.load(path)
    with pytest.raises(ValueError):
        TracePoseSource([(2, Pose()), (1, Pose())])


def test_fov_for_image_keeps_pixels_square() -> None:
    import math

    from engine.pose.base import Fov

    fov = Fov.for_image(1280, 720, horizontal_deg=90.0)
    assert math.tan(fov.right) == pytest.approx(1.0)
    assert math.tan(fov.up) / math.tan(fov.right) == pytest.approx(720 / 1280)
    assert fov.left == -fov.right and fov.down == -fov.up

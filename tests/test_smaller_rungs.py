"""The smaller rungs of the failure ladder around the processes: a compositor frame that
raises costs that frame only, and an engine that fails to start gives SIGALRM back."""

from __future__ import annotations

import os
import signal

import pytest

from engine.compositor.clock import DisplaySchedule
from engine.compositor.loop import CompositorLoop
from engine.contracts.shm import sealed_memfd
from engine.pose.base import EyeView, Pose, PoseSample
from engine.scheduler.pacing import ManualClock

PERIOD = 10_000_000
LEAD = 2_000_000


class Layer:
    def read(self) -> None:
        return None

    def still_valid(self, frame: object) -> bool:
        return True


class Pose_:
    def __init__(self, fail_at: set[int]) -> None:
        self.fail_at = fail_at

    def sample(self, frame: int, display_time_ns: int) -> PoseSample:
        if frame in self.fail_at:
            raise ValueError(f"no pose for frame {frame}")
        return PoseSample(frame, display_time_ns, Pose(), (EyeView(Pose()), EyeView(Pose())))


class Composer:
    def __init__(self, fail_at: set[int]) -> None:
        self.fail_at, self.frame = fail_at, 0

    def compose(self, draws, eyes, fallback):  # noqa: ANN001
        self.frame += 1
        if self.frame in self.fail_at:
            raise RuntimeError("GL_OUT_OF_MEMORY")

    def finish(self) -> None:
        pass


class Sink:
    def __init__(self, fail_at: set[int]) -> None:
        self.fail_at, self.presented = fail_at, []

    def present(self, frame: int, display_time_ns: int) -> None:
        if frame in self.fail_at:
            raise OSError("the window went away")
        self.presented.append(frame)

    def close(self) -> None:
        pass


def test_a_frame_whose_pose_compose_or_present_raises_is_skipped_not_fatal():
    clock = ManualClock(0)
    reports: list[str] = []
    sink = Sink({7})
    loop = CompositorLoop(
        clock=clock,
        schedule=DisplaySchedule(PERIOD, origin_ns=PERIOD, compose_lead_ns=LEAD),
        pose_source=Pose_({3}),
        layers=[("game", Layer())],
        composer=Composer({4}),
        sink=sink,
        report=reports.append,
    )
    loop.run(frames=12)
    stats = loop.stats_dict()
    assert stats["failed_frames"] == 3 and stats["missed"] >= 3
    assert len(sink.presented) == 9  # every other frame was drawn and shown
    assert "OSError: the window went away" in stats["last_failure"]
    # Reported the first time (then the 10th, the 100th...), with where it was raised.
    (report,) = reports
    assert report.startswith("frame 3 failed and was skipped (1 so far): ValueError: no pose")
    assert f"{__file__}:" in report


def test_a_failing_frame_every_time_is_reported_sparingly_and_never_retried_in_place():
    clock = ManualClock(0)
    reports: list[str] = []
    loop = CompositorLoop(
        clock=clock,
        schedule=DisplaySchedule(PERIOD, origin_ns=PERIOD, compose_lead_ns=LEAD),
        pose_source=Pose_(set(range(1, 200))),
        layers=[("game", Layer())],
        composer=Composer(set()),
        sink=Sink(set()),
        report=reports.append,
    )
    for _ in range(150):  # run() stops on a frame count; failed frames count as frames
        loop.run(frames=1)
    assert loop.stats.failed_frames == 150
    assert len(reports) == 3  # the 1st, 10th and 100th
    # One slot per failure, each tried once: no busy loop retrying a slot that failed.
    assert loop.slot == 149 and clock.now_ns() == loop.schedule.compose_deadline(149)


def test_an_engine_that_fails_to_start_gives_sigalrm_back(project, gl):
    from engine import Engine
    from engine.render.stage import RenderSettings

    before = signal.getsignal(signal.SIGALRM)
    too_small = sealed_memfd("not-a-layer", 4096)
    try:
        with pytest.raises(ValueError, match="block is 4096 bytes"):
            Engine(project, render=RenderSettings(64, 64), layer_fd=too_small)
    finally:
        os.close(too_small)
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)

"""Scheduler statistics: rolling windows, per-system and per-frame counters, recorder."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.scheduler.stats import (
    FRAME_BUDGET_NS,
    FrameRecorder,
    FrameStats,
    RollingWindow,
    SystemStats,
    WindowSummary,
)

MS = 1_000_000


def nearest_rank(samples: list[int], p: float) -> int:
    """Textbook nearest-rank percentile, independent of numpy."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_summary_of_known_samples_uses_nearest_rank():
    window = RollingWindow(10)
    for ms in (5, 1, 4, 2, 3, 10, 9, 8, 7, 6):
        window.add(ms * MS)

    summary = window.summary(budget_ns=7 * MS)

    assert summary == WindowSummary(
        mean_ms=5.5, p50_ms=5.0, p99_ms=10.0, max_ms=10.0, overruns=3, count=10
    )


def test_sample_equal_to_budget_is_not_an_overrun():
    window = RollingWindow(4)
    for ns in (99, 100, 101, 102):
        window.add(ns)
    assert window.summary(budget_ns=100).overruns == 2


def test_empty_window_summarises_to_zeros():
    assert RollingWindow(5).summary(budget_ns=1) == WindowSummary(0.0, 0.0, 0.0, 0.0, 0, 0)


@given(st.lists(st.integers(min_value=0, max_value=10**10), min_size=1, max_size=300))
def test_percentiles_match_numpy_nearest_rank_and_textbook(samples):
    window = RollingWindow(300)
    for ns in samples:
        window.add(ns)

    summary = window.summary(budget_ns=5 * 10**9)

    arr = np.array(samples, dtype=np.int64)
    for p, got in ((50, summary.p50_ms), (99, summary.p99_ms)):
        assert got == pytest.approx(np.percentile(arr, p, method="inverted_cdf") / MS)
        assert got == pytest.approx(nearest_rank(samples, p) / MS)
    assert summary.mean_ms == pytest.approx(arr.mean() / MS)
    assert summary.max_ms == max(samples) / MS
    assert summary.overruns == sum(ns > 5 * 10**9 for ns in samples)


@given(
    size=st.integers(min_value=1, max_value=20),
    samples=st.lists(st.integers(min_value=0, max_value=10**6), max_size=70),
    last=st.none() | st.integers(min_value=0, max_value=25),
)
def test_ring_keeps_the_newest_samples_in_order_across_wraps(size, samples, last):
    window = RollingWindow(size)
    for ns in samples:
        window.add(ns)

    assert window.count == min(len(samples), size)
    assert window.added == len(samples)
    assert window.samples() == samples[-size:]
    held = samples[len(samples) - window.count :]
    expected = held if last is None else held[len(held) - min(last, len(held)) :]
    assert window.samples(last) == expected


def test_ring_wrap_drops_the_oldest_from_the_summary():
    window = RollingWindow(3)
    for ms in (100, 1, 2, 3):  # the 100 ms spike falls out of the window
        window.add(ms * MS)
    summary = window.summary(budget_ns=50 * MS)
    assert (summary.max_ms, summary.overruns, summary.count) == (3.0, 0, 3)


def test_window_size_must_be_positive():
    with pytest.raises(ValueError):
        RollingWindow(0)


def test_record_reports_overrun_and_counts_streaks_that_reset():
    stats = SystemStats("physics", budget_ns=2 * MS)
    results = [stats.record(ms * MS) for ms in (1, 3, 4, 5, 1, 3)]

    assert results == [False, True, True, True, False, True]
    assert stats.consecutive_overruns == 1
    assert stats.overruns == 4
    assert (stats.calls, stats.total_ns, stats.max_ns) == (6, 17 * MS, 5 * MS)


def test_consecutive_overruns_grow_frame_after_frame():
    stats = SystemStats("runaway", budget_ns=MS)
    for expected in range(1, 6):
        stats.record(2 * MS)
        assert stats.consecutive_overruns == expected
    stats.record(MS)  # exactly at budget: within it
    assert stats.consecutive_overruns == 0


def test_system_snapshot_shape_and_windows():
    stats = SystemStats("esper cache rebuild", budget_ns=4 * MS)
    for _ in range(810):
        stats.record(1 * MS)
    for _ in range(90):
        stats.record(2 * MS)

    snap = stats.snapshot()

    assert set(snap) == {
        "name", "calls", "mean_ms", "p50_ms", "p99_ms", "max_ms", "overruns",
        "consecutive_overruns", "budget_ms", "share", "total_ms", "window_90", "window_900",
    }  # fmt: skip
    assert snap["name"] == "esper cache rebuild"
    assert snap["calls"] == 900
    assert snap["mean_ms"] == 2.0  # the last 90 calls only
    assert snap["share"] == 0.5
    assert snap["budget_ms"] == 4.0
    assert snap["window_90"] == {
        "mean_ms": 2.0, "p50_ms": 2.0, "p99_ms": 2.0, "max_ms": 2.0, "overruns": 0, "count": 90
    }  # fmt: skip
    assert snap["window_900"]["count"] == 900
    assert snap["window_900"]["mean_ms"] == pytest.approx(1.1)
    assert snap["window_900"]["p50_ms"] == 1.0


def test_lifetime_counters_outlive_the_windows():
    stats = SystemStats("spiky", budget_ns=MS)
    stats.record(50 * MS)
    for _ in range(1000):
        stats.record(MS // 2)

    snap = stats.snapshot()

    assert snap["max_ms"] == 50.0
    assert snap["overruns"] == 1
    assert snap["window_900"]["max_ms"] == 0.5
    assert snap["window_900"]["overruns"] == 0


def test_snapshot_of_a_system_never_called_is_zeros():
    snap = SystemStats("new", budget_ns=MS).snapshot()
    assert snap["calls"] == 0 and snap["mean_ms"] == 0.0 and snap["share"] == 0.0


def test_budget_must_not_be_negative():
    with pytest.raises(ValueError):
        SystemStats("x", budget_ns=-1)
    with pytest.raises(ValueError):
        FrameStats(budget_ns=0)


def test_budget_not_assigned_yet_reads_zero_share_until_set():
    stats = SystemStats("physics", budget_ns=0)  # the scheduler assigns it later
    assert stats.record(MS) is True
    assert stats.snapshot()["share"] == 0.0
    stats.budget_ns = 4 * MS
    assert stats.record(MS) is False
    assert stats.snapshot()["share"] == 0.25


def test_frame_stats_count_frames_over_the_90hz_budget():
    frames = FrameStats()
    assert frames.budget_ns == FRAME_BUDGET_NS == 11_111_111
    over = [frames.record(ns) for ns in (5 * MS, 11_111_111, 11_111_112, 20 * MS, 6 * MS)]

    snap = frames.snapshot()

    assert over == [False, False, True, True, False]
    assert snap["frames"] == 5
    assert snap["frames_over_budget"] == 2
    assert snap["frame_ms_p50"] == pytest.approx(11.111111)
    assert snap["frame_ms_p99"] == 20.0
    assert snap["frame_ms_max"] == 20.0
    assert set(snap) >= {"frame_ms_p50", "frame_ms_p99", "frames_over_budget", "frames"}


def test_frame_percentiles_cover_only_the_window():
    frames = FrameStats(window_frames=10)
    frames.record(100 * MS)
    for _ in range(10):
        frames.record(5 * MS)
    snap = frames.snapshot()
    assert snap["frame_ms_p99"] == 5.0
    assert snap["frame_ms_max"] == 100.0
    assert snap["frames_over_budget"] == 1


def test_recorder_matrix_handles_systems_that_come_and_go():
    recorder = FrameRecorder(max_frames=10)
    recorder.record({"physics": 1 * MS, "render": 4 * MS})
    recorder.record({"render": 5 * MS})
    recorder.record({"render": 6 * MS, "esper cache rebuild": MS // 2, "physics": 2 * MS})

    assert recorder.names == ["physics", "render", "esper cache rebuild"]
    np.testing.assert_array_equal(
        recorder.matrix(),
        [[1.0, 4.0, np.nan], [np.nan, 5.0, np.nan], [2.0, 6.0, 0.5]],
    )


def test_recorder_keeps_the_newest_frames_and_knows_their_index():
    recorder = FrameRecorder(max_frames=2)
    times = {"a": MS}
    recorder.record({"old": MS})
    recorder.record(times)
    times["a"] = 2 * MS  # the recorder copied the frame
    recorder.record({"a": 3 * MS})

    assert len(recorder) == 2
    assert recorder.first_frame == 1
    assert recorder.names == ["a"]
    np.testing.assert_array_equal(recorder.matrix(), [[1.0], [3.0]])


def test_empty_recorder_matrix_is_empty():
    assert FrameRecorder(3).matrix().shape == (0, 0)

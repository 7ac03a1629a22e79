"""``engine stats PROJECT --plot PATH``: the last run's per-system frame times, drawn."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from conftest import COUNTER, load_png, write
from engine.scheduler.stats import LAST_RUN_FRAMES, FrameRecorder, load_frame_times

ENV = {**os.environ, "PYGLET_HEADLESS": "1", "PYTHONUNBUFFERED": "1"}


def engine_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.launcher.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )


def test_frame_times_round_trip_through_json_with_systems_that_come_and_go():
    recorder = FrameRecorder(3)
    for frame in ({"a": 1_000_000}, {"a": 2_000_000, "b": 500_000}, {"b": 250_000}, {"a": 1}):
        recorder.record(frame)

    back = FrameRecorder.from_json(recorder.to_json())

    assert back.names == recorder.names == ["a", "b"]
    assert back.first_frame == recorder.first_frame == 1
    got, want = back.matrix(), recorder.matrix()
    assert got.shape == want.shape == (3, 2)
    for g, w in zip(got.ravel(), want.ravel(), strict=True):
        assert (math.isnan(g) and math.isnan(w)) or abs(g - w) <= 0.0005  # to the microsecond


def test_engine_stats_plot_draws_the_last_runs_systems(tmp_path: Path):
    project = tmp_path / "game"
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    run = engine_cmd(
        "run", str(project), "--frames", "60", "--single-process", "--no-render", "--quiet"
    )
    assert run.returncode == 0, run.stderr
    kept = load_frame_times(project / LAST_RUN_FRAMES)
    assert len(kept) == 60 and "counter.count" in kept.names

    r = engine_cmd("stats", str(project), "--plot", str(tmp_path / "plots" / "frames.png"))

    assert r.returncode == 0, r.stderr
    assert "counter.count" in r.stdout  # the table, as without --plot
    assert f"60 frames of per-system times plotted to {tmp_path / 'plots' / 'frames.png'}" in (
        r.stdout
    )
    pixels = load_png(tmp_path / "plots" / "frames.png")
    assert pixels.shape == (500, 1000, 4)


def test_engine_stats_plot_before_any_run_says_so_in_one_line(tmp_path: Path):
    project = tmp_path / "game"
    (project / "systems").mkdir(parents=True)
    write(project / ".engine" / "last-run.json", '{"frames": 0, "systems": {}}')

    r = engine_cmd("stats", str(project), "--plot", str(tmp_path / "frames.png"))

    assert r.returncode == 1
    assert f"no frame times for {project} yet" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "frames.png").exists()

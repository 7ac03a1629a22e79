"""The ``engine`` command, run as a user would: real subprocesses on real project folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import COUNTER, load_png, write
from engine.loader.history import ProjectHistory

ENV = {**os.environ, "PYGLET_HEADLESS": "1", "PYTHONUNBUFFERED": "1"}


def engine_cmd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.launcher.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def wait_for(cond, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_new_project_runs_and_writes_stats(tmp_path: Path) -> None:
    proj = tmp_path / "game"
    assert engine_cmd("new", str(proj)).returncode == 0
    assert (proj / "systems" / "bob.py").exists() and (proj / "game.py").exists()
    stats_path = tmp_path / "stats.json"
    r = engine_cmd(
        "run",
        str(proj),
        "--frames",
        "45",
        "--stats-json",
        str(stats_path),
        "--quiet",
        "--single-process",
        "--no-render",
    )
    assert r.returncode == 0, r.stderr
    assert "swap bob v1 (load) ok" in r.stdout
    stats = json.loads(stats_path.read_text())
    assert stats["frames"] == 45
    assert stats["world"]["entities"] == 1
    bob = stats["systems"]["bob.bob"]
    assert bob["calls"] == 45 and bob["state"] in ("probation", "enabled") and bob["version"] == 1
    for key in ("mean_ms", "p99_ms", "max_ms", "overruns", "reason"):
        assert key in bob
    for key in ("frame_ms_p50", "frame_ms_p99", "frames_over_budget"):
        assert key in stats
    assert {"module", "version", "ok", "error", "latency_ms"} <= set(stats["swaps"][0])
    assert engine_cmd("new", str(proj)).returncode == 2  # refuses a non-empty folder


def test_bundled_demo_runs_under_the_compositor_from_a_user_copy(tmp_path: Path) -> None:
    env = {**ENV, "XDG_DATA_HOME": str(tmp_path / "data")}
    stats_path = tmp_path / "s.json"
    capture = tmp_path / "frame.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.launcher.cli",
            "run",
            "--frames",
            "120",
            "--quiet",
            "--size",
            "160x120",
            "--stats-json",
            str(stats_path),
            "--capture",
            str(capture),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["compositor"]["frames"] >= 120
    assert stats["world"]["entities"] >= 5  # the game's own stats, written as it stopped
    assert stats["systems"]["render.render"]["calls"] > 0
    assert stats["restarts"] == []
    assert capture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Most of the sky is the demo's clear colour, (0.05, 0.05, 0.08): bluish whatever
    # channel order the game's layer travelled in (a swap would make it reddish).
    image = load_png(capture)  # bottom row first: the upper half is rows 60.. of 120
    sky = image[image.shape[0] // 2 :].reshape(-1, 4)[:, :3]
    colours, counts = np.unique(sky[sky.sum(axis=1) > 0], axis=0, return_counts=True)
    r, g, b = (int(v) for v in colours[counts.argmax()])
    assert b > r, (r, g, b)
    copy = tmp_path / "data" / "all-source-engine" / "examples" / "spinning_cubes"
    assert (copy / "systems" / "pulse.py").exists()
    assert (copy / ".engine" / "history").is_dir()  # the history lives with the copy
    bundled = Path(__file__).parent.parent / "examples" / "spinning_cubes"
    assert not (bundled / ".engine").exists()


def test_history_undo_redo_on_a_stopped_game(tmp_path: Path) -> None:
    args = ("--frames", "2", "--quiet", "--single-process", "--no-render")
    write(tmp_path / "systems" / "counter.py", COUNTER.format(step=1))
    assert engine_cmd("run", str(tmp_path), *args).returncode == 0
    write(tmp_path / "systems" / "counter.py", COUNTER.format(step=2))
    assert engine_cmd("run", str(tmp_path), *args).returncode == 0
    r = engine_cmd("history", str(tmp_path), "counter")
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("* v2")
    r = engine_cmd("undo", str(tmp_path), "counter")
    assert r.returncode == 0 and "v1" in r.stdout
    assert ProjectHistory(tmp_path).unit("systems", "counter").active_number == 1
    assert engine_cmd("undo", str(tmp_path), "counter").returncode == 1  # nothing before v1
    assert engine_cmd("redo", str(tmp_path), "counter").returncode == 0
    assert ProjectHistory(tmp_path).unit("systems", "counter").active_number == 2


def test_undo_and_enable_reach_a_running_game(tmp_path: Path) -> None:
    write(tmp_path / "systems" / "counter.py", COUNTER.format(step=1))
    write(
        tmp_path / "systems" / "bad.py",
        """
        import engine

        @engine.system
        def explode(world, dt):
            raise RuntimeError("always")
    """,
    )
    stats_path = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.launcher.cli",
            "run",
            str(tmp_path),
            "--quiet",
            "--stats-json",
            str(stats_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    try:
        wait_for(lambda: (tmp_path / ".engine" / "run.json").exists())
        unit = lambda: ProjectHistory(tmp_path).unit("systems", "counter")  # noqa: E731
        write(tmp_path / "systems" / "counter.py", COUNTER.format(step=5))
        wait_for(lambda: unit().active_number == 2)
        r = engine_cmd("undo", str(tmp_path), "counter")
        assert r.returncode == 0 and "live" in r.stdout, r.stdout + r.stderr
        wait_for(lambda: unit().active_number == 1)
        r = engine_cmd("enable", str(tmp_path), "bad.explode")
        assert r.returncode == 0 and "bad.explode enabled" in r.stdout, r.stdout + r.stderr
        r = engine_cmd("enable", str(tmp_path), "no_such_system")
        assert r.returncode == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    stats = json.loads(stats_path.read_text())
    kinds = [(s["module"], s["kind"]) for s in stats["swaps"]]
    assert ("counter", "undo") in kinds
    assert not (tmp_path / ".engine" / "run.json").exists()


def test_shader_files_have_a_history_the_command_shows(tmp_path: Path) -> None:
    frag = Path(__file__).parent.parent / "src" / "engine" / "render" / "shaders" / "basic.frag"
    write(tmp_path / "shaders" / "basic.frag", frag.read_text())
    (tmp_path / "systems").mkdir()
    write(
        tmp_path / "game.py",
        """
        from engine.render.components import Material, Mesh, Transform

        def setup(world):
            world.create_entity(Transform(position=(0.0, 1.6, -2.0)), Mesh("cube"), Material())
    """,
    )
    r = engine_cmd(
        "run",
        str(tmp_path),
        "--frames",
        "3",
        "--size",
        "32x24",
        "--quiet",
        "--single-process",
        "--no-watch",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = engine_cmd("history", str(tmp_path), "basic.frag")
    assert r.returncode == 0 and r.stdout.startswith("* v1"), r.stdout + r.stderr
    assert engine_cmd("undo", str(tmp_path), "basic.frag").returncode == 1  # nothing before

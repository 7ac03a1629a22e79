"""A user's mistakes get one or two plain lines and exit status 2, never a traceback:
``engine run`` run as a user would, in a real subprocess, on real folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine.launcher.project_lock import ProjectBusy, ProjectLock
from test_cli import ENV, engine_cmd


def assert_user_error(r: subprocess.CompletedProcess, *words: str) -> None:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert 1 <= len(lines) <= 2, r.stderr
    for word in words:
        assert word in r.stderr, r.stderr


def new_project(tmp_path: Path) -> Path:
    proj = tmp_path / "game"
    assert engine_cmd("new", str(proj)).returncode == 0
    return proj


def test_a_missing_project_folder_says_how_to_make_one(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    r = engine_cmd("run", str(missing), "--frames", "5", "--quiet")
    assert_user_error(r, "no project folder", f"engine new {missing}")
    assert not missing.exists()


def test_a_file_given_as_the_project_is_refused(tmp_path: Path) -> None:
    proj = new_project(tmp_path)
    r = engine_cmd("run", str(proj / "game.py"), "--frames", "5", "--quiet")
    assert_user_error(r, "is a file, not a project folder")


def test_window_without_a_display_is_refused_before_the_compositor_starts(
    tmp_path: Path,
) -> None:
    proj = new_project(tmp_path)
    env = {k: v for k, v in ENV.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run(
        [sys.executable, "-m", "engine.launcher.cli", "run", str(proj), "--window", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert_user_error(r, "--window needs a display", "no DISPLAY")
    assert not (proj / ".engine" / "game-stats.json").exists()  # nothing was started


def test_window_with_an_unreachable_display_is_refused(tmp_path: Path) -> None:
    proj = new_project(tmp_path)
    env = {**ENV, "DISPLAY": ":4242"}  # no X server listens there
    r = subprocess.run(
        [sys.executable, "-m", "engine.launcher.cli", "run", str(proj), "--window", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert_user_error(r, "--window needs a display", "DISPLAY=:4242 unreachable")


def test_a_second_run_on_the_same_project_names_the_first(tmp_path: Path) -> None:
    proj = new_project(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from engine.launcher.project_lock import ProjectLock\n"
            "ProjectLock(sys.argv[1]).acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            str(proj),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = engine_cmd(
            "run", str(proj), "--frames", "5", "--quiet", "--single-process", "--no-render"
        )
        assert_user_error(r, "already running", f"process {holder.pid}", f"kill {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: the project runs again.
    r = engine_cmd("run", str(proj), "--frames", "5", "--quiet", "--single-process", "--no-render")
    assert r.returncode == 0, r.stderr


def test_the_lock_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    first = ProjectLock(tmp_path)
    first.acquire()
    try:
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\n"
                "from engine.launcher.project_lock import ProjectBusy, ProjectLock\n"
                "try:\n"
                "    ProjectLock(sys.argv[1]).acquire()\n"
                "except ProjectBusy as exc:\n"
                "    print(exc.pid)\n",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
        )
        assert child.stdout.strip() == str(os.getpid())
    finally:
        first.release()
    second = ProjectLock(tmp_path)
    second.acquire()  # free again once released
    second.release()
    assert issubclass(ProjectBusy, RuntimeError)


def test_a_broken_game_py_is_one_line_with_its_line_and_the_game_still_runs(
    tmp_path: Path,
) -> None:
    proj = new_project(tmp_path)
    source = (proj / "game.py").read_text() + "\ndef broken(:\n"
    (proj / "game.py").write_text(source)
    line = source.count("\n")
    r = engine_cmd("run", str(proj), "--frames", "20", "--quiet", "--single-process", "--no-render")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    assert f"game.py:{line}: SyntaxError" in out
    assert "engine: 20 frames" in r.stdout  # the systems ran all the same


def test_stats_prints_the_last_run_or_says_there_is_none(tmp_path: Path) -> None:
    proj = new_project(tmp_path)
    r = engine_cmd("stats", str(proj))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stdout.strip() == (
        f"engine: no stats for {proj} yet: `engine run {proj}` writes them as it stops"
    )
    r = engine_cmd("run", str(proj), "--frames", "30", "--quiet", "--single-process", "--no-render")
    assert r.returncode == 0, r.stderr
    r = engine_cmd("stats", str(proj))
    assert r.returncode == 0, r.stderr
    assert f"last run of {proj}" in r.stdout
    assert "bob.bob" in r.stdout and "frames 30 |" in r.stdout
    assert "in all, 0 failed" in r.stdout
    table = [line for line in r.stdout.splitlines() if not line.startswith("engine:")]
    assert max(len(line) for line in table) <= 100  # the table fits 100 columns
    assert_user_error(engine_cmd("stats", str(tmp_path / "nothing")), "no project folder")

"""The ``engine`` command, run as a user would: real subprocesses on real project folders."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import COUNTER, load_png, write
from engine.game import send_command
from engine.loader.history import ProjectHistory
from engine.scheduler.scheduler import SystemState

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


# -- the control socket ------------------------------------------------------------------


def start_game(project: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.launcher.cli",
            "run",
            str(project),
            "--single-process",
            "--no-render",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    wait_for(lambda: (project / ".engine" / "run.json").exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()[0]
    return proc


def stop_game(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    print(out)  # shown by pytest when the test fails
    assert proc.returncode == 0, out
    return out


def exchange(project: Path, *lines: bytes) -> list[dict]:
    """Send raw request lines on one connection; one parsed reply per line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(project / ".engine" / "control.sock"))
        sock.sendall(b"".join(lines))
        data = b""
        while data.count(b"\n") < len(lines):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_the_control_socket_answers_garbage_with_errors_and_keeps_serving(tmp_path: Path) -> None:
    write(tmp_path / "systems" / "counter.py", COUNTER.format(step=1))
    proc = start_game(tmp_path)
    try:
        replies = exchange(
            tmp_path,
            b"[1,2]\n",
            b"not json\n",
            b"\xff\xfe\n",
            b'{"op": 5}\n',
            b'{"op": "nope"}\n',
            b'{"op": "undo"}\n',
            b'{"op": "undo", "module": ["counter"]}\n',
            b'{"op": "enable", "system": "no.such"}\n',
            b'{"op": "ping"}\n',
        )
        assert [r["ok"] for r in replies] == [False] * 8 + [True]
        errors = [r["error"] for r in replies[:8]]
        assert "a JSON object" in errors[0] and "[1, 2]" in errors[0]
        assert errors[1].startswith("not JSON")
        assert "UTF-8" in errors[2]
        assert errors[3].startswith("unknown command 5 (known: enable, ping, redo, rewind, undo")
        assert errors[4].startswith("unknown command 'nope'")
        assert errors[5] == errors[6] == "undo needs 'module' (str)"
        assert errors[7].startswith("no single system named 'no.such'")
        (too_long,) = exchange(tmp_path, b"x" * 70_000 + b"\n")
        assert too_long == {"ok": False, "error": "request longer than 65536 bytes"}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # hangs up half-way
            sock.connect(str(tmp_path / ".engine" / "control.sock"))
            sock.sendall(b'{"op": "en')
        r = engine_cmd("enable", str(tmp_path), "counter.count")
        assert r.returncode == 0 and "counter.count enabled" in r.stdout, r.stdout + r.stderr
    finally:
        out = stop_game(proc)
    assert "Traceback" not in out
    assert not (tmp_path / ".engine" / "control.sock").exists()


def test_closing_every_descriptor_in_user_code_does_not_stop_reloads_or_commands(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "closed"
    write(tmp_path / "systems" / "counter.py", COUNTER.format(step=1))
    write(
        tmp_path / "systems" / "closer.py",
        f"""
        import os
        import engine

        DONE = []

        @engine.system(hard_limit_ms=1000)  # closing 1021 fds can take a while
        def close_everything(world, dt):
            if not DONE:
                DONE.append(1)
                os.closerange(3, 1024)   # the watcher's inotify, the control socket, …
                open({str(marker)!r}, "w").close()
    """,
    )
    proc = start_game(tmp_path)
    try:
        wait_for(marker.exists)
        ran = tmp_path / "v2-ran"
        write(
            tmp_path / "systems" / "counter.py",
            COUNTER.format(step=1) + f"    open({str(ran)!r}, 'w').close()\n",
        )
        wait_for(ran.exists, timeout_s=60)
        r = engine_cmd("enable", str(tmp_path), "counter.count")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        out = stop_game(proc)
    assert "the file watcher stopped" in out and "the control socket failed" in out


def test_a_command_for_a_game_that_runs_no_frame_is_withdrawn(
    project, make_engine, monkeypatch
) -> None:
    import engine.game

    monkeypatch.setattr(engine.game, "COMMAND_FRAME_TIMEOUT_S", 0.2)
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    eng = make_engine(project)
    eng.step()
    handle = eng.scheduler.handles["counter.count"]
    eng.scheduler.disable(handle, "manual", "off for the test")
    eng.start_control()  # but no frame runs
    reply = send_command(project, "enable", system="counter.count")
    assert reply == {
        "ok": False,
        "error": "the game ran no frame within 0.2 s; the command was withdrawn",
    }
    eng.step()
    assert handle.state is SystemState.DISABLED  # it did not run later behind our back
    assert send_command(project, "ping")["ok"]


def test_a_command_for_a_game_that_is_not_running_says_so(tmp_path: Path) -> None:
    reply = send_command(tmp_path, "enable", system="x.y")
    assert not reply["ok"] and reply["error"].startswith("no running game answered")


def test_a_project_deeper_than_a_socket_address_allows_still_takes_commands(
    tmp_path: Path,
) -> None:
    """AF_UNIX addresses hold 107 bytes; a project path may be longer."""
    from engine.contracts.control import ControlServer, request

    deep = tmp_path / ("d" * 80) / ("e" * 80)
    path = deep / ".engine" / "control.sock"
    server = ControlServer(path, lambda message: {"ok": True, "op": message.get("op")})
    server.start()
    try:
        assert request(path, {"op": "ping"}) == {"ok": True, "op": "ping"}
    finally:
        server.stop()
    assert len(str(path)) > 107 and not path.exists()

"""Vetting code before it goes live (``engine run --vet``): real processes throughout.

The project is the fault suite's small one (tests/test_supervisor_faults.py): ``count`` adds
one to a counter every frame and logs ``pid value``; ``fault`` v1 touches ``marks/v1-PID``.
A candidate ``fault`` v2 touches ``marks/v2-PID`` before doing what the test wants, so the
marks say which process ever ran it: the live game must not before it is promoted.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import LOGGED_COUNTER as COUNT
from engine.loader.history import ProjectHistory, VersionStatus
from test_supervisor_faults import TIMEOUT_S, counter_log, make_project, make_supervisor

CANDIDATE = """
import os, time
from pathlib import Path
import engine

@engine.system(order=1)
def fault(world, dt):
    Path({marks!r}, f"v2-{{os.getpid()}}").touch()
{body}
"""


def save_candidate(project: Path, body: str = "pass") -> None:
    source = CANDIDATE.format(marks=str(project / "marks"), body=textwrap.indent(body, "    "))
    (project / "systems" / "fault.py").write_text(source)


def ran_v2(project: Path, pid: int | None) -> bool:
    return (project / "marks" / f"v2-{pid}").exists()


def live_ready(sup, project: Path) -> bool:  # noqa: ANN001
    return sup.checkpoint_path.exists() and len(counter_log(project)) > 20


def live_fault(project: Path):  # noqa: ANN201
    return ProjectHistory(project).unit("systems", "fault")


def test_auto_vetting_promotes_a_clean_candidate_after_its_frames_on_the_copy(tmp_path):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, vet="auto", vet_frames=30, standby=False) as sup:
        sup.start()
        assert sup.run_until(lambda: live_ready(sup, project), TIMEOUT_S), messages
        live = sup.game_pid
        save_candidate(project)
        saved_at = max(v for p, v in counter_log(project) if p == live)
        assert sup.run_until(lambda: sup.preview is not None, TIMEOUT_S), messages
        preview = sup.preview.process.pid
        assert sup.run_until(lambda: ran_v2(project, preview), TIMEOUT_S), messages
        assert not ran_v2(project, live)  # on the copy only, until it is vetted
        # A fresh copy: taken after the save was seen, not the last periodic checkpoint.
        first_in_preview = min(v for p, v in counter_log(project) if p == preview)
        assert first_in_preview > saved_at, (first_in_preview, saved_at)
        assert sup.run_until(lambda: "fault" in sup.preview_stats["promoted"], TIMEOUT_S), messages
        assert sup.run_until(lambda: ran_v2(project, live), TIMEOUT_S), messages
        assert sup.game_pid == live  # swapped in, not restarted
        stats = sup.stop()
    verdicts = stats["preview"]["verdicts"]
    assert [v["action"] for v in verdicts if v["module"] == "fault"] == ["promote"], verdicts
    unit = live_fault(project)
    assert unit.active is not None and unit.active.number == 2


def test_auto_vetting_rejects_a_candidate_that_raises_and_the_live_world_never_runs_it(
    tmp_path,
):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, vet="auto", vet_frames=30, standby=False) as sup:
        sup.start()
        assert sup.run_until(lambda: live_ready(sup, project), TIMEOUT_S), messages
        live = sup.game_pid
        save_candidate(project, "raise ZeroDivisionError('candidate broke')")
        assert sup.run_until(
            lambda: any(v["action"] == "reject" for v in sup.preview_stats["verdicts"]),
            TIMEOUT_S,
        ), messages
        values_then = len([v for p, v in counter_log(project) if p == live])
        assert sup.run_until(
            lambda: len([v for p, v in counter_log(project) if p == live]) > values_then + 30,
            TIMEOUT_S,
        ), messages
        stats = sup.stop()
    assert not ran_v2(project, live)
    reject = next(v for v in stats["preview"]["verdicts"] if v["action"] == "reject")
    assert reject["module"] == "fault" and "fault.py:9" in reject["reason"], reject
    assert stats["preview"]["promoted"] == {}
    unit = live_fault(project)
    assert unit.active is not None and unit.active.number == 1
    assert any("rejected fault" in m for m in messages), messages
    # The live history keeps the rejected text, marked bad, with where it was vetted.
    rejected = unit.latest
    assert rejected.number == 2 and rejected.status is VersionStatus.BAD
    assert rejected.vetted is not None and str(rejected.vetted.result) == "rejected"


def test_a_preview_that_crashes_is_reported_and_the_live_game_never_notices(tmp_path):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, vet="auto", vet_frames=30, standby=False) as sup:
        sup.start()
        assert sup.run_until(lambda: live_ready(sup, project), TIMEOUT_S), messages
        live = sup.game_pid
        save_candidate(project, "os._exit(7)")
        assert sup.run_until(lambda: bool(sup.preview_stats["faults"]), TIMEOUT_S), messages
        assert sup.run_until(lambda: len(counter_log(project)) > 200, TIMEOUT_S), messages
        assert sup.game_pid == live
        stats = sup.stop()
    assert stats["restarts"] == []
    fault = stats["preview"]["faults"][0]
    assert fault["module"] == "fault" and fault["version"] == 2, fault
    assert "exit 7" in fault["message"] and "untouched" in fault["message"]
    assert live_fault(project).active.number == 1


def test_a_slow_candidate_slows_the_preview_not_the_live_game(tmp_path):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    # 30 ms a frame: over the frame, so the preview runs at a third of the rate at most
    # (a preview measures slowness rather than cutting it; the live game would disable it).
    with make_supervisor(project, messages, vet="manual", standby=False) as sup:
        sup.start()
        assert sup.run_until(lambda: live_ready(sup, project), TIMEOUT_S), messages
        save_candidate(project, "time.sleep(0.03)")
        assert sup.run_until(lambda: sup.preview is not None, TIMEOUT_S), messages
        preview = sup.preview

        def frames(game) -> int:  # noqa: ANN001
            beat = game.heartbeat.read()
            return beat.frame if beat is not None else 0

        assert sup.run_until(lambda: frames(preview) > 10, TIMEOUT_S), messages
        live0, preview0 = frames(sup.game), frames(preview)
        assert sup.run_until(lambda: frames(sup.game) > live0 + 180, TIMEOUT_S), messages
        live_ran, preview_ran = frames(sup.game) - live0, frames(preview) - preview0
        sup.stop()
    assert preview_ran < live_ran / 2, (preview_ran, live_ran)


def engine_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.launcher.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_promote_and_discard_from_the_command_line_against_a_running_game(tmp_path):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, vet="manual", standby=False) as sup:
        sup.start()
        assert sup.run_until(lambda: live_ready(sup, project), TIMEOUT_S), messages
        live = sup.game_pid
        save_candidate(project, "raise ValueError('nope')")
        assert sup.run_until(lambda: sup.preview is not None, TIMEOUT_S), messages
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.launcher.cli", "discard", str(project)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert sup.run_until(lambda: proc.poll() is not None, TIMEOUT_S), messages
        assert proc.returncode == 0, proc.communicate()
        assert sup.preview is None
        save_candidate(project)  # a good one this time: a new preview
        assert sup.run_until(lambda: sup.preview is not None, TIMEOUT_S), messages
        preview = sup.preview.process.pid
        assert sup.run_until(lambda: ran_v2(project, preview), TIMEOUT_S), messages
        assert not ran_v2(project, live)
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.launcher.cli", "promote", str(project)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert sup.run_until(lambda: proc.poll() is not None, TIMEOUT_S), messages
        out, err = proc.communicate()
        assert proc.returncode == 0, (out, err)
        assert "promoted into the live game: fault v" in out, out
        assert sup.run_until(lambda: ran_v2(project, live), TIMEOUT_S), messages
        assert sup.preview is None
        sup.stop()
    assert live_fault(project).active.status in (VersionStatus.PROBATION, VersionStatus.GOOD)


def test_promote_with_no_engine_running_says_so_in_one_line(tmp_path):
    project = make_project(tmp_path / "game")
    started = time.monotonic()
    result = engine_cli("promote", str(project))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "no `engine run` is running" in result.stderr
    assert time.monotonic() - started < TIMEOUT_S


FAST_COUNT = COUNT.replace("c.value += 1\n", "c.value += 1000\n")  # the candidate


def test_the_world_diff_names_the_field_a_candidate_changes(tmp_path):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, vet="manual", vet_frames=20, standby=False) as sup:
        sup.start()
        assert sup.run_until(lambda: live_ready(sup, project), TIMEOUT_S), messages
        log = str(project / "counter.log")
        (project / "systems" / "count.py").write_text(FAST_COUNT.format(log=log))
        assert sup.run_until(lambda: sup.preview_stats["diff"] is not None, TIMEOUT_S), messages
        stats = sup.stop()
    diff = stats["preview"]["diff"]
    counter = next(c for c in diff["components"] if c["component"].endswith(":Counter"))
    value = next(f for f in counter["fields"] if f["field"] == "value")
    assert value["differing"] == 1 and value["max_abs"] > 1000, value
    assert any("Counter.value" in m for m in messages), messages


def test_engine_run_vet_auto_from_the_command_line_promotes_a_saved_candidate(tmp_path):
    import os
    import signal

    project = make_project(tmp_path / "game")
    stats_path = tmp_path / "stats.json"
    run = subprocess.Popen(
        [sys.executable, "-m", "engine.launcher.cli", "run", str(project), "--vet", "auto",
         "--vet-frames", "30", "--no-render", "--quiet", "--stats-json", str(stats_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYGLET_HEADLESS": "1"},
    )  # fmt: skip
    try:
        give_up = time.monotonic() + TIMEOUT_S
        while not ((project / ".engine" / "checkpoint.bin").exists() and counter_log(project)):
            assert time.monotonic() < give_up and run.poll() is None
            time.sleep(0.05)
        live = counter_log(project)[0][0]
        save_candidate(project)
        while not ran_v2(project, live):  # promoted into the live game by itself
            assert time.monotonic() < give_up and run.poll() is None
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=TIMEOUT_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, out
    assert "promoted into the live game: fault v2" in out, out
    stats = __import__("json").loads(stats_path.read_text())
    assert stats["vet"] == "auto" and stats["preview"]["promoted"] == {"fault": 2}

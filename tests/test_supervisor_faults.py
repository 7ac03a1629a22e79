"""The failure ladder's bottom rungs, with real processes: whatever the game does, the
compositor keeps presenting, the game's layer is excluded and comes back, the game restarts
with its world from the checkpoint, and the version that broke it is not loaded again.

Each scenario runs a small project: ``count`` adds one to a counter every frame and logs
``pid value``; ``fault`` v1 is harmless (it marks which process ran it). Once v1 has passed
its (shortened) probation and a checkpoint exists, the test saves a v2 of ``fault`` that
kills, crashes or hangs the game the first time it runs.

Nothing here asserts how long anything took: waits are "until this happens, at most N s".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import COUNTER_GAME as GAME
from conftest import LOGGED_COUNTER as COUNT
from engine.compositor.process import CompositorConfig
from engine.launcher.supervisor import Supervisor
from engine.loader.history import ProjectHistory, VersionStatus
from engine.policy import FailurePolicy, Settings
from engine.world.checkpoint import PendingComponent
from engine.world.world import World

TIMEOUT_S = 60  # generous: the machine is shared; a passing run takes a few seconds


FAULT_V1 = """
import os
from pathlib import Path
import engine

@engine.system(order=1)
def fault(world, dt):
    Path({marks!r}, f"v1-{{os.getpid()}}").touch()
"""

FAULT_V2 = """
import ctypes, os, signal, time
from pathlib import Path
import engine

@engine.system(order=1)
def fault(world, dt):
{body}
"""

FAULTS = {
    "exit": ("os._exit(3)", "exit 3"),
    "segfault": ("ctypes.string_at(0)", "signal SIGSEGV"),
    # A C call the watchdog cannot interrupt: its signals (the timer's and the backstop's
    # kick) are blocked, so only SIGKILL works.
    "c_hang": (
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM, signal.SIGURG])\n"
        "ctypes.CDLL(None).sleep(100)",
        "hung",
    ),
    "swallow": (
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except BaseException:\n        pass",
        "hung",
    ),
    # Heartbeats go on, but the render step fails from now on in this process. Once per
    # project: the renderer consumes the marker, and nothing is blamed for it (a game
    # that stops publishing is restarted as it is), so the next game publishes again.
    "stop_publishing": (
        "once = Path({stop!r} + '.sent')\n"
        "if not once.exists():\n"
        "    once.touch()\n"
        "    Path({stop!r}).touch()",
        "not publishing",
    ),
}


def stops_publishing_renderer(engine, spec):  # noqa: ANN001 - a RenderFactory
    """Fills the layer until a marker file appears, then raises every frame (the marker is
    consumed, so the next process publishes again)."""
    from engine.launcher.game_process import fill_renderer

    fill = fill_renderer(engine, spec)
    marker = engine.project_dir / "stop_publishing"
    broken = []

    def render(frame, eyes, slot):  # noqa: ANN001
        if broken or marker.exists():
            marker.unlink(missing_ok=True)
            broken.append(frame)
            raise RuntimeError("render system broke")
        fill(frame, eyes, slot)

    return render


def make_project(root: Path) -> Path:
    (root / "systems").mkdir(parents=True)
    (root / "marks").mkdir()
    (root / "systems" / "count.py").write_text(COUNT.format(log=str(root / "counter.log")))
    (root / "systems" / "fault.py").write_text(FAULT_V1.format(marks=str(root / "marks")))
    (root / "game.py").write_text(GAME)
    return root


def counter_log(project: Path) -> list[tuple[int, int]]:
    try:
        text = (project / "counter.log").read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            rows.append((int(parts[0]), int(parts[1])))
    return rows


def checkpointed_counter(path: Path) -> int:
    """The counter's value in a checkpoint file, read without loading the game's classes."""
    world = World.restore(path.read_bytes(), resolve=lambda key: None)
    try:
        for entity in world.get_entities():
            for component in world.components_for_entity(entity):
                if isinstance(component, PendingComponent) and component.key.endswith(":Counter"):
                    return component.fields["value"]
    finally:
        world.delete()
    raise AssertionError("no Counter in the checkpoint")


def fault_history(project: Path):  # noqa: ANN201
    return ProjectHistory(project).unit("systems", "fault")


def make_supervisor(project: Path, messages: list[str], **options) -> Supervisor:
    compositor = CompositorConfig(
        eye_width=64, eye_height=64, layers=(("game", 32, 32),), grace_s=0.05
    )
    return Supervisor(
        project,
        compositor=compositor,
        checkpoint_interval_s=0.3,
        probation_frames=30,  # detection must come within probation for the blame to land
        report=messages.append,
        **options,
    )


@pytest.mark.parametrize("fault", [*FAULTS, "kill9"])
def test_game_failure_is_survived_and_restarted_from_its_checkpoint(tmp_path, fault):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    options = {}
    if fault == "stop_publishing":
        options["render"] = f"{__name__}:stops_publishing_renderer"
        options["publish_timeout_s"] = 0.1
    sup = make_supervisor(project, messages, **options)
    with sup:
        sup.start()

        def ready() -> bool:
            v1 = fault_history(project).versions
            return (
                sup.checkpoint_path.exists()
                and sup.compositor_frame > 0
                and len(counter_log(project)) > 30
                and bool(v1)
                and v1[0].status is VersionStatus.GOOD
            )

        assert sup.run_until(ready, TIMEOUT_S), messages
        first_pid = sup.game_pid
        if fault == "kill9":
            os.kill(first_pid, signal.SIGKILL)
            expected_cause = "signal SIGKILL"
        else:
            body, expected_cause = FAULTS[fault]
            body = body.format(stop=str(project / "stop_publishing"))
            source = FAULT_V2.format(body=textwrap.indent(body, "    "))
            (project / "systems" / "fault.py").write_text(source)

        assert sup.run_until(lambda: bool(sup.restarts), TIMEOUT_S), messages
        # Read now: the new game restores this file and will not replace it for a while.
        checkpointed = checkpointed_counter(sup.checkpoint_path)
        frame_at_failure = sup.compositor_frame
        new_pid = sup.game_pid
        assert new_pid != first_pid

        def new_game_runs() -> bool:
            rows = [value for pid, value in counter_log(project) if pid == new_pid]
            return len(rows) > 20

        assert sup.run_until(new_game_runs, TIMEOUT_S), messages
        frame_after = sup.compositor_frame
        stats = sup.stop()

    restart = stats["restarts"][0]
    assert restart["cause"].startswith(expected_cause), restart
    assert restart["first_frame_ms"] is not None
    assert len(stats["restarts"]) == 1, stats["restarts"]

    # The compositor went on presenting while there was no game.
    assert frame_after > frame_at_failure > 0, (messages, stats.get("compositor"))
    layer = stats["compositor"]["layers"]["game"]
    assert layer["excluded_frames"] > 0  # the layer was dropped...
    assert layer["restorations"] >= 1  # ...and came back with the new game's frames
    assert stats["compositor"]["frames"] >= frame_after

    # The world came back from the checkpoint, not from setup().
    new_values = [value for pid, value in counter_log(project) if pid == new_pid]
    assert checkpointed > 0
    assert new_values[0] == checkpointed + 1

    history = fault_history(project)
    if fault == "kill9":  # sent from outside: nothing is blamed
        assert [v.status for v in history.versions] == [VersionStatus.GOOD]
        assert "sent from outside the game" in restart["message"]
    elif fault == "stop_publishing":  # the renderer broke, not the system: no blame
        assert restart["blamed"] is None
        assert history.active_number == 2
    else:
        # The version that broke the game is marked bad; the new game runs v1 again.
        assert history.versions[-1].status is VersionStatus.BAD
        assert history.active_number == 1
        assert (project / "marks" / f"v1-{new_pid}").exists()
        # Blamed by name, with the place: the heartbeat named the running system.
        assert restart["blamed"] == "fault v2"
        assert restart["location"].startswith("systems/fault.py:"), restart
        assert restart["message"].startswith(f"{restart['location']}: fault.fault v2 "), restart


def test_a_crash_loop_backs_off_and_says_so(tmp_path):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    policy = FailurePolicy(
        Settings(backoff_ns=60 * 1_000_000_000, max_backoff_ns=120 * 1_000_000_000)
    )
    sup = make_supervisor(project, messages, policy=policy)
    killed: set[int] = set()

    def kill_each_new_game() -> bool:
        # An outside kill -9 of every game once it runs: nothing to blame, the same fault
        # every time (a game dying in game.py's setup waits for an edit instead).
        pid = sup.game_pid
        if pid is not None and pid not in killed and sup.game_frame >= 1:
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
        return sup.crash_loop is not None

    with sup:
        sup.start()
        assert sup.run_until(kill_each_new_game, TIMEOUT_S), messages
        frame = sup.compositor_frame
        assert sup.run_until(lambda: sup.compositor_frame > frame + 5, TIMEOUT_S)
        assert sup.game is None  # waiting out the back-off, not restarting
        stats = sup.stop()
    assert [r["cause"] for r in stats["restarts"]] == ["signal SIGKILL"] * 3
    assert [r["blamed"] for r in stats["restarts"]] == [None] * 3
    assert stats["restarts"][-1]["backoff_ms"] == 60_000
    assert "crash loop" in stats["crash_loop"]
    assert any("crash loop" in m for m in messages)
    assert stats["compositor"]["layers"]["game"]["waiting_frames"] > 0


SUPERVISE = """
import sys
from engine.compositor.process import CompositorConfig
from engine.launcher.supervisor import Supervisor

config = CompositorConfig(eye_width=64, eye_height=64, layers=(("game", 32, 32),))
Supervisor(sys.argv[1], compositor=config).run(stats_json=sys.argv[2])
"""


def test_ctrl_c_stops_the_whole_tree_without_a_restart(tmp_path):
    project = make_project(tmp_path / "game")
    stats_path = tmp_path / "stats.json"
    process = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, str(project), str(stats_path)],
        start_new_session=True,  # its own process group, as a terminal would make it
        # ... and with SIGINT at its default, as a terminal's foreground job has it. Run
        # from a background job (`pytest &`), the test runner ignores SIGINT, a child
        # would inherit that, and Python then rightly leaves Ctrl-C ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        give_up = time.monotonic() + TIMEOUT_S
        while len(counter_log(project)) < 20 and time.monotonic() < give_up:
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does
        output, _ = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output
    stats = json.loads(stats_path.read_text())
    assert stats["restarts"] == []
    assert stats["compositor"]["frames"] > 0
    assert stats["game"]["frames"] >= 20
    assert stats["game"]["engine"]["frames"] >= 20  # the game's own stats, written at exit


def test_a_compositor_that_dies_is_restarted_with_the_game_from_its_checkpoint(tmp_path):
    """The compositor must never die; if it does (a driver crash), the tree comes back."""
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages) as sup:
        sup.start()
        assert sup.run_until(lambda: len(counter_log(project)) > 30, TIMEOUT_S), messages
        before = sup.compositor_frame
        os.kill(sup.compositor.process.pid, signal.SIGKILL)
        assert sup.run_until(lambda: bool(sup.compositor_restarts), TIMEOUT_S), messages
        rows = len(counter_log(project))
        assert sup.run_until(lambda: sup.compositor_frame > before + 60, TIMEOUT_S), messages
        assert sup.run_until(lambda: len(counter_log(project)) > rows + 30, TIMEOUT_S)
        assert sup.compositor_failure is None
        assert sup.restarts == []  # the game did nothing wrong: nothing blamed
        stats = sup.stop()
    assert stats["compositor_restarts"][0]["cause"] == "compositor died (signal SIGKILL)"
    log = counter_log(project)
    first_pid = log[0][0]
    last_old = max(value for pid, value in log if pid == first_pid)
    first_new = next(value for pid, value in log if pid != first_pid)
    # The old game wrote a final checkpoint as it was stopped; the new one continues it.
    assert first_new == last_old + 1
    assert fault_history(project).get(1).status is not VersionStatus.BAD


def test_a_compositor_that_hangs_is_killed_and_restarted_with_the_game(tmp_path):
    """Alive but presenting nothing (stopped here with SIGSTOP, as a driver that never
    returns would leave it) counts as dead: killed, and the tree comes back."""
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, compositor_hang_s=1.0) as sup:
        sup.start()
        assert sup.run_until(lambda: len(counter_log(project)) > 30, TIMEOUT_S), messages
        hung = sup.compositor.process
        os.kill(hung.pid, signal.SIGSTOP)
        assert sup.run_until(lambda: bool(sup.compositor_restarts), TIMEOUT_S), messages
        assert not hung.is_alive()  # killed, not left stopped
        before, rows = sup.compositor_frame, len(counter_log(project))
        assert sup.run_until(lambda: sup.compositor_frame > before + 60, TIMEOUT_S), messages
        assert sup.run_until(lambda: len(counter_log(project)) > rows + 30, TIMEOUT_S)
        assert sup.compositor_failure is None and sup.restarts == []
        stats = sup.stop()
    cause = stats["compositor_restarts"][0]["cause"]
    assert cause.startswith("compositor hung (no frame presented for "), cause
    assert any(m.startswith("supervisor: compositor hung") for m in messages), messages
    log = counter_log(project)
    first_pid = log[0][0]
    last_old = max(value for pid, value in log if pid == first_pid)
    first_new = next(value for pid, value in log if pid != first_pid)
    assert first_new == last_old + 1  # the game stopped cleanly; the new one continues

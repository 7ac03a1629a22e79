"""Blame with real processes: the game says in its heartbeat block what runs now, from its
first line, and the supervisor restarts without exactly that code — also when it was
loaded at start-up, and when the game never reached its first frame.

Each project has a healthy ``count`` system (a counter, logged per process) beside the
fault. Waits are "until this happens, at most N s"; nothing asserts how long anything took.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import LOGGED_COUNTER as COUNT
from engine.compositor.process import CompositorConfig
from engine.launcher.supervisor import Supervisor
from engine.loader.history import ProjectHistory, VersionStatus

TIMEOUT_S = 60


GAME = """
from pathlib import Path
from systems.count import Counter

def setup(world):
    with open({marks!r}, "a") as f:
        f.write("setup\\n")
    world.create_entity(Counter())
"""


def make_project(root: Path, **modules: str) -> Path:
    (root / "systems").mkdir(parents=True)
    (root / "systems" / "count.py").write_text(COUNT.format(log=str(root / "counter.log")))
    (root / "game.py").write_text(GAME.format(marks=str(root / "setup.log")))
    for name, source in modules.items():
        (root / "systems" / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
    return root


def counter_rows(project: Path) -> list[tuple[int, int]]:
    try:
        text = (project / "counter.log").read_text()
    except FileNotFoundError:
        return []
    return [
        (int(p), int(v)) for p, v in (line.split() for line in text.splitlines()) if v.isdigit()
    ]


def make_supervisor(project: Path, messages: list[str], **options) -> Supervisor:
    compositor = CompositorConfig(
        eye_width=64, eye_height=64, layers=(("game", 32, 32),), grace_s=0.05
    )
    options.setdefault("code_timeout_s", 3.0)
    return Supervisor(
        project,
        compositor=compositor,
        checkpoint_interval_s=0.3,
        report=messages.append,
        **options,
    )


def history(project: Path, module: str):  # noqa: ANN201
    return ProjectHistory(project).unit("systems", module)


def runs_in_a_new_game(sup: Supervisor, project: Path, frames: int = 20) -> bool:
    """The game restarted after the newest failure has run ``frames`` frames."""
    return (
        bool(sup.restarts)
        and sup.game_pid == sup.restarts[-1].new_pid
        and (sup.game_frame >= frames)
    )


# What kills or hangs a game in its very first frame (a module loaded at start-up).
FIRST_FRAME_FAULTS = {
    "segfault": ("ctypes.string_at(0)", "signal SIGSEGV", "process-died"),
    "exit": ("os._exit(3)", "exit 3", "process-died"),
    "abort": ("os.abort()", "signal SIGABRT", "process-died"),
    # Blocked SIGALRM and a C call: only the supervisor can stop it, before any frame.
    "c_hang": (
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM, signal.SIGURG])\n"
        "ctypes.CDLL(None).sleep(100)",
        "hung: ran",
        "hung",
    ),
}


@pytest.mark.parametrize("fault", list(FIRST_FRAME_FAULTS))
def test_a_module_loaded_at_start_up_that_breaks_the_first_frame_is_left_out(tmp_path, fault):
    body, cause, kind = FIRST_FRAME_FAULTS[fault]
    source = (
        "import ctypes, os, signal\nimport engine\n\n@engine.system(order=1)\n"
        "def fault(world, dt):\n" + textwrap.indent(body, "    ") + "\n"
    )
    project = make_project(tmp_path / "game", fault=source)
    messages: list[str] = []
    with make_supervisor(project, messages) as sup:
        sup.start()
        assert sup.run_until(lambda: bool(sup.restarts), TIMEOUT_S), messages
        assert sup.run_until(lambda: runs_in_a_new_game(sup, project), TIMEOUT_S), messages
        stats = sup.stop()
    (restart,) = stats["restarts"]  # once: no crash loop, no back-off
    assert restart["cause"].startswith(cause), restart
    assert restart["kind"] == kind and restart["action"] == "restart-without"
    assert restart["blamed"] == "fault v1"
    # faulthandler's dump names the line (a crash, or the dump asked of a hung game); for
    # os._exit, which leaves none, the game noted the line that called it.
    lines = [text.strip() for text in source.splitlines()]
    line = lines.index(body.splitlines()[-1]) + 1
    assert restart["location"] == f"systems/fault.py:{line}", restart
    assert any(
        m.startswith(f"supervisor: {restart['location']}: fault.fault v1 ") for m in messages
    )
    unit = history(project, "fault")
    assert unit.get(1).status is VersionStatus.BAD and unit.active_number is None  # left out
    assert history(project, "count").get(1).status is not VersionStatus.BAD
    assert stats["crash_loop"] is None


BOMB = "import ctypes\nctypes.string_at(0)  # at import\n"


@pytest.mark.parametrize("when", ["at start-up", "saved live"])
def test_module_code_that_crashes_at_import_is_blamed_on_that_module(tmp_path, when):
    """At start-up the main thread imports it; saved live, the loader's thread does, and
    faulthandler's dump says which thread crashed."""
    project = make_project(tmp_path / "game", **({"bomb": BOMB} if when == "at start-up" else {}))
    messages: list[str] = []
    with make_supervisor(project, messages) as sup:
        sup.start()
        if when == "saved live":
            assert sup.run_until(lambda: sup.game_frame > 30, TIMEOUT_S), messages
            (project / "systems" / "bomb.py").write_text(BOMB)
            assert sup.run_until(lambda: bool(sup.restarts), TIMEOUT_S), messages
        assert sup.run_until(lambda: runs_in_a_new_game(sup, project), TIMEOUT_S), messages
        stats = sup.stop()
    (restart,) = stats["restarts"]
    assert restart["blamed"] == "bomb v1" and restart["location"] == "systems/bomb.py:2"
    assert "bomb v1 was running when the game died (signal SIGSEGV)" in restart["message"]
    assert history(project, "bomb").active_number is None


def test_a_hook_that_hangs_at_start_up_is_blamed_on_the_hook(tmp_path):
    project = make_project(
        tmp_path / "game",
        stuck="""
        import ctypes, signal
        import engine

        def on_load(world):
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM, signal.SIGURG])
            ctypes.CDLL(None).sleep(100)

        @engine.system
        def idle(world, dt):
            pass
        """,
    )
    messages: list[str] = []
    with make_supervisor(project, messages, code_timeout_s=2.0) as sup:
        sup.start()
        assert sup.run_until(lambda: runs_in_a_new_game(sup, project), TIMEOUT_S), messages
        stats = sup.stop()
    (restart,) = stats["restarts"]
    assert restart["kind"] == "hung" and restart["blamed"] == "stuck v1"
    # faulthandler's dump (the supervisor asks for it before the kill) names the line.
    assert restart["location"] == "systems/stuck.py:6", restart
    assert restart["message"].startswith("systems/stuck.py:6: stuck.on_load v1 was running")


def test_a_crash_after_a_restart_is_blamed_again_not_looped(tmp_path):
    """The restarted game runs v1 of the fault; v2 crashed, v3 crashes again: each is left
    out in turn and the game keeps its world."""
    project = make_project(tmp_path / "game", fault=FAULT_OK)
    messages: list[str] = []
    with make_supervisor(project, messages, probation_frames=30) as sup:
        sup.start()
        assert sup.run_until(lambda: sup.game_frame > 40, TIMEOUT_S), messages
        for n in (2, 3):
            (project / "systems" / "fault.py").write_text(FAULT_CRASH.format(n=n))
            assert sup.run_until(lambda n=n: len(sup.restarts) >= n - 1, TIMEOUT_S), messages
            assert sup.run_until(lambda: runs_in_a_new_game(sup, project), TIMEOUT_S), messages
        stats = sup.stop()
    assert [r["blamed"] for r in stats["restarts"]] == ["fault v2", "fault v3"]
    unit = history(project, "fault")
    assert [v.status for v in unit.versions][1:] == [VersionStatus.BAD, VersionStatus.BAD]
    assert unit.active_number == 1
    rows = counter_rows(project)
    pids = list(dict.fromkeys(pid for pid, _ in rows))
    assert len(pids) == 3
    for pid in pids[1:]:  # each new game continued the world, never a fresh one
        assert next(v for p, v in rows if p == pid) > 1
    assert (project / "setup.log").read_text() == "setup\n"  # setup ran once, for the new world


FAULT_OK = """
import engine

@engine.system(order=1)
def fault(world, dt):
    pass
"""

FAULT_CRASH = """
import ctypes
import engine

@engine.system(order=1)
def fault(world, dt):  # version {n}
    ctypes.string_at(0)
"""


# --- faults side by side: a numpy-heavy system next to a crashing or hanging one ----------

HEAVY = """
import numpy as np
import engine

A = np.random.default_rng(1).random((700, 700))

@engine.system(order=2)
def heavy(world, dt):
    (A @ A).sum()  # a long C call each frame: over budget, never a crash
"""


@pytest.mark.parametrize(
    "body, kind",
    [
        ("ctypes.string_at(0)", "process-died"),
        (
            "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM, signal.SIGURG])\n"
            "ctypes.CDLL(None).sleep(100)",
            "hung",
        ),
    ],
    ids=["crash", "hang"],
)
def test_a_numpy_heavy_system_beside_a_failing_one_is_not_blamed(tmp_path, body, kind):
    project = make_project(tmp_path / "game", heavy=HEAVY, fault=FAULT_OK)
    messages: list[str] = []
    with make_supervisor(project, messages, probation_frames=30) as sup:
        sup.start()
        assert sup.run_until(lambda: sup.game_frame > 40, TIMEOUT_S), messages
        source = (
            "import ctypes, signal\nimport engine\n\n@engine.system(order=1)\n"
            "def fault(world, dt):\n" + textwrap.indent(body, "    ") + "\n"
        )
        (project / "systems" / "fault.py").write_text(source)
        assert sup.run_until(lambda: bool(sup.restarts), TIMEOUT_S), messages
        assert sup.run_until(lambda: runs_in_a_new_game(sup, project), TIMEOUT_S), messages
        stats = sup.stop()
    (restart,) = stats["restarts"]
    assert restart["kind"] == kind and restart["blamed"] == "fault v2", restart
    assert history(project, "fault").active_number == 1


# --- the world comes back before the modules load -------------------------------------------

WATCHER = """
import engine
from systems.count import Counter

def on_load(world):
    values = [c.value for _, c in world.get_component(Counter)]
    with open({log!r}, "a") as f:
        f.write(f"{{values}}\\n")

@engine.system(order=1)
def watcher(world, dt):
    pass
"""


def test_a_restarted_game_restores_its_world_first_and_skips_setup(tmp_path):
    import os
    import signal

    project = make_project(tmp_path / "game")
    (project / "systems" / "watcher.py").write_text(
        WATCHER.format(log=str(project / "on_load.log"))
    )
    messages: list[str] = []
    with make_supervisor(project, messages) as sup:
        sup.start()
        assert sup.run_until(lambda: sup.game_frame > 40, TIMEOUT_S), messages
        assert sup.run_until(lambda: sup.game_checkpoints >= 2, TIMEOUT_S), messages
        os.kill(sup.game_pid, signal.SIGKILL)
        assert sup.run_until(lambda: bool(sup.restarts), TIMEOUT_S), messages
        assert sup.run_until(lambda: runs_in_a_new_game(sup, project), TIMEOUT_S), messages
        sup.stop()
    seen = (project / "on_load.log").read_text().splitlines()
    # The first game's on_load ran before setup (an empty world); the second one's saw the
    # counter the checkpoint held, and setup did not run again.
    assert seen[0] == "[]"
    assert len(seen) == 2 and seen[1] != "[]" and int(seen[1].strip("[]")) > 0
    assert (project / "setup.log").read_text() == "setup\n"


# A fragment shader that never ends on a GPU. llvmpipe stops a loop after 65535 turns,
# so the work in each turn makes one draw take 2-4 s on 2 loaded cores: the game hangs
# inside the driver, where no watchdog reaches. (With a third of the work, 0.3-0.6 s, a
# second frame done within 0.5 s beat but published nothing: the publish timeout, also
# 0.5 s, ran out first, and "not publishing" restarts without leaving anything out.)
_TURN = "        spin = sin(spin) + cos(spin * 1.3) + sin(spin * 0.7) + cos(spin * 2.1);\n"
ENDLESS_FRAG = (
    """#version 330 core
out vec4 frag_color;
uniform float u_ambient;
void main() {
    float spin = gl_FragCoord.x;
    while (u_ambient < 2.0) {  // line 6
"""
    + _TURN * 12
    + """        if (spin > 1e30) break;
    }
    frag_color = vec4(1.0, 0.0, step(1e30, spin), 1.0);
}
"""
)

CUBE_GAME = """
from engine.render.components import Material, Mesh, Transform
from systems.count import Counter

def setup(world):
    world.create_entity(Counter())
    world.create_entity(Transform(position=(0.0, 1.6, -2.0)), Mesh("cube"), Material())
"""


def test_a_shader_that_hangs_the_gpu_is_blamed_and_the_next_game_draws_without_it(tmp_path):
    """The first frame's draw runs over the render system's hard limit and is interrupted
    (the way out of its drawing cut short); the second draw outlasts the heartbeat's 0.5 s,
    and the running-now word names the shader stage then, not render.render."""
    from engine.launcher.game_process import RENDER_SYSTEM
    from engine.render.context import gl_description

    if "llvmpipe" not in gl_description():
        pytest.skip("a shader that never ends may wedge a real GPU (no display watchdog)")
    project = make_project(tmp_path / "game")
    (project / "game.py").write_text(CUBE_GAME)
    (project / "shaders").mkdir()
    (project / "shaders" / "basic.frag").write_text(ENDLESS_FRAG)
    messages: list[str] = []
    # Longer than a draw takes here (2-4 s on 2 loaded cores), so the warm-up and the
    # first frame's draw end and the hang is the heartbeat's; one that runs out in the
    # warm-up draw blames the shader too ("ran 5.0 s before the first frame").
    with make_supervisor(project, messages, render=RENDER_SYSTEM, code_timeout_s=5.0) as sup:
        sup.start()
        assert sup.run_until(lambda: runs_in_a_new_game(sup, project), TIMEOUT_S), messages
        stats = sup.stop()
    (restart,) = stats["restarts"]  # once: the next game draws with the built-in
    assert restart["kind"] == "hung" and restart["blamed"] == "basic.frag v1", restart
    assert restart["location"] == "shaders/basic.frag:6", restart
    assert "basic.frag v1 was running when the game hung" in restart["message"]
    unit = ProjectHistory(project).unit("shaders", "basic.frag", suffix=".frag")
    assert unit.get(1).status is VersionStatus.BAD and unit.active_number is None


HANGING_SETUP = """
from systems.count import Counter

def setup(world):
    world.create_entity(Counter())
    while True:
        pass
"""

CRASHING_SETUP = """
import ctypes
from systems.count import Counter

def setup(world):
    world.create_entity(Counter())
    ctypes.string_at(0)  # a segfault
"""


@pytest.mark.parametrize("setup", ["hangs", "crashes"])
def test_a_setup_that_hangs_or_crashes_waits_for_game_py_to_be_saved(tmp_path, setup):
    """game.py has no versions to leave out and a new world runs setup again: instead of
    a crash loop, the supervisor says where and starts a game when game.py is saved."""
    project = make_project(tmp_path / "game")
    bad = HANGING_SETUP if setup == "hangs" else CRASHING_SETUP
    (project / "game.py").write_text(bad)
    messages: list[str] = []
    with make_supervisor(project, messages, code_timeout_s=1.0) as sup:
        sup.start()
        assert sup.run_until(lambda: bool(sup.restarts), TIMEOUT_S), messages
        record = sup.restarts[0]
        assert record.action == "wait-for-edit", record
        line = 6 if setup == "hangs" else 7  # the loop's header; the call that crashed
        assert record.location == f"game.py:{line}", record
        assert "the game starts again when game.py is saved" in record.message
        assert not sup.run_until(lambda: sup.game_pid is not None, 2.0)  # no new game
        assert len(sup.restarts) == 1 and sup.game_pid is None and not sup.crash_loop
        (project / "game.py").write_text(GAME.format(marks=str(project / "setup.log")))
        assert sup.run_until(lambda: sup.game_frame >= 20, TIMEOUT_S), messages
        assert len(sup.restarts) == 1
        stats = sup.stop()
    assert "supervisor: game.py saved; starting the game again" in messages
    assert stats["restarts"][0]["action"] == "wait-for-edit"

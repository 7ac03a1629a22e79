"""Containment with real processes: nothing outlives the engine, the game cannot take the
engine down from the side, everything it starts dies with it, its own channels survive
what user code does to stdout and fds, and a memory bomb is a MemoryError.

Waits are "until this happens, at most N s"; nothing asserts how long anything took.
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

TIMEOUT_S = 60


def make_project(root: Path, **modules: str) -> Path:
    (root / "systems").mkdir(parents=True)
    (root / "systems" / "count.py").write_text(COUNT.format(log=str(root / "counter.log")))
    (root / "game.py").write_text(GAME)
    for name, source in modules.items():
        (root / "systems" / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
    return root


def counter_rows(project: Path) -> list[tuple[int, int]]:
    try:
        text = (project / "counter.log").read_text()
    except FileNotFoundError:
        return []
    return [(int(p), int(v)) for p, v in (line.split() for line in text.splitlines())]


def make_supervisor(project: Path, messages: list[str], **options) -> Supervisor:
    compositor = CompositorConfig(
        eye_width=64, eye_height=64, layers=(("game", 32, 32),), grace_s=0.05
    )
    return Supervisor(
        project,
        compositor=compositor,
        checkpoint_interval_s=0.3,
        report=messages.append,
        **options,
    )


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] != b"Z"


def wait_for(condition, timeout_s: float = TIMEOUT_S) -> bool:  # noqa: ANN001
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# --- the game cannot reach outside its own tree -----------------------------------------

TRIES = """
import ctypes, json, os, signal, subprocess
from pathlib import Path
import engine

@engine.system(order=1)
def tries(world, dt):
    out = Path({out!r})
    target = Path({compositor!r})
    if out.exists() or not target.exists():
        return
    compositor = int(target.read_text())
    attempts = {{
        "kill the supervisor": lambda: os.kill(os.getppid(), signal.SIGKILL),
        "kill the compositor": lambda: os.kill(compositor, signal.SIGKILL),
        "stop the supervisor's group": lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGTERM),
        "signal everyone": lambda: os.kill(-1, signal.SIGTERM),
        "kill through ctypes": lambda: ctypes.CDLL(None).kill(os.getppid(), signal.SIGKILL),
    }}
    results = {{}}
    for what, attempt in attempts.items():
        try:
            attempt()
            results[what] = "allowed"
        except PermissionError as exc:
            results[what] = str(exc)
    # Around the audit hook: the kernel's fence (seccomp) refuses these. Only tried under
    # a filter: without one they would kill the test runner, the supervisor's process.
    filtered = "Seccomp:\t2" in Path("/proc/self/status").read_text()
    libc = ctypes.CDLL(None, use_errno=True)
    for what, target in (("supervisor", os.getppid()), ("compositor", compositor)):
        if not filtered:
            results[f"raw kill of the {{what}}"] = "not tried: no seccomp filter"
            continue
        done = libc.syscall({kill_nr}, target, signal.SIGKILL)
        results[f"raw kill of the {{what}}"] = (
            "allowed" if done == 0 else os.strerror(ctypes.get_errno())
        )
        command = subprocess.run(["sh", "-c", f"kill -KILL {{target}}"], capture_output=True)
        results[f"kill command to the {{what}}"] = (
            "allowed" if command.returncode == 0 else command.stderr.decode()
        )
    out.with_suffix(".tmp").write_text(json.dumps(results))
    out.with_suffix(".tmp").rename(out)  # whole, or not there yet
"""


def kill_syscall() -> int:
    import pyseccomp

    return pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "kill")


def test_the_game_cannot_signal_the_supervisor_or_the_compositor(tmp_path):
    project = make_project(tmp_path / "game")
    out, pid_file = tmp_path / "results.json", tmp_path / "compositor.pid"
    (project / "systems" / "tries.py").write_text(
        TRIES.format(out=str(out), compositor=str(pid_file), kill_nr=kill_syscall())
    )
    messages: list[str] = []
    with make_supervisor(project, messages) as sup:
        sup.start()
        pid_file.write_text(str(sup.compositor.process.pid))
        assert sup.run_until(out.exists, TIMEOUT_S), messages
        frames = sup.compositor_frame
        assert sup.run_until(lambda: sup.compositor_frame > frames + 30, TIMEOUT_S), messages
        assert sup.compositor.alive()
        stats = sup.stop()
    results = json.loads(out.read_text())
    for what, result in results.items():
        if what.startswith(("raw kill", "kill command")):
            assert "not permitted" in result, (what, result)  # EPERM, from the kernel
        else:
            assert result.startswith("the engine refuses"), (what, result)
    assert "not part of this game" in results["kill the supervisor"]
    assert stats["restarts"] == [] and stats["compositor_restarts"] == []


def test_killpg_zero_stops_only_the_game_and_is_blamed_on_the_system_that_sent_it(tmp_path):
    project = make_project(
        tmp_path / "game",
        stopper="""
        import os, signal
        import engine

        @engine.system(order=1)
        def stopper(world, dt):
            os.killpg(0, signal.SIGTERM)
        """,
    )
    messages: list[str] = []
    # Not a test of hang detection: a starved machine must not make the game look hung.
    with make_supervisor(project, messages, heartbeat_timeout_s=2.0, publish_timeout_s=2.0) as sup:
        sup.start()
        compositor = sup.compositor.process.pid
        assert sup.run_until(lambda: bool(sup.restarts), TIMEOUT_S), messages
        assert sup.run_until(lambda: sup.game_frame > 20, TIMEOUT_S), messages
        assert sup.compositor.process.pid == compositor and sup.compositor.alive()
        stats = sup.stop()
    assert len(stats["restarts"]) == 1, stats["restarts"]
    (restart,) = stats["restarts"]
    assert restart["cause"] == "exit 0" and restart["blamed"] == "stopper v1", restart
    assert restart["location"] == "systems/stopper.py:6"  # the line that sent it
    assert stats["compositor_restarts"] == []
    assert ProjectHistory(project).unit("systems", "stopper").active_number is None


SPAWNER = """
import os, subprocess
from pathlib import Path
import engine

@engine.system(order=1, hard_limit_ms=2000)  # starting processes takes a while under load
def spawner(world, dt):
    pids = Path({pids!r})
    if not pids.exists():
        plain = subprocess.Popen(["sleep", "300"])
        escaped = subprocess.Popen(["sleep", "301"], start_new_session=True)
        pids.write_text(f"{{plain.pid}} {{escaped.pid}}")
    elif Path({crash!r}).exists():
        os._exit(3)
"""


def test_processes_the_game_started_die_with_it(tmp_path):
    project = make_project(tmp_path / "game")
    pids_file, crash = tmp_path / "pids", tmp_path / "crash"
    (project / "systems" / "spawner.py").write_text(
        SPAWNER.format(pids=str(pids_file), crash=str(crash))
    )
    messages: list[str] = []
    with make_supervisor(project, messages) as sup:
        sup.start()
        assert sup.run_until(pids_file.exists, TIMEOUT_S), messages
        children = [int(p) for p in pids_file.read_text().split()]
        assert all(alive(pid) for pid in children)
        crash.touch()
        assert sup.run_until(lambda: bool(sup.restarts), TIMEOUT_S), messages
        # Killed when the game ended, before the next one started: not one left.
        assert [pid for pid in children if alive(pid)] == []
        crash.unlink()
        assert sup.run_until(lambda: sup.game_frame > 10, TIMEOUT_S), messages
        stats = sup.stop()
    assert stats["leftovers_killed"] >= 2
    assert any("killed 2 process(es) the game had started" in m for m in messages), messages


# --- nothing outlives the supervisor ------------------------------------------------------

SUPERVISE = """
import sys
from engine.compositor.process import CompositorConfig
from engine.launcher.supervisor import Supervisor

config = CompositorConfig(eye_width=64, eye_height=64, layers=(("game", 32, 32),))
Supervisor(sys.argv[1], compositor=config).run(stats_json=sys.argv[2])
"""


def descendants(root: int) -> set[int]:
    """Every live process below ``root``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                data = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            ppid = int(data[data.rfind(b")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid for pid in found if alive(pid)}


def start_supervisor(project: Path, stats: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, str(project), str(stats)],
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigkill_of_the_supervisor_leaves_nothing_running(tmp_path):
    project = make_project(tmp_path / "game")
    pids_file = tmp_path / "pids"
    (project / "systems" / "spawner.py").write_text(
        SPAWNER.format(pids=str(pids_file), crash=str(tmp_path / "never"))
    )
    process = start_supervisor(project, tmp_path / "stats.json")
    tree: set[int] = set()
    try:
        assert wait_for(pids_file.exists)  # the game runs frames, its children run
        time.sleep(2.0)  # the warden looks for escaped sessions once a second
        tree = descendants(process.pid) | {int(p) for p in pids_file.read_text().split()}
        assert len(tree) >= 5  # compositor, game, warden, two sleeps (and a tracker)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(TIMEOUT_S)
        assert wait_for(lambda: not any(alive(pid) for pid in tree), 10.0), [
            Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tree if alive(pid)
        ]
    finally:
        for pid in tree | {process.pid}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_to_the_supervisor_stops_everything_with_the_stats_written(tmp_path):
    project = make_project(tmp_path / "game")
    stats_path = tmp_path / "stats.json"
    process = start_supervisor(project, stats_path)
    tree: set[int] = set()
    try:
        assert wait_for(lambda: len(counter_rows(project)) > 20)
        tree = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output
    stats = json.loads(stats_path.read_text())
    assert stats["restarts"] == [] and stats["compositor"]["frames"] > 0
    assert stats["game"]["engine"]["frames"] >= 20  # the game stopped cleanly too
    # multiprocessing's resource tracker ends by itself once the supervisor has gone.
    assert wait_for(lambda: not any(alive(pid) for pid in tree), 10.0), [
        Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tree if alive(pid)
    ]


# --- the engine's channels do not depend on the user's ----------------------------------


def test_user_code_closing_stdout_does_not_break_the_engine(tmp_path, capfd):
    project = make_project(
        tmp_path / "game",
        closer="""
        import sys
        import engine

        @engine.system(order=1)
        def closer(world, dt):
            if not sys.stdout.closed:
                sys.stdout.close()
        """,
    )
    messages: list[str] = []
    with make_supervisor(project, messages, probation_frames=30) as sup:
        sup.start()
        assert sup.run_until(lambda: sup.game_frame > 60, TIMEOUT_S), messages
        # A swap now is reported by the game on its own copy of stdout.
        (project / "systems" / "late.py").write_text("X = 1\n")
        assert sup.run_until(lambda: "swap late v1" in capfd.readouterr().out, TIMEOUT_S)
        assert sup.run_until(lambda: sup.game_frame > 120, TIMEOUT_S), messages
        stats = sup.stop()
    assert stats["restarts"] == []


def test_user_code_closing_every_fd_keeps_the_game_running(tmp_path):
    project = make_project(
        tmp_path / "game",
        closer="""
        import os
        import engine

        @engine.system(order=1)
        def closer(world, dt):
            if not hasattr(closer, "done"):
                closer.done = True
                os.closerange(3, 1024)
        """,
    )
    messages: list[str] = []
    with make_supervisor(project, messages) as sup:
        sup.start()
        assert sup.run_until(lambda: sup.game_frame > 30, TIMEOUT_S), messages
        pid = sup.game_pid
        # The heartbeat, the pose and the layer are mappings: they outlive their fds.
        assert sup.run_until(lambda: sup.game_frame > 200, TIMEOUT_S), messages
        assert sup.game_pid == pid
        stats = sup.stop()
    assert stats["restarts"] == []
    assert stats["compositor"]["layers"]["game"]["fresh_frames"] > 150


# --- memory -------------------------------------------------------------------------------

BOMB = """
from pathlib import Path
import numpy as np
import engine

@engine.system(order=1)
def bomb(world, dt):
    try:
        np.zeros(4 << 30, np.uint8)  # 4 GiB: far past the game's limit
    except MemoryError:
        Path({marker!r}).touch()
        raise
"""


def test_a_memory_bomb_is_a_memory_error_in_the_system_that_made_it(tmp_path):
    project = make_project(tmp_path / "game")
    marker = tmp_path / "memory-error"
    messages: list[str] = []
    with make_supervisor(project, messages, memory_limit=1 << 30) as sup:
        sup.start()
        assert sup.run_until(lambda: sup.game_frame > 30, TIMEOUT_S), messages
        (project / "systems" / "bomb.py").write_text(BOMB.format(marker=str(marker)))
        assert sup.run_until(marker.exists, TIMEOUT_S), messages
        frames = sup.game_frame
        assert sup.run_until(lambda: sup.game_frame > frames + 30, TIMEOUT_S), messages
        stats = sup.stop()
    assert stats["restarts"] == []  # the process and the world were never in danger
    unit = ProjectHistory(project).unit("systems", "bomb")
    assert unit.get(1).status is VersionStatus.BAD  # a new version that ran out: rolled back


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_the_memory_limit_counts_private_memory_not_address_space(tmp_path):
    """RLIMIT_DATA, not RLIMIT_AS: reserving address space (as GPU drivers do) is free."""
    code = textwrap.dedent(
        """
        import mmap
        from engine.launcher.containment import limit_memory
        limit_memory(512 << 20)
        reserved = mmap.mmap(-1, 8 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                             prot=0)  # PROT_NONE: 8 GiB of address space, no memory
        shared = mmap.mmap(-1, 1 << 30)  # shared memory is not the game's to hoard
        try:
            bytearray(1 << 30)
        except MemoryError:
            print("refused")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "refused", result.stderr


NOTED_EXIT = """
import os, sys
from engine.launcher.containment import note_exits

def noted(signum, file, line):
    sys.stdout.write(f"{os.getpid()} {signum} {os.path.basename(file)}:{line}\\n")
    sys.stdout.flush()

note_exits(noted)
pid = os.fork()
if pid == 0:
    os._exit(5)  # a forked child: not noted
_, status = os.waitpid(pid, 0)
sys.stdout.write(f"child {os.waitstatus_to_exitcode(status)}\\n")
sys.stdout.flush()
os._exit(3)  # the game's own exit
"""


def test_os_exit_in_the_game_notes_the_line_that_called_it(tmp_path):
    script = tmp_path / "exits.py"
    script.write_text(NOTED_EXIT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    child, noted = done.stdout.splitlines()
    assert child == "child 5"
    line = NOTED_EXIT.splitlines().index("os._exit(3)  # the game's own exit") + 1
    assert noted.split()[1:] == ["0", f"exits.py:{line}"]  # once, by the game itself

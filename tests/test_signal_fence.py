"""The kernel's fence around the engine's processes (seccomp, through libseccomp): the
ways around the game's audit hook — a raw system call, a ``kill`` command run as a
child — are refused too, while the fenced process still signals its own children and may
probe any process with signal 0.

Each fence is installed in a forked child (a filter cannot be removed), which reports
what it saw through a pipe.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from engine.launcher.containment import fence_signals

pyseccomp = pytest.importorskip("pyseccomp", exc_type=RuntimeError)


def in_fenced_child(protect: list[int], body: Callable[[], dict]) -> dict:
    """Fork; in the child, start a new session, fence ``protect`` off, run ``body`` and
    send back ``{"fence": description, **body()}``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setsid()
            result = {"fence": fence_signals(protect)}
            result.update(body())
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def attempt(call: Callable[[], object]) -> str:
    try:
        call()
    except PermissionError:
        return "refused"
    return "allowed"


@pytest.fixture
def victim():
    """A process outside the fenced child's session (as the supervisor is to the game)."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_signals_to_a_protected_process_are_refused_by_every_route(victim) -> None:
    kill_nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "kill")

    def body() -> dict:
        libc = ctypes.CDLL(None, use_errno=True)
        raw = libc.syscall(kill_nr, victim.pid, signal.SIGKILL)
        command = subprocess.run(
            ["sh", "-c", f"kill -KILL {victim.pid}"], capture_output=True, text=True
        )
        return {
            "os.kill": attempt(lambda: os.kill(victim.pid, signal.SIGKILL)),
            "its group": attempt(lambda: os.killpg(os.getpgid(victim.pid), signal.SIGTERM)),
            "everyone": attempt(lambda: os.kill(-1, signal.SIGCONT)),
            "raw": [raw, ctypes.get_errno()],
            "command": [command.returncode, command.stderr],
            "probe": attempt(lambda: os.kill(victim.pid, 0)),
        }

    seen = in_fenced_child([victim.pid], body)
    assert seen["fence"].startswith("seccomp: 1 processes"), seen
    assert seen["os.kill"] == seen["its group"] == seen["everyone"] == "refused", seen
    assert seen["raw"] == [-1, 1], seen  # EPERM
    assert seen["command"][0] != 0 and "not permitted" in seen["command"][1], seen
    assert seen["probe"] == "allowed", seen
    assert victim.poll() is None  # alive after all that


def test_the_fenced_process_still_signals_what_it_started(victim) -> None:
    def body() -> dict:
        own = subprocess.Popen(["sleep", "60"])
        own.send_signal(signal.SIGTERM)
        grandchild = subprocess.run(  # a child of its child, signalled by that child
            ["sh", "-c", "sleep 60 & kill -TERM $!; wait $!; echo $?"],
            capture_output=True,
            text=True,
        )
        os.killpg(0, 0)  # its own group
        return {"own": own.wait(), "grandchild": grandchild.stdout.strip()}

    seen = in_fenced_child([victim.pid], body)
    assert seen["own"] == -signal.SIGTERM, seen
    assert seen["grandchild"] == str(128 + signal.SIGTERM), seen


def test_without_libseccomp_the_fence_says_the_audit_hook_is_all_there_is(victim) -> None:
    def body() -> dict:
        return {"os.kill": attempt(lambda: os.kill(victim.pid, signal.SIGCONT))}

    saved = sys.modules.get("pyseccomp")
    sys.modules["pyseccomp"] = None  # type: ignore[assignment] - import now raises
    try:
        seen = in_fenced_child([victim.pid], body)
    finally:
        sys.modules["pyseccomp"] = saved  # type: ignore[assignment]
    assert seen["fence"].startswith("no seccomp") and "audit hook only" in seen["fence"]
    assert seen["os.kill"] == "allowed"  # nothing else fenced it here


def test_its_own_pid_group_and_session_are_never_fenced() -> None:
    def body() -> dict:
        me = os.getpid()
        again = fence_signals([me, os.getpgid(0), os.getsid(0)])  # asked to fence itself
        return {
            "again": again,
            "self": attempt(lambda: os.kill(me, signal.SIGCONT)),
            "group": attempt(lambda: os.killpg(0, signal.SIGCONT)),
        }

    seen = in_fenced_child([], body)
    assert seen["again"] == "seccomp: 0 processes, 0 groups fenced", seen
    assert seen["self"] == seen["group"] == "allowed", seen


def test_each_game_role_is_fenced_off_the_processes_it_could_take_down() -> None:
    """The compositor and the warden for every game; the live game for a standby; the live
    game and the standby (the next live game) for a preview."""
    from types import SimpleNamespace

    from engine.launcher.supervisor import Supervisor

    def proc(pid: int) -> SimpleNamespace:
        return SimpleNamespace(process=SimpleNamespace(pid=pid))

    sup = SimpleNamespace(
        compositor=proc(10), _warden=SimpleNamespace(pid=11), game=proc(12), standby=proc(13)
    )
    assert Supervisor._protected(sup, "live") == (10, 11)
    assert Supervisor._protected(sup, "standby") == (10, 11, 12)
    assert Supervisor._protected(sup, "preview") == (10, 11, 12, 13)
    sup.game = sup.standby = None
    assert Supervisor._protected(sup, "preview") == (10, 11)

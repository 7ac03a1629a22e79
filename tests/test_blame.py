"""Blame without processes: what the heartbeat block's running-now words say, how the
supervisor turns them (and faulthandler's dump) into a fault, and how a blamed version
is left out of the history. The real-process tests are in test_supervisor_blame.py."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from conftest import StubWorld
from engine.contracts.handoff import (
    CodeKind,
    HeartbeatReader,
    HeartbeatWriter,
    Phase,
    Running,
    RunningNow,
    RunningReport,
    create_heartbeat_fd,
)
from engine.contracts.shm import create_block_fd
from engine.launcher.supervisor import GameWatch, blame, parse_dump
from engine.loader.history import ProjectHistory, VersionStatus
from engine.loader.loader import leave_out
from engine.policy import Action, FailurePolicy, FaultKind
from engine.scheduler.scheduler import Scheduler
from engine.scheduler.spec import SystemSpec

MS = 1_000_000
S = 1000 * MS
PROJECT = Path("/games/demo")


@pytest.fixture
def block():
    fd = create_heartbeat_fd()
    writer, reader = HeartbeatWriter(fd), HeartbeatReader(fd)
    yield writer, reader
    writer.close(), reader.close(), os.close(fd)


def test_a_new_heartbeat_block_says_the_game_is_importing_until_it_speaks():
    fd = create_heartbeat_fd()
    reader = HeartbeatReader(fd)
    assert reader.running().main == Running("import")
    writer = HeartbeatWriter(fd)
    assert reader.running().main == Running("start")
    writer.close(), reader.close(), os.close(fd)


def test_the_scheduler_stores_which_system_version_runs(block):
    writer, reader = block
    running = writer.running
    running.user_dir = str(PROJECT / "systems")
    seen: list[Running | None] = []

    def spy(world, dt):  # noqa: ANN001
        seen.append(reader.running().main)

    sched = Scheduler()
    sched.running_now = running.main
    sched.set_module_systems("spy", 4, [(SystemSpec("spy"), spy)], frame=0)
    running.name_handles(sched)

    sched.run_frame(StubWorld(), 1 / 90, 1)
    (now,) = seen
    assert (now.phase, now.module, now.version, now.name) == ("system", "spy", 4, "spy")
    assert now.file == __file__ and now.line == spy.__code__.co_firstlineno
    assert reader.running().main == Running("frame")  # after the systems: the engine's own

    # A new version of the module gets a new name; the old id still reads as the old one.
    old_id = sched.handles["spy.spy"].running_id
    sched.set_module_systems("spy", 5, [(SystemSpec("spy"), spy)], frame=1)
    running.name_handles(sched)
    assert sched.handles["spy.spy"].running_id != old_id
    assert reader.describe(sched.handles["spy.spy"].running_id).version == 5


def test_code_outside_the_main_thread_has_its_own_word(block):
    writer, reader = block
    running = writer.running
    running.phase(Phase.IDLE)
    loaded = threading.Event()

    def load() -> None:
        before = running.enter(running.register(CodeKind.MODULE, "heavy", 2, None, "/x.py"))
        seen.append(reader.running())
        running.leave(before)
        loaded.set()

    seen: list[RunningReport] = []
    thread = threading.Thread(target=load)
    thread.start()
    thread.join()
    report = seen[0]
    assert report.main == Running("frame idle")
    assert (report.other.phase, report.other.module, report.other.version) == ("load", "heavy", 2)
    assert report.other_thread == thread.ident and report.main_thread == threading.get_ident()
    assert reader.running().other is None  # left again


def test_a_name_overwritten_by_newer_ones_reads_as_unknown_not_as_the_wrong_code(block):
    writer, reader = block
    running = writer.running
    first = running.register(CodeKind.SYSTEM, "a", 1, "a", "/a.py", 1)
    for i in range(running.capacity):
        running.register(CodeKind.SYSTEM, "b", i, "b", "/b.py", 1)
    assert reader.describe(first) == Running("unknown")


def test_a_four_kilobyte_block_still_carries_phases():
    fd = create_block_fd("small-beat")
    writer, reader = HeartbeatWriter(fd), HeartbeatReader(fd)
    assert writer.running.register(CodeKind.SYSTEM, "a", 1, "a", "/a.py") == 0
    writer.running.phase(Phase.CHECKPOINT)
    assert reader.running().main == Running("checkpoint")
    writer.close(), reader.close(), os.close(fd)


def test_running_now_without_a_block_costs_nothing_to_callers():
    running = RunningNow()
    running.phase(Phase.SETUP)
    assert running.now() == Phase.SETUP
    assert running.register(CodeKind.HOOK, "m", 1, "on_load", "/m.py") == 0


# --- from the running-now words to a fault ------------------------------------------------

FAULT = Running("system", "fault", 2, "fault", str(PROJECT / "systems/fault.py"), 7, True)
COUNT = Running("system", "count", 1, "count", str(PROJECT / "systems/count.py"), 3, True)
LOADING = Running("load", "heavy", 3, None, str(PROJECT / "systems/heavy.py"), 0, True)


def report(main=FAULT, other=None, exit_from=None, exit_signal=0):  # noqa: ANN001, ANN201
    return RunningReport(main, other, exit_from, exit_signal, 0x100, 0x200)


SEGFAULT_DUMP = f"""Fatal Python error: Segmentation fault

Thread 0x0000000000000200 (most recent call first):
  File "{PROJECT}/systems/heavy.py", line 12 in <module>

Current thread 0x0000000000000100 (most recent call first):
  File "/usr/lib/python3.11/ctypes/__init__.py", line 519 in string_at
  File "{PROJECT}/systems/fault.py", line 9 in fault
  File "/engine/scheduler/scheduler.py", line 300 in run_frame

Extension modules: numpy.core._multiarray_umath (total: 1)
"""


def test_a_dump_is_read_per_thread_innermost_first():
    threads = parse_dump(SEGFAULT_DUMP)
    assert threads[0x100][1] == (f"{PROJECT}/systems/fault.py", 9)
    assert threads[0] is threads[0x100]  # the thread that crashed
    assert threads[0x200] == [(f"{PROJECT}/systems/heavy.py", 12)]


def test_a_crash_is_blamed_on_the_system_running_with_the_line_faulthandler_saw():
    fault = blame(PROJECT, FaultKind.PROCESS_DIED, "signal SIGSEGV", report(), SEGFAULT_DUMP, -11)
    assert (fault.module, fault.version, fault.system) == ("fault", 2, "fault.fault")
    assert fault.location == "systems/fault.py:9"  # the project's frame, not ctypes'
    decision = FailurePolicy().decide(fault, 0)
    assert decision.action is Action.RESTART_WITHOUT
    assert decision.message.startswith("systems/fault.py:9: fault.fault v2 was running when")


C_STACK_OVERFLOW = """\
import json, sys


def fault(world, dt):
    json.loads("[" * 2_000_000 + "]" * 2_000_000)  # past the C stack: the limit is raised
"""

CRASH = """\
import faulthandler, importlib.util, sys, threading
faulthandler.enable(all_threads=True)
spec = importlib.util.spec_from_file_location("fault", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
threading.Thread(target=threading.Event().wait, daemon=True).start()
sys.setrecursionlimit(10_000_000)
module.fault(None, 0.0)
"""


def test_a_c_stack_overflow_is_placed_at_the_line_that_recursed(tmp_path):
    """A real crash (no Python frame for the C recursion, another thread alive): the
    dump's innermost project frame is the line, not where the system is defined."""
    import subprocess
    import sys

    path = tmp_path / "systems" / "fault.py"
    path.parent.mkdir()
    path.write_text(C_STACK_OVERFLOW)
    done = subprocess.run([sys.executable, "-c", CRASH, str(path)], capture_output=True, text=True)
    assert done.returncode == -signal.SIGSEGV, done.stderr[-2000:]
    main = Running("system", "fault", 1, "fault", str(path), 4, True)
    fault = blame(
        tmp_path, FaultKind.PROCESS_DIED, "signal SIGSEGV", report(main), done.stderr, -11
    )
    assert fault.location == "systems/fault.py:5", done.stderr[-2000:]


SWALLOW = """\
import engine


@engine.system
def fault(world, dt):
    while True:
        try:
            while True:  # the loop that never ends
                pass
        except BaseException:
            pass
"""


def test_a_hang_in_a_loop_is_placed_at_the_loop_whichever_line_the_dump_caught(tmp_path):
    path = tmp_path / "systems" / "fault.py"
    path.parent.mkdir()
    path.write_text(SWALLOW)
    lines = SWALLOW.splitlines()
    loop = lines.index("            while True:  # the loop that never ends") + 1
    main = Running("system", "fault", 1, "fault", str(path), 4, True)
    for caught in (loop, loop + 1):  # the `while` or its `pass`
        dump = (
            "Current thread 0x0000000000000100 (most recent call first):\n"
            f'  File "{path}", line {caught} in fault\n'
            '  File "/engine/scheduler/scheduler.py", line 300 in run_frame\n'
        )
        fault = blame(tmp_path, FaultKind.HUNG, "hung", report(main), dump, None)
        assert fault.location == f"systems/fault.py:{loop}"
        # A crash is placed at its line: that line is what crashed.
        fault = blame(tmp_path, FaultKind.PROCESS_DIED, "signal SIGSEGV", report(main), dump, -11)
        assert fault.location == f"systems/fault.py:{caught}"


SETUP_LOOP = """def setup(world):
    while True:  # the loop that never ends
        pass
"""


def hang_dump(path: Path, line: int, function: str) -> str:
    return (
        "Current thread 0x0000000000000100 (most recent call first):\n"
        f'  File "{path}", line {line} in {function}\n'
        '  File "/engine/game.py", line 360 in _run_setup\n'
    )


def test_a_hang_is_placed_at_the_loop_that_ran_though_the_fix_was_saved_since(tmp_path):
    """The dump may catch the loop's `pass`; the loop's header is then read from the text
    that ran, not the file now: the user may have saved the fix before the hang was
    declared (a game.py whose setup never returned, a system module's version)."""
    game = tmp_path / "game.py"
    game.write_text("def setup(world):\n    pass\n")  # the fix, saved meanwhile
    setup = Running("setup", file=str(game), line=1)
    dump = hang_dump(game, 3, "setup")  # the `pass` inside the loop
    fault = blame(tmp_path, FaultKind.HUNG, "hung", report(setup), dump, None, SETUP_LOOP)
    assert fault.location == "game.py:2"
    fault = blame(tmp_path, FaultKind.HUNG, "hung", report(setup), dump, None)
    assert fault.location == "game.py:3"  # without the text that ran: the dump's line

    path = tmp_path / "systems" / "fault.py"
    path.parent.mkdir()
    source = "def fault(world):\n" + SETUP_LOOP.split("\n", 1)[1]
    version = ProjectHistory(tmp_path).unit("systems", "fault").record(source)
    path.write_text("def fault(world):\n    return\n")  # v2 not loaded yet
    main = Running("system", "fault", version.number, "fault", str(path), 1, True)
    fault = blame(tmp_path, FaultKind.HUNG, "hung", report(main), hang_dump(path, 3, "fault"), None)
    assert fault.location == "systems/fault.py:2"


def test_a_crash_in_the_loader_thread_is_blamed_on_the_module_it_was_loading():
    dump = SEGFAULT_DUMP.replace("Current thread 0x0000000000000100", "Thread 0x0000000000000100")
    dump = dump.replace("Thread 0x0000000000000200", "Current thread 0x0000000000000200")
    fault = blame(
        PROJECT, FaultKind.PROCESS_DIED, "signal SIGSEGV", report(COUNT, LOADING), dump, -11
    )
    assert (fault.module, fault.version, fault.system, fault.phase) == ("heavy", 3, None, "load")
    assert fault.location == "systems/heavy.py:12"


def test_an_exit_code_is_blamed_on_what_ran_where_it_is_defined():
    fault = blame(PROJECT, FaultKind.PROCESS_DIED, "exit 3", report(), "", 3)
    assert (fault.module, fault.version) == ("fault", 2)
    assert fault.location == "systems/fault.py:7"


def test_a_sigkill_from_outside_blames_nothing():
    fault = blame(PROJECT, FaultKind.PROCESS_DIED, "signal SIGKILL", report(), "", -9)
    assert fault.module is None and "sent from outside the game" in fault.detail
    assert FailurePolicy().decide(fault, 0).action is Action.RESTART


def test_a_signal_the_game_sent_itself_is_blamed_on_what_sent_it():
    asked = report(main=COUNT, exit_from=FAULT, exit_signal=signal.SIGKILL)
    fault = blame(PROJECT, FaultKind.PROCESS_DIED, "signal SIGKILL", asked, "", -9)
    assert (fault.module, fault.version) == ("fault", 2)
    # A SIGTERM to itself (os.killpg(0, SIGTERM)) stops the game cleanly: exit 0.
    asked = report(main=Running("stop"), exit_from=FAULT, exit_signal=signal.SIGTERM)
    fault = blame(PROJECT, FaultKind.PROCESS_DIED, "exit 0", asked, "", 0)
    assert (fault.module, fault.version) == ("fault", 2)


def test_engine_phases_and_engine_code_are_never_left_out():
    fault = blame(PROJECT, FaultKind.HUNG, "hung", report(main=Running("frame idle")), "", None)
    assert fault.module is None and fault.culprit == "frame idle"
    builtin = Running("system", "render", 1, "render", "/engine/systems/render.py", 40, False)
    fault = blame(PROJECT, FaultKind.HUNG, "hung", report(main=builtin), "", None)
    assert fault.module is None and fault.culprit == "render.render"
    assert FailurePolicy().decide(fault, 0).action is Action.RESTART


def test_setup_is_located_in_game_py():
    fault = blame(PROJECT, FaultKind.PROCESS_DIED, "exit 7", report(main=Running("setup")), "", 7)
    assert fault.module is None and fault.location == "game.py"


def test_a_hang_before_the_first_frame_in_user_code_is_its_own_fault():
    w = GameWatch(
        0,
        start_timeout_ns=30 * S,
        heartbeat_timeout_ns=500 * MS,
        publish_timeout_ns=500 * MS,
        code_timeout_ns=2 * S,
    )
    assert w.observe(None, 1 * S, Phase.LOAD) is None
    assert w.observe(None, 2 * S, 70) is None  # a module's code starts running
    assert w.observe(None, 3 * S, 71) is None  # the next one: progress
    assert w.observe(None, 5 * S, 71) is None
    cause = w.observe(None, 5 * S + 1, 71)
    assert cause is not None and cause.startswith("hung: ran 2.0 s before the first frame")
    # The engine's own phases (GL set-up, shader compiles) have only the start timeout.
    w = GameWatch(0, start_timeout_ns=30 * S, heartbeat_timeout_ns=1, publish_timeout_ns=1,
                  code_timeout_ns=2 * S)  # fmt: skip
    assert w.observe(None, 20 * S, Phase.SHADER) is None


def test_a_system_stuck_in_the_first_frame_is_hung_after_the_heartbeat_timeout():
    """Frame 1 is a frame: a system that swallows the watchdog's interrupts there is hung
    as soon as it would be in frame 2, not at the code timeout or the start timeout."""
    names = {
        70: Running("load", "fault", 1, None, "/games/demo/systems/fault.py", 0, True),
        71: Running("system", "fault", 1, "fault", "/games/demo/systems/fault.py", 7, True),
    }
    w = GameWatch(
        0,
        start_timeout_ns=30 * S,
        heartbeat_timeout_ns=500 * MS,
        publish_timeout_ns=500 * MS,
        code_timeout_ns=10 * S,
    )
    assert w.observe(None, 1 * S, 70, names.get) is None  # the module's import ...
    assert w.observe(None, 2 * S, 70, names.get) is None  # ... has the code timeout
    assert w.observe(None, 3 * S, 71, names.get) is None  # its system: the first frame
    assert w.observe(None, 3 * S + 500 * MS, 71, names.get) is None
    cause = w.observe(None, 3 * S + 501 * MS, 71, names.get)
    assert cause == "hung: ran 501 ms in the first frame, no heartbeat"
    # The engine's own render system may take long over a first draw: the code timeout.
    names[72] = Running("system", "render", 1, "render", "/engine/systems/render.py", 9, False)
    assert w.observe(None, 4 * S, 72, names.get) is None
    assert w.observe(None, 13 * S, 72, names.get) is None
    assert w.observe(None, 14 * S + 1, 72, names.get).startswith("hung: ran 10.0 s before")


# --- leaving a version out --------------------------------------------------------------


def test_a_blamed_version_is_left_out_and_the_one_before_it_runs(tmp_path):
    unit = ProjectHistory(tmp_path).unit("systems", "m")
    for text in ("a = 1\n", "a = 2\n", "a = 3\n"):
        unit.activate(unit.record(text).number)
    unit.mark(1, VersionStatus.GOOD)
    before = leave_out(unit, 3, "crashed")
    assert unit.get(3).status is VersionStatus.BAD and unit.get(3).why == "crashed"
    assert before is not None and before.number == 1 and unit.active_number == 1


def test_a_version_that_died_loading_leaves_the_running_one_active(tmp_path):
    unit = ProjectHistory(tmp_path).unit("systems", "m")
    unit.activate(unit.record("a = 1\n").number)
    unit.record("a = 2\n")  # prepared while v1 ran, never went live
    assert leave_out(unit, 2, "crashed at import").number == 1
    assert unit.active_number == 1


def test_the_only_version_blamed_leaves_the_module_out(tmp_path):
    unit = ProjectHistory(tmp_path).unit("systems", "m")
    unit.activate(unit.record("a = 1\n").number)
    assert leave_out(unit, 1, "crashed at start-up") is None
    assert unit.active_number is None

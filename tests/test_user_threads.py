"""Threads that user code starts: charged to their module, held at the frame gate while a
frame runs, stopped when they run away or their version leaves. Real threads running real
project files; what counts as "busy" is injected where a test decides it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import write
from engine.loader.gate import FrameGate
from engine.loader.threads import WINDOW_NS, UserThreads
from engine.policy import FaultKind

SPINNER = """
import threading

import engine

COUNT = [0]


def spin():
    while True:  # the loop
        COUNT[0] += 1


threading.Thread(target=spin, name="spinner", daemon=True).start()


@engine.system
def idle(world, dt):
    pass
"""

LOOP_LINE = SPINNER.lstrip("\n").splitlines().index("    while True:  # the loop") + 1


def wait_for(cond, timeout_s: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def load_spinner(path: Path) -> dict:
    """Run SPINNER as project code (its file under the project), as the loader does."""
    namespace: dict = {"__name__": "systems.spinner", "__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace


def test_a_thread_project_code_starts_waits_at_the_gate_while_a_frame_runs(tmp_path):
    path = write(tmp_path / "systems" / "spinner.py", SPINNER)
    gate = FrameGate()
    threads = UserThreads(gate, lambda f: f.startswith(str(tmp_path)))
    threads.install()
    try:
        gate.close()  # a frame runs
        namespace = load_spinner(path)
        wait_for(lambda: len(threads.threads) == 1)
        (entry,) = threads.threads.values()
        assert entry.module == "spinner" and entry.namespace is namespace
        time.sleep(0.1)
        assert namespace["COUNT"][0] == 0  # held at its first line the whole frame
        gate.open()
        wait_for(lambda: namespace["COUNT"][0] > 1000)
        threads.stop(entry)
        entry.thread.join(5.0)
        assert not entry.thread.is_alive()
    finally:
        threads.uninstall()
        gate.open()


def test_engine_threads_are_not_watched(tmp_path):
    threads = UserThreads(FrameGate(), lambda f: f.startswith(str(tmp_path)))
    threads.install()
    try:
        done = threading.Event()
        t = threading.Thread(target=done.wait, args=(5.0,))
        t.start()
        done.set()
        t.join()
        assert threads.threads == {}
    finally:
        threads.uninstall()


def test_a_busy_user_thread_runs_away_after_its_window_and_is_named_at_its_loop(tmp_path):
    path = write(tmp_path / "systems" / "spinner.py", SPINNER)
    now = [0]
    busy = {"ns": 0}
    threads = UserThreads(
        FrameGate(),
        lambda f: f.startswith(str(tmp_path)),
        clock_ns=lambda: now[0],
        busy_ns=lambda native_id: busy["ns"],
    )
    threads.install()
    try:
        load_spinner(path)
        wait_for(lambda: len(threads.threads) == 1)
        (entry,) = threads.threads.values()
        busy["ns"] = WINDOW_NS  # busy all the time so far ...
        now[0] = WINDOW_NS - 1
        assert threads.watch() == []  # ... but its window has not ended
        now[0] = WINDOW_NS
        (runaway,) = threads.watch()
        assert runaway.thread is entry and (runaway.file, runaway.line) == (str(path), LOOP_LINE)
        busy["ns"] += WINDOW_NS // 4  # a quiet window (it waited on I/O, say): not a runaway
        now[0] += WINDOW_NS
        assert threads.watch() == []
        threads.stop(entry)
        entry.thread.join(5.0)
        assert not entry.thread.is_alive() and threads.stopped == 1
        assert threads.watch() == [] and threads.threads == {}  # gone: forgotten
    finally:
        threads.uninstall()


def test_a_runaway_thread_started_at_import_is_reported_and_stopped_by_the_loader(
    project, make_engine
):
    messages: list[str] = []
    write(project / "systems" / "spinner.py", SPINNER)
    eng = make_engine(project, report=messages.append)
    threads = eng.loader.threads
    wait_for(lambda: len(threads.threads) == 1)  # it has started
    (entry,) = threads.threads.values()
    threads.busy_ns = lambda native_id: entry.busy_at_seen_ns + WINDOW_NS  # busy throughout
    (fault,) = eng.loader.watch_threads(now_ns=entry.seen_ns + WINDOW_NS)
    assert fault.kind is FaultKind.RUNAWAY_THREAD
    assert (fault.module, fault.version) == ("spinner", 1)
    assert fault.location == f"systems/spinner.py:{LOOP_LINE}"
    entry.thread.join(5.0)
    assert not entry.thread.is_alive()
    assert any(
        m.startswith(f"engine: systems/spinner.py:{LOOP_LINE}: spinner v1 ") for m in messages
    )
    eng.step()  # the module's systems run on
    assert eng.scheduler.handles["spinner.idle"].state.name != "DISABLED"


def test_the_threads_of_a_version_that_leaves_are_stopped(project, make_engine):
    from conftest import run_until

    write(project / "systems" / "spinner.py", SPINNER)
    eng = make_engine(project)
    eng.start_watching()
    eng.loader.threads.share = 2.0  # never a runaway: only the swap stops it
    wait_for(lambda: len(eng.loader.threads.threads) == 1)
    (entry,) = eng.loader.threads.threads.values()
    write(project / "systems" / "spinner.py", "import engine\n")
    run_until(eng, lambda: not entry.thread.is_alive())
    assert eng.loader.threads.stopped == 1


SWALLOWER = """
import threading

COUNT = [0]
QUIT = [False]


def tick():
    COUNT[0] += 1


def spin():
    while not QUIT[0]:
        try:
            while not QUIT[0]:
                tick()
        except BaseException:  # swallows every stop
            pass


threading.Thread(target=spin, name="swallower", daemon=True).start()
"""


def test_a_thread_that_swallows_its_stops_is_still_held_at_the_gate(tmp_path):
    """A stop can land inside the gate hook itself (it runs at every call and line of the
    thread); an exception leaving a trace hook switches tracing off for the thread, and the
    thread would then run through frames. The hook must come back every time."""
    path = write(tmp_path / "systems" / "swallower.py", SWALLOWER)
    gate = FrameGate()
    threads = UserThreads(gate, lambda f: f.startswith(str(tmp_path)))
    threads.install()
    namespace: dict = {}
    try:
        namespace = load_spinner(path)
        wait_for(lambda: len(threads.threads) == 1)
        (entry,) = threads.threads.values()
        count = namespace["COUNT"]
        for _ in range(20):
            before = count[0]
            threads.stop(entry)
            wait_for(lambda before=before: count[0] > before + 1000)  # swallowed, runs on
        gate.close()  # a frame runs
        time.sleep(0.05)
        held = count[0]
        time.sleep(0.2)
        assert count[0] == held, "the thread ran on through a frame: its hook is gone"
    finally:
        gate.open()
        if namespace:
            namespace["QUIT"][0] = True
        threads.uninstall()


def test_a_thread_that_swallows_every_stop_is_unstoppable_after_three(project, make_engine):
    """Three windows stopped and running away again: the policy restarts the game without
    the version (the game process ends itself for that); without a game process to end,
    the fault is said and the thread stopped again."""
    from engine.loader.loader import UNSTOPPABLE_AFTER

    path = write(project / "systems" / "swallower.py", SWALLOWER)
    messages: list[str] = []
    eng = make_engine(project, report=messages.append)
    namespace = eng.loader.active["swallower"].module.__dict__
    threads = eng.loader.threads
    ended: list[tuple] = []
    try:
        wait_for(lambda: len(threads.threads) == 1)
        (entry,) = threads.threads.values()
        threads.busy_ns = lambda native_id: entry.busy_at_seen_ns + WINDOW_NS  # busy always
        kinds = []
        for _ in range(UNSTOPPABLE_AFTER):
            (fault,) = eng.loader.watch_threads(now_ns=entry.seen_ns + WINDOW_NS)
            kinds.append(fault.kind)
            stops = entry.stops
            wait_for(lambda stops=stops: namespace["COUNT"][0] > 0 and entry.stops == stops)
        assert kinds == [FaultKind.RUNAWAY_THREAD] * UNSTOPPABLE_AFTER
        assert entry.thread.is_alive()  # it swallowed them all
        # No process to end (the engine as a library): said, and stopped once more.
        (fault,) = eng.loader.watch_threads(now_ns=entry.seen_ns + WINDOW_NS)
        assert fault.kind is FaultKind.UNSTOPPABLE and entry.stops == UNSTOPPABLE_AFTER + 1
        assert "cannot be stopped" in messages[-1]
        # Under a supervisor the game process ends itself, naming the code.
        eng.loader.on_unstoppable = lambda *args: ended.append(args)
        (fault,) = eng.loader.watch_threads(now_ns=entry.seen_ns + WINDOW_NS)
        assert fault.kind is FaultKind.UNSTOPPABLE
        assert (fault.module, fault.version) == ("swallower", 1)
        loop = path.read_text().splitlines().index("            while not QUIT[0]:") + 1
        assert ended == [(fault, str(path), loop)]
        assert fault.location == f"systems/swallower.py:{loop}"
        assert entry.thread.ident not in threads.threads  # said once
    finally:
        namespace["QUIT"][0] = True

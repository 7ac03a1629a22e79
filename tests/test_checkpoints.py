"""Checkpoints written by a forked child, the ring of the last minute, and rewinding to it.

Issue 9, holes 9 ("checkpoints stall the frame": the frame only forks) and 11 ("nobody
gets the world back": ``engine rewind``). Real forks, real files, real processes; the
frame cost itself is measured by ``bench/checkpoint_frames.py``, not asserted here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import COUNTER, write
from engine import World, component
from engine.world.checkpoint import PendingComponent
from engine.world.checkpointer import FORK_AVAILABLE, Checkpointer
from engine.world.ring import CheckpointRing

needs_fork = pytest.mark.skipif(not FORK_AVAILABLE, reason="checkpoints fork on Linux only")


class FakeClock:
    """Nanoseconds that move only when told to."""

    def __init__(self, now_ns: int = 10**12) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> int:
        self.now_ns += round(seconds * 1e9)
        return self.now_ns


class Hang:
    """A value whose pickling never ends (only the checkpoint writer ever pickles it)."""

    def __reduce__(self):  # noqa: ANN204
        time.sleep(3600)
        return (Hang, ())


@component
class Holder:
    value: object = None


def wait_written(cp: Checkpointer, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cp.poll():
        assert time.monotonic() < deadline, "the checkpoint writer never finished"
        time.sleep(0.005)


def counter_values(world: World) -> dict[int, int]:
    """Entity -> counter value, whichever version of the Counter class the world holds."""
    values = {}
    for entity in world.get_entities():
        for c in world.components_for_entity(entity):
            if isinstance(c, PendingComponent):
                values[entity] = c.fields["value"]
            elif type(c).__name__ == "Counter":
                values[entity] = c.value
    return values


def checkpoint_values(path: Path) -> dict[int, int]:
    world = World.restore(path.read_bytes(), resolve=lambda key: None)
    try:
        return counter_values(world)
    finally:
        world.delete()


class Frames:
    """An engine stepped by hand with a checkpointer, as the game process does."""

    def __init__(self, eng, tmp: Path, clock: FakeClock, **options) -> None:  # noqa: ANN001
        self.eng, self.clock = eng, clock
        self.messages: list[str] = []
        self.ring = CheckpointRing(tmp / "checkpoints", keep=61, clock=clock)
        self.cp = Checkpointer(
            tmp / "checkpoint.bin",
            1_000_000_000,
            ring=self.ring,
            report=self.messages.append,
            **options,
        )
        eng.checkpoint_ring = self.ring

    def second(self, frames: int = 3) -> None:
        """Run a second of play: a few frames, then the checkpoint due at its boundary."""
        for _ in range(frames):
            self.eng.step()
        self.clock.advance(1.0)
        self.cp.maybe_take(self.eng, self.clock())  # due: started, or failed and said so
        wait_written(self.cp)


# -- the forked writer ---------------------------------------------------------------------------
@needs_fork
def test_a_checkpoint_is_the_world_of_the_frame_boundary_where_it_was_taken(
    project, make_engine, tmp_path
) -> None:
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    write(
        project / "game.py",
        "from systems.counter import Counter\n"
        "def setup(world):\n    for _ in range(3):\n        world.create_entity(Counter())\n",
    )
    eng = make_engine(project)
    for _ in range(5):
        eng.step()
    at_boundary = counter_values(eng.world)
    state = tmp_path / "state"
    state.mkdir()
    cp = Checkpointer(state / "checkpoint.bin", 0, ring=CheckpointRing(state / "ring"))
    assert cp.fork and cp.maybe_take(eng, time.monotonic_ns())
    child = cp._job.pid
    # The game goes on while the child writes: it changes every counter, adds an entity.
    counter_cls = eng.loader.active["counter"].components["systems.counter:Counter"]
    for _, c in eng.world.get_component(counter_cls):
        c.value = -100
    eng.world.create_entity(counter_cls(value=-7))
    eng.step()
    wait_written(cp)
    assert cp.taken == 1 and cp.failed == 0 and cp.last_frame == 5
    assert checkpoint_values(state / "checkpoint.bin") == at_boundary
    assert len(counter_values(eng.world)) == 4
    (entry,) = cp.ring.entries
    assert entry.frame == 5 and os.path.samefile(entry.path, state / "checkpoint.bin")
    assert sorted(p.name for p in state.iterdir()) == ["checkpoint.bin", "ring"]
    assert [p.suffix for p in (state / "ring").iterdir()] == [".ckpt"]  # no .tmp left
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # reaped: no zombie left behind
    # The parent's own entity counter was never read: new ids continue where they were.
    before = max(eng.world.get_entities())
    assert eng.world.create_entity() == before + 1


@pytest.mark.parametrize("fork", [pytest.param(True, marks=needs_fork), False])
def test_an_unpicklable_component_is_left_out_of_checkpoints_not_the_world(
    project, make_engine, tmp_path, fork
) -> None:
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    eng = make_engine(project)
    clock = FakeClock()
    frames = Frames(eng, tmp_path, clock, fork=fork, inline_below_ns=0)  # fork: always
    frames.second()
    eng.world.create_entity(Holder(lambda: None))  # a lambda cannot be pickled
    for _ in range(3):
        frames.second()
    assert frames.cp.failed == 0 and frames.cp.taken == 4  # the rest of the world is saved
    assert len(frames.messages) == 1  # said once, not every second
    assert "Holder left out of the checkpoint" in frames.messages[0]
    assert "pickle" in frames.messages[0] or "lambda" in frames.messages[0]
    assert len(frames.ring) == 4
    eng.step()  # and the game goes on


@needs_fork
def test_a_writer_that_hangs_is_killed_and_reaped(tmp_path) -> None:
    world = World()
    world.create_entity(Holder(Hang()))

    class Game:
        frame = 7

    Game.world = world
    messages: list[str] = []
    cp = Checkpointer(
        tmp_path / "checkpoint.bin",
        0,
        ring=CheckpointRing(tmp_path / "ring"),
        timeout_s=0.2,
        report=messages.append,
    )
    cp.maybe_take(Game, time.monotonic_ns())
    child = cp._job.pid
    wait_written(cp)
    assert cp.failed == 1 and cp.taken == 0
    assert "killed" in messages[0]
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)
    assert not (tmp_path / "checkpoint.bin").exists() and not list((tmp_path / "ring").iterdir())
    world.delete()


class HangInChild:
    """Pickles at once in the process that made it; forever in a forked child (a writer
    still busy when the game stops)."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __reduce__(self):  # noqa: ANN204
        if os.getpid() != self.pid:
            time.sleep(3600)
        return (HangInChild, ())


@needs_fork
def test_a_final_checkpoint_replaces_a_writer_still_busy_instead_of_waiting(tmp_path) -> None:
    world = World()
    world.create_entity(Holder(HangInChild()))

    class Game:
        frame = 7

    Game.world = world
    messages: list[str] = []
    # Were close() to wait for the busy writer, it would be killed at timeout_s: a failure.
    cp = Checkpointer(
        tmp_path / "checkpoint.bin",
        0,
        ring=CheckpointRing(tmp_path / "ring"),
        timeout_s=5.0,
        report=messages.append,
    )
    cp.maybe_take(Game, time.monotonic_ns())
    child = cp._job.pid
    cp.close(world=world, frame=9)
    assert cp.failed == 0 and cp.taken == 1 and cp.last_frame == 9, messages
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # killed and reaped
    (entry,) = cp.ring.entries
    assert entry.frame == 9 and os.path.samefile(entry.path, tmp_path / "checkpoint.bin")
    world.delete()


@needs_fork
def test_a_final_checkpoint_after_a_finished_writer_while_huge_pages_go_back(
    tmp_path, monkeypatch
) -> None:
    """The writer has exited but the game has not reaped it yet; when it is reaped, putting
    huge pages back starts (0.3 s here) and is still going as the game stops: the final
    checkpoint is written, and the finished writer is finished once (closing its pipe
    twice raised EBADF, and the game then stopped without its stats)."""
    import engine.world.checkpointer as checkpointer

    monkeypatch.setattr(checkpointer, "collapse_huge_pages", lambda: time.sleep(0.3) or 0)
    world = World()
    world.create_entity(Holder(1))

    class Game:
        frame = 3

    Game.world = world
    cp = Checkpointer(tmp_path / "checkpoint.bin", 0, ring=CheckpointRing(tmp_path / "ring"))
    cp.maybe_take(Game, time.monotonic_ns())
    child = cp._job.pid
    give_up = time.monotonic() + 30
    while Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":  # exited, not reaped
        assert time.monotonic() < give_up
        time.sleep(0.01)
    cp.close(world=world, frame=4)
    assert cp.failed == 0 and cp.taken == 2 and cp.last_frame == 4
    world.delete()


class SlowInChild:
    """Pickles at once in the process that made it; in a forked child after half a second
    (the child shares the game's memory that long)."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __reduce__(self):  # noqa: ANN204
        if os.getpid() != self.pid:
            time.sleep(0.5)
        return (SlowInChild, ())


def split_huge_pages_in(array) -> bool:  # noqa: ANN001
    """Whether ``array``'s memory has 4 KiB pages where it asked for huge ones."""
    from engine.world.checkpointer import _split_huge_ranges

    lo, hi = array.ctypes.data, array.ctypes.data + array.nbytes
    ranges = _split_huge_ranges(Path("/proc/self/smaps").read_text(), 4 * 1024 * 1024)
    return any(start < hi and lo < end for start, end in ranges)


@needs_fork
def test_huge_pages_split_by_copy_on_write_are_put_back_once_the_writer_is_gone(tmp_path):
    """A game that rewrites a large array while a checkpoint child shares it splits its
    huge pages, which makes every later fork dearer; once the child is gone they are put
    back (on a thread)."""
    import numpy as np

    release = tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2])
    if release < (6, 1):
        pytest.skip("MADV_COLLAPSE is Linux 6.1+")
    array = np.ones(8 * 1024 * 1024)  # 64 MB: numpy asks for huge pages
    world = World()
    world.create_entity(Holder(array), Holder(SlowInChild()))

    class Game:
        frame = 1

    Game.world = world
    cp = Checkpointer(tmp_path / "checkpoint.bin", 0, ring=CheckpointRing(tmp_path / "ring"))
    assert cp.maybe_take(Game, time.monotonic_ns())
    array += 1.0  # while the child shares every page: copy-on-write
    if not split_huge_pages_in(array):
        cp.close()
        world.delete()
        pytest.skip("no huge pages here (THP off), so none to split")
    wait_written(cp)  # the child reaped, then the pages put back
    assert cp.collapsed_bytes > 0 and not split_huge_pages_in(array)
    assert cp.taken == 1 and cp.failed == 0
    cp.close()
    world.delete()


@needs_fork
def test_the_writer_writes_a_large_array_between_the_compositors_composes(tmp_path) -> None:
    """With the compositor's timing (from the pose block), the child writes large buffers
    in pieces between composes (``YieldingWriter``, tested on a manual clock in
    test_pacing.py); the checkpoint is the same."""
    import numpy as np

    from engine.scheduler.pacing import ComposeTimes

    asked = tmp_path / "asked"

    def compose_times() -> ComposeTimes:  # called in the child: it leaves a mark
        asked.touch()
        return ComposeTimes(time.monotonic_ns(), 11_111_111, 5_000_000)

    array = np.arange(4 * 1024 * 1024, dtype=np.float64)  # 32 MB: 32 pieces
    world = World()
    world.create_entity(Holder(array))
    # Left out: the dump starts its file again (seek, truncate) through the writer.
    world.create_entity(Holder(lambda: 0))

    class Game:
        frame = 1

    Game.world = world
    cp = Checkpointer(
        tmp_path / "checkpoint.bin",
        0,
        ring=CheckpointRing(tmp_path / "ring"),
        compose_times=compose_times,
    )
    assert cp.maybe_take(Game, time.monotonic_ns())
    wait_written(cp)
    assert cp.taken == 1 and cp.failed == 0 and asked.exists()
    restored = World.restore((tmp_path / "checkpoint.bin").read_bytes())
    ((_, holder),) = restored.get_component(Holder)  # the lambda's was left out
    assert np.array_equal(holder.value, array)
    cp.close()
    for w in (world, restored):
        w.delete()


GAME_THAT_DIES = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from engine import World
from engine.world.checkpointer import Checkpointer
from engine.world.ring import CheckpointRing
from test_checkpoints import Hang, Holder

world = World()
world.create_entity(Holder(Hang()))

class Game:
    frame = 1

Game.world = world
cp = Checkpointer(Path({tmp!r}) / "checkpoint.bin", 0, ring=CheckpointRing(Path({tmp!r}) / "r"))
cp.maybe_take(Game, time.monotonic_ns())
print(cp._job.pid, flush=True)
time.sleep(3600)
"""


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # dead, not yet reaped
    except FileNotFoundError:
        return True


@needs_fork
def test_the_writer_dies_with_the_game(tmp_path) -> None:
    script = GAME_THAT_DIES.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))
    game = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYGLET_HEADLESS": "1"},
    )
    try:
        child = int(game.stdout.readline())
        assert not process_gone(child)
        game.send_signal(signal.SIGKILL)
        game.wait(10)
        deadline = time.monotonic() + 10
        while not process_gone(child):
            assert time.monotonic() < deadline, "the checkpoint writer outlived the game"
            time.sleep(0.01)
    finally:
        game.kill()
        game.wait(10)
        game.stdout.close()


@needs_fork
def test_a_small_world_is_serialized_in_the_game_a_large_one_forked(
    project, make_engine, tmp_path
) -> None:
    """A fork costs milliseconds; a world of a few entities serializes in microseconds."""
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    write(project / "game.py", GAME)
    eng = make_engine(project)
    frames = Frames(eng, tmp_path, FakeClock())
    frames.second()  # the first: forked, the child says what serializing cost
    assert frames.cp.forked == 1 and frames.cp.dump_ns < frames.cp.inline_below_ns
    frames.second()  # cheaper than a fork: in the game
    assert frames.cp.forked == 1 and frames.cp.taken == 2
    frames.cp.inline_below_ns = frames.cp.dump_ns  # as if the world had grown past it
    frames.second()
    assert frames.cp.forked == 2 and frames.cp.taken == 3
    assert [e.frame for e in frames.ring.entries] == [3, 6, 9]
    assert checkpoint_values(frames.ring.entries[-1].path) == counter_values(eng.world)


def test_without_fork_the_checkpoint_is_written_by_a_thread(project, make_engine, tmp_path):
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    write(project / "game.py", GAME)
    eng = make_engine(project)
    eng.step()
    at_boundary = counter_values(eng.world)
    cp = Checkpointer(
        tmp_path / "checkpoint.bin", 0, ring=CheckpointRing(tmp_path / "ring"), fork=False
    )
    assert cp.maybe_take(eng, time.monotonic_ns())
    eng.step()
    cp.close(final=eng.checkpoint(), frame=eng.frame)
    assert cp.taken == 2 and len(cp.ring) == 2
    assert checkpoint_values(cp.ring.entries[0].path) == at_boundary
    assert checkpoint_values(tmp_path / "checkpoint.bin") == counter_values(eng.world)


# -- the ring ----------------------------------------------------------------------------------
def fill(ring: CheckpointRing, clock: FakeClock, seconds: int, size: int = 10) -> None:
    for frame in range(seconds):
        path = ring.slot(clock(), frame)
        path.write_bytes(b"x" * size)
        ring.add(path)
        clock.advance(1.0)


def test_the_ring_keeps_the_newest_checkpoints_within_its_count_and_bytes(tmp_path) -> None:
    clock = FakeClock()
    ring = CheckpointRing(tmp_path, keep=5, clock=clock)
    fill(ring, clock, 12)
    assert [e.frame for e in ring.entries] == [7, 8, 9, 10, 11]
    assert len(list(tmp_path.iterdir())) == 5 and ring.bytes == 50
    small = CheckpointRing(tmp_path / "small", keep=100, max_bytes=35, clock=clock)
    fill(small, clock, 6)
    assert [e.frame for e in small.entries] == [3, 4, 5]
    huge = CheckpointRing(tmp_path / "huge", keep=100, max_bytes=5, clock=clock)
    fill(huge, clock, 3)
    assert [e.frame for e in huge.entries] == [2]  # the newest stays, whatever its size


def test_find_returns_the_newest_checkpoint_taken_at_or_before_that_moment(tmp_path) -> None:
    clock = FakeClock()
    ring = CheckpointRing(tmp_path, keep=61, clock=clock)
    with pytest.raises(LookupError, match="no checkpoint"):
        ring.find(1)
    fill(ring, clock, 10)  # frames 0..9 at t-10 s .. t-1 s
    assert ring.find(0).frame == 9
    assert ring.find(1).frame == 9 and ring.find(1.5).frame == 8
    assert ring.find(10).frame == 0 and ring.age_s(ring.find(3)) == 3.0
    with pytest.raises(LookupError, match="oldest checkpoint kept is 10.0 s old"):
        ring.find(10.5)
    with pytest.raises(ValueError):
        ring.find(-1)


def test_a_reopened_ring_finds_its_checkpoints_and_drops_leftovers(tmp_path) -> None:
    clock = FakeClock()
    ring = CheckpointRing(tmp_path, keep=61, clock=clock)
    fill(ring, clock, 4)
    (tmp_path / "00000000000000000001-f000000000001.ckpt.tmp").write_bytes(b"cut short")
    ring.slot(clock() + 10**12, 99).write_bytes(b"dated by an earlier boot")
    (tmp_path / "notes.txt").write_text("not ours")
    again = CheckpointRing(tmp_path, keep=61, clock=clock)
    assert [e.frame for e in again.entries] == [0, 1, 2, 3]
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".ckpt"] * 4 + [".txt"]
    fresh = CheckpointRing(tmp_path, keep=61, clock=clock, fresh=True)
    assert fresh.entries == [] and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# -- rewinding --------------------------------------------------------------------------------
GAME = """
from systems.counter import Counter

def setup(world):
    for _ in range(5):
        world.create_entity(Counter())
"""

HARMLESS = """
import engine

@engine.system
def wipe(world, dt):
    pass
"""

WIPE = """
import engine

@engine.system
def wipe(world, dt):
    world.clear_database()
"""


@needs_fork
def test_rewind_brings_back_the_entities_a_system_wiped(project, make_engine, tmp_path) -> None:
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    write(project / "systems" / "wipe.py", HARMLESS)
    write(project / "game.py", GAME)
    eng = make_engine(project)
    clock = FakeClock()
    frames = Frames(eng, tmp_path, clock)
    for _ in range(3):
        frames.second()
    before = counter_values(eng.world)  # as the newest checkpoint holds it
    assert len(before) == 5
    eng.loader.prepare({"wipe": WIPE})  # the user saves a version that wipes the world
    frames.second()
    frames.second()
    assert eng.world.entity_count() == 0
    eng.undo("wipe")  # the code first, or it wipes the world again
    frames.second()
    assert eng.world.entity_count() == 0
    with pytest.raises(LookupError, match="cannot go back 61 s"):
        eng.rewind(61)
    result = eng.rewind(3)  # back to before the wiping version went live
    assert result == {"seconds": 3.0, "frame": 9, "entities": 5}
    assert counter_values(eng.world) == before
    eng.step()
    assert counter_values(eng.world).keys() == before.keys()  # the code no longer wipes it
    new = eng.world.create_entity()
    assert new not in before  # ids go on after the restored ones


def test_rewind_without_checkpoints_says_so(project, make_engine) -> None:
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    eng = make_engine(project)
    with pytest.raises(LookupError, match="keeps no checkpoints"):
        eng.rewind(5)


ENV = {**os.environ, "PYGLET_HEADLESS": "1", "PYTHONUNBUFFERED": "1"}


def engine_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.launcher.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )


def wait_for(cond, what: str, timeout_s: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def entities_in(path: Path) -> int | None:
    try:
        return len(checkpoint_values(path))
    except Exception:  # not there yet, or being replaced
        return None


@needs_fork
def test_engine_rewind_gives_a_running_game_its_world_back(tmp_path) -> None:
    """End to end: `engine run` (supervisor, compositor, game); a saved version clears the
    world; `engine undo` takes the code back and `engine rewind` the world."""
    write(tmp_path / "systems" / "counter.py", COUNTER.format(step=1))
    write(tmp_path / "systems" / "wipe.py", HARMLESS)
    write(tmp_path / "game.py", GAME)
    ring_dir = tmp_path / ".engine" / "checkpoints"
    latest = tmp_path / ".engine" / "checkpoint.bin"
    stats_path = tmp_path / "stats.json"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.launcher.cli",
            "run",
            str(tmp_path),
            "--quiet",
            "--no-render",
            "--size",
            "64x64",
            "--stats-json",
            str(stats_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    try:
        wait_for(
            lambda: ring_dir.is_dir() and len(list(ring_dir.glob("*.ckpt"))) >= 2, "two checkpoints"
        )
        assert entities_in(latest) == 5
        edited_ns = time.monotonic_ns()
        write(tmp_path / "systems" / "wipe.py", WIPE)
        wait_for(lambda: entities_in(latest) == 0, "a checkpoint of the wiped world")
        r = engine_cmd("undo", str(tmp_path), "wipe")
        assert r.returncode == 0, r.stdout + r.stderr
        back_s = (time.monotonic_ns() - edited_ns) / 1e9 + 0.5
        r = engine_cmd("rewind", str(tmp_path), f"{back_s:.2f}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "world rewound" in r.stdout and "(5 entities)" in r.stdout
        wait_for(lambda: entities_in(latest) == 5, "a checkpoint of the world rewound")
        r = engine_cmd("rewind", str(tmp_path), "3600")
        assert r.returncode == 1 and "cannot go back 3600 s" in r.stderr
    finally:
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
    assert run.returncode == 0, out
    stats = json.loads(stats_path.read_text())
    assert stats["world"]["entities"] == 5, out
    assert "world rewound" in out


def test_rewind_needs_a_running_game(tmp_path) -> None:
    write(tmp_path / "systems" / "counter.py", COUNTER.format(step=1))
    r = engine_cmd("rewind", str(tmp_path), "5")
    assert r.returncode == 1 and "none runs" in r.stderr


def test_a_game_ring_removes_old_files_on_its_own_thread(tmp_path) -> None:
    clock = FakeClock()
    ring = CheckpointRing(tmp_path, keep=3, clock=clock, remove_in_background=True)
    fill(ring, clock, 8)
    assert [e.frame for e in ring.entries] == [5, 6, 7]  # the ring's view is immediate
    ring.close()  # waits for the removals
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(e.path.name for e in ring.entries)
    fill(ring, clock, 2)  # usable after close
    ring.close()
    assert len(list(tmp_path.iterdir())) == 3


# -- what a checkpoint holds -----------------------------------------------------------------------
def test_a_value_holding_a_system_class_is_restored_as_the_class_loaded_now(project, make_engine):
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    eng = make_engine(project)
    old_cls = eng.loader.active["counter"].components["systems.counter:Counter"]
    holder = eng.world.create_entity(Holder(value=[old_cls, old_cls(3)]))
    data = eng.checkpoint()
    eng.loader.prepare({"counter": COUNTER.format(step=2)})  # a reload between the two
    eng.step()
    new_cls = eng.loader.active["counter"].components["systems.counter:Counter"]
    eng.restore(data)
    kind, instance = eng.world.component_for_entity(holder, Holder).value
    assert kind is new_cls and new_cls is not old_cls
    assert type(instance) is new_cls and instance.value == 3


def test_checkpoints_written_with_persistent_ids_still_load(project, make_engine) -> None:
    import io
    import pickle

    from engine.world.checkpoint import FORMAT, VERSION

    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    eng = make_engine(project)
    cls = eng.loader.active["counter"].components["systems.counter:Counter"]

    class OldPickler(pickle.Pickler):  # what the engine wrote before
        def persistent_id(self, obj):  # noqa: ANN001, ANN202
            if obj is cls:
                return ("type", "systems.counter:Counter")
            return None

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "next_entity": 8,
        "entities": [(7, [("tests:Holder", {"value": cls})])],
    }
    buf = io.BytesIO()
    OldPickler(buf, protocol=5).dump(payload)
    eng.restore(buf.getvalue())
    assert list(eng.world.get_entities()) == [7]
    assert eng.world.components_for_entity(7)[0].fields == {"value": cls}  # pending: key


@needs_fork
def test_a_fork_that_fails_is_a_failed_checkpoint_not_a_failed_game(
    project, make_engine, tmp_path, monkeypatch
) -> None:
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    eng = make_engine(project)
    frames = Frames(eng, tmp_path, FakeClock())

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    fds = len(os.listdir("/proc/self/fd"))
    frames.clock.advance(1.0)
    assert frames.cp.maybe_take(eng, frames.clock()) is False
    assert frames.cp.failed == 1 and "cannot fork" in frames.messages[0]
    assert len(os.listdir("/proc/self/fd")) == fds  # the error pipe was closed
    monkeypatch.undo()
    frames.second()  # the next interval works
    assert frames.cp.taken == 1


def test_a_component_that_cannot_be_pickled_is_left_out_and_the_rest_of_the_world_kept(
    project, make_engine
) -> None:
    """A component holding a lambda: the checkpoint keeps every other component (the entity
    too) and says which class was left out, and where it is defined."""
    write(
        project / "systems" / "handle.py",
        """
        import engine

        @engine.component
        class Handle:
            callback: object = None

        @engine.component
        class Score:
            points: int = 7
        """,
    )
    eng = make_engine(project)
    classes = eng.loader.active["handle"].components
    handle, score = classes["systems.handle:Handle"], classes["systems.handle:Score"]
    entity = eng.world.create_entity(handle(callback=lambda: 0), score())
    eng.world.create_entity(score(points=3))
    skipped: list[str] = []
    data = eng.world.checkpoint(skipped)
    (line,) = skipped
    assert f"{project / 'systems' / 'handle.py'}:4: systems.handle:Handle left out" in line
    assert "(1 entity)" in line
    restored = World.restore(data, eng.loader.resolve_component)
    try:
        points = sorted(s.points for _, s in restored.get_component(score))
        assert points == [3, 7] and restored.entity_exists(entity)
        assert not restored.get_component(handle)
    finally:
        restored.delete()

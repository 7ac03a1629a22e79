"""Input crosses from the compositor to the game: the block (never torn, presses never lost),
scripted input (the file format and its player), ``world.input`` in one process, and a real
compositor + game where a scripted key press reaches a system."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write
from engine.compositor.input_feed import InputFeed, release_all
from engine.compositor.process import CompositorConfig
from engine.contracts.input import (
    BUTTON_NAMES,
    KEY_NAMES,
    KEY_SLOTS,
    KEY_SYMBOLS,
    InputReader,
    InputWriter,
    button_index,
    key_index,
)
from engine.contracts.shm import PassedFd, create_block_fd, read_only_fd
from engine.game import FrameInfo
from engine.input.script import InputScriptError, ScriptPlayer, drive_engine, load_script
from engine.input.state import Input, InputTracker
from engine.launcher.supervisor import Supervisor
from engine.pose.base import Pose, PoseSample

SPAWN = multiprocessing.get_context("spawn")
SPACE = key_index("SPACE")
TIMEOUT_S = 60


def block() -> tuple[InputWriter, InputReader]:
    fd = create_block_fd("input-test")
    writer, reader = InputWriter(fd), InputReader(read_only_fd(fd))
    os.close(fd)
    return writer, reader


# --- the key table ------------------------------------------------------------------------


def test_key_table_names_and_symbols_are_pyglets():
    from pyglet.window import key, mouse

    for index, name in enumerate(KEY_NAMES[1:], start=1):
        assert getattr(key, name) == KEY_SYMBOLS[index], name
        assert key_index(getattr(key, name)) == index
    assert len(KEY_NAMES) <= KEY_SLOTS and len(set(KEY_SYMBOLS)) == len(KEY_SYMBOLS)
    for i, name in enumerate(BUTTON_NAMES):
        assert getattr(mouse, name) == 1 << i and button_index(getattr(mouse, name)) == i
    assert key_index("return") == key_index("ENTER") and key_index("7") == key_index("_7")
    assert key_index(key.NUM_SEPARATOR) == 0  # not tracked: never down, never raises
    with pytest.raises(KeyError, match="SPCAE"):
        key_index("SPCAE")


# --- the block ----------------------------------------------------------------------------


def test_presses_between_two_game_frames_are_never_lost():
    writer, reader = block()
    writer.publish(0, 0, force=True)
    tracker, state = InputTracker(reader), Input()
    tracker.update(state)  # the baseline
    for _ in range(3):  # three taps within one game frame
        writer.key(SPACE, True)
        writer.publish(1, 1)
        writer.key(SPACE, False)
        writer.publish(2, 2)
    writer.key(key_index("A"), True)
    writer.publish(3, 3)
    tracker.update(state)
    assert state.pressed("SPACE") and state.released("space") and not state.down("SPACE")
    assert state.presses("SPACE") == 3 and state.releases("SPACE") == 3
    assert state.down("A") and state.pressed("a") and state.keys_down == {"A"}
    tracker.update(state)  # the next frame: nothing new, A still held
    assert not state.pressed("SPACE") and state.down("A") and not state.pressed("A")


def test_a_game_started_late_does_not_replay_earlier_presses():
    writer, reader = block()
    writer.key(SPACE, True)
    writer.key(SPACE, False)
    writer.key(key_index("B"), True)
    writer.publish(5, 5)
    tracker, state = InputTracker(reader), Input()
    tracker.update(state)
    assert not state.pressed("SPACE") and not state.pressed("B") and state.down("B")


def test_mouse_buttons_position_and_scroll_per_frame():
    writer, reader = block()
    writer.publish(0, 0, force=True)
    tracker, state = InputTracker(reader), Input()
    tracker.update(state)
    writer.move(10.5, 20.0)
    writer.button(button_index("RIGHT"), True)
    writer.scroll(0.0, 2.0)
    writer.scroll(1.0, -0.5)
    writer.publish(9, 90)
    tracker.update(state)
    m = state.mouse
    assert m.position == (10.5, 20.0) and m.down("RIGHT") and m.pressed(4)
    assert m.scroll == (1.0, 1.5) and m.buttons == {"RIGHT"} and state.frame == 9
    release_all(writer)  # the window lost focus
    writer.publish(10, 100)
    tracker.update(state)
    assert m.released("RIGHT") and not m.down("RIGHT") and m.scroll == (0.0, 0.0)


def test_counters_that_wrap_still_count_presses():
    writer, reader = block()
    writer.state["key_presses"][SPACE] = 2**32 - 1
    writer.publish(0, 0, force=True)
    tracker, state = InputTracker(reader), Input()
    tracker.update(state)
    writer.key(SPACE, True)
    writer.key(SPACE, False)
    writer.key(SPACE, True)  # the counter wraps to 1
    writer.publish(1, 1)
    tracker.update(state)
    assert state.presses("SPACE") == 2 and state.down("SPACE")


KEYS = ("SPACE", "A", "LSHIFT")
key_events = st.lists(st.tuples(st.sampled_from(KEYS), st.booleans()), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(key_events, st.booleans()), min_size=1, max_size=8))
def test_each_frame_counts_exactly_the_presses_made_since_the_last(frames):
    """Any sequence of key events between frames, published or not (a write the reader
    missed), reads back as exactly the presses and releases made since the last read."""
    writer, reader = block()
    writer.publish(0, 0, force=True)
    tracker, state = InputTracker(reader), Input()
    tracker.update(state)
    down = set()
    owed = {k: [0, 0] for k in KEYS}
    for n, (events, read) in enumerate(frames, start=1):
        for k, is_down in events:
            if is_down != (k in down):
                owed[k][0 if is_down else 1] += 1
                (down.add if is_down else down.discard)(k)
            writer.key(key_index(k), is_down)
        writer.publish(n, n)
        if not read:
            continue  # this game frame was skipped: its presses must show up at the next
        tracker.update(state)
        for k, (presses, releases) in owed.items():
            assert (state.presses(k), state.releases(k), state.down(k)) == (
                presses,
                releases,
                k in down,
            )
            owed[k] = [0, 0]


def write_patterns(fd: int, stop, last) -> None:
    """Publish records in which every field is derived from n, as fast as possible,
    until told to stop."""
    writer = InputWriter(fd)
    s = writer.state
    n = 0
    while not (n % 256 == 0 and stop.is_set()):
        n += 1
        s["events"] = n
        s["mouse"] = (n, -n)
        s["scroll"] = (2 * n, 0.5 * n)
        s["buttons"] = n & 0x1F
        s["keys_down"] = (n, ~n & (2**64 - 1))
        s["key_presses"][:] = n
        s["key_releases"][:] = n + 1
        s["button_presses"][:] = n
        writer.publish(n, 3 * n, force=True)
    last.value = n


def consistent(record: np.ndarray) -> bool:
    n = int(record["frame"])
    return (
        int(record["events"]) == n
        and int(record["time_ns"]) == 3 * n
        and tuple(record["mouse"]) == (n, -n)
        and tuple(record["scroll"]) == (2 * n, 0.5 * n)
        and int(record["buttons"]) == n & 0x1F
        and [int(w) for w in record["keys_down"]] == [n, ~n & (2**64 - 1)]
        and bool(np.all(record["key_presses"] == n))
        and bool(np.all(record["key_releases"] == n + 1))
        and bool(np.all(record["button_presses"] == n))
    )


def test_a_reader_never_sees_a_torn_record_from_another_process():
    fd = create_block_fd("input-race")
    reader = InputReader(fd)
    stop, last_written = SPAWN.Event(), SPAWN.Value("q", 0)
    child = SPAWN.Process(target=write_patterns, args=(PassedFd(fd), stop, last_written))
    child.start()
    seen, frames = 0, set()
    give_up = time.monotonic() + TIMEOUT_S
    # The writer runs until the reader has raced it across many frames: on a loaded
    # machine with few cores the two may share a core and interleave only now and then.
    try:
        while (seen < 2000 or len(frames) < 200) and time.monotonic() < give_up:
            assert child.is_alive()
            record = reader.read()
            if record is None:
                continue
            assert consistent(record), record
            seen += 1
            frames.add(int(record["frame"]))
    finally:
        stop.set()
        child.join(10)
    assert child.exitcode == 0
    assert seen >= 2000 and len(frames) >= 200  # the reads really raced the writer
    last = reader.read()
    assert last is not None and int(last["frame"]) == last_written.value and consistent(last)


def test_an_unwritten_or_foreign_block_reads_as_nothing():
    fd = create_block_fd("input-empty")
    assert InputReader(fd).read() is None
    from engine.contracts.handoff import HeartbeatWriter

    HeartbeatWriter(fd).beat(3)
    assert InputReader(fd).read() is None


# --- scripts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"frame": 3}', "nothing to do"),
        ('{"press": "A"}', "exactly one of"),
        ('{"frame": 1, "t": 2, "press": "A"}', "exactly one of"),
        ('{"frame": -1, "press": "A"}', "whole number"),
        ('{"frame": 1, "press": "SPCAE"}', "unknown key 'SPCAE'"),
        ('{"frame": 1, "click": "THUMB"}', "unknown mouse button"),
        ('{"t": 1, "mouse": [1]}', "two numbers"),
        ('{"t": 1, "presss": "A"}', "unknown field"),
        ("{frame: 1}", "not JSON"),
    ],
)
def test_a_bad_script_line_is_refused_with_file_and_line(tmp_path, line, why):
    path = write(tmp_path / "in.jsonl", f'# a comment\n\n{{"frame": 0, "tap": "A"}}\n{line}\n')
    with pytest.raises(InputScriptError, match=why) as info:
        load_script(path)
    assert str(info.value).startswith(f"{path}:4: ")


def test_script_events_play_in_file_order_from_the_start_frame(tmp_path):
    path = write(
        tmp_path / "in.jsonl",
        """
        {"frame": 2, "press": "A"}
        {"t": 0.0, "mouse": [1, 2]}
        {"frame": 2, "release": "A", "scroll": [0, 1]}
        {"t": 0.5, "click": "LEFT"}
        """,
    )
    player = ScriptPlayer(load_script(path))
    assert player.due(100, 0) == []  # not started: the game is not on screen yet
    player.start(frame=50, time_ns=1_000)
    assert [e.line for e in player.due(50, 1_000)] == [2]
    assert [e.line for e in player.due(52, 2_000)] == [1, 3]
    assert player.due(53, 3_000) == [] and not player.finished
    assert [e.line for e in player.due(60, 1_000 + 500_000_000)] == [4] and player.finished


def test_input_feed_plays_the_script_once_the_game_is_on_screen(tmp_path):
    class Sink:
        frames = 0

        def present(self, frame: int, display_time_ns: int) -> None:
            self.frames += 1

        def close(self) -> None:
            pass

    path = write(tmp_path / "in.jsonl", '{"frame": 1, "tap": "SPACE"}\n')
    writer, reader = block()
    on_screen = []
    feed = InputFeed(Sink(), writer, load_script(path), started=lambda: bool(on_screen))
    assert int(reader.read()["frame"]) == 0  # published at once: a baseline for the game
    for frame in range(1, 4):
        feed.present(frame, frame * 10)
    assert int(reader.read()["key_presses"][SPACE]) == 0
    on_screen.append(True)
    feed.present(4, 40)  # script frame 0
    feed.present(5, 50)  # script frame 1: the tap
    record = reader.read()
    assert int(record["key_presses"][SPACE]) == 1 and int(record["frame"]) == 5
    assert feed.frames == 5 and feed.stats()["script_finished"]


# --- world.input in one process -----------------------------------------------------------


RECORDER = """
import engine

@engine.component
class Presses:
    count: int = 0
    frames: list = None

@engine.system
def record(world, dt):
    for _, p in world.get_component(Presses):
        n = world.input.presses("SPACE")
        if n:
            p.count += n
            p.frames = (p.frames or []) + [world.resources[engine.FrameInfo].frame]
"""


def test_world_input_is_empty_without_a_compositor_and_carries_the_head_pose(project, make_engine):
    eng = make_engine(project)
    assert not eng.world.input.pressed("SPACE") and eng.world.input.head is None
    head = Pose((1.0, 2.0, 3.0))
    eng.world.resources[FrameInfo] = FrameInfo(1, 0.0, 0, PoseSample(1, 0, head, ()))
    assert eng.world.input.head == head and eng.world.input is eng.world.resources[Input]


def test_a_script_drives_a_system_in_one_process(project, make_engine, tmp_path):
    write(project / "systems" / "recorder.py", RECORDER)
    script = write(
        tmp_path / "in.jsonl",
        """
        {"frame": 2, "tap": "SPACE"}
        {"frame": 4, "tap": "SPACE"}
        {"frame": 4, "tap": "SPACE"}
        """,
    )
    eng = make_engine(project)
    presses_cls = eng.loader.active["recorder"].components["systems.recorder:Presses"]
    entity = eng.world.create_entity(presses_cls())
    drive_engine(eng, load_script(script))
    for _ in range(8):
        eng.step()
    presses = eng.world.component_for_entity(entity, presses_cls)
    assert presses.count == 3 and presses.frames == [3, 5]  # script frame 0 = engine frame 1


def test_engine_run_refuses_a_bad_input_script_in_one_line(tmp_path):
    (tmp_path / "systems").mkdir()
    bad = write(tmp_path / "in.jsonl", '{"frame": 1, "press": "NOPE"}\n')
    r = subprocess.run(
        [sys.executable, "-m", "engine.launcher.cli", "run", str(tmp_path), "--input-script",
         str(bad), "--quiet"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYGLET_HEADLESS": "1"},
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"engine: bad --input-script: {bad}:1: unknown key 'NOPE' "
        "(names: pyglet.window.key's, e.g. 'SPACE', 'A')"
    ]


# --- across the process boundary ----------------------------------------------------------


LOGGER = """
import engine

@engine.component
class Presses:
    count: int = 0

@engine.system
def record(world, dt):
    for _, p in world.get_component(Presses):
        n = world.input.presses("SPACE")
        if n or world.input.mouse.pressed("LEFT"):
            p.count += n
            x, y = world.input.mouse.position
            with open({log!r}, "a") as f:
                f.write(f"{{p.count}} {{world.input.down('LSHIFT')}} {{x:g}} {{y:g}}\\n")
"""

GAME = """
from systems.record import Presses

def setup(world):
    world.create_entity(Presses())
"""

SCRIPT = """
{"frame": 5, "press": "LSHIFT"}
{"frame": 10, "tap": "SPACE", "mouse": [12, 34]}
{"frame": 20, "tap": "SPACE"}
{"frame": 20, "tap": "SPACE"}
{"frame": 30, "click": "LEFT", "release": "LSHIFT"}
"""


def test_a_scripted_key_press_reaches_a_system_in_the_game_process(tmp_path):
    project = tmp_path / "game"
    log = tmp_path / "presses.log"
    write(project / "systems" / "record.py", LOGGER.format(log=str(log)))
    write(project / "game.py", GAME)
    script = write(tmp_path / "in.jsonl", SCRIPT)
    messages: list[str] = []
    compositor = CompositorConfig(
        eye_width=64, eye_height=64, layers=(("game", 32, 32),), input_script=str(script)
    )
    sup = Supervisor(project, compositor=compositor, report=messages.append)

    def rows() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    with sup:
        sup.start()
        done = sup.run_until(lambda: rows()[-1:] == ["3 False 12 34"], TIMEOUT_S)
        assert done, (messages, rows())
        stats = sup.stop()
    # SPACE: one tap, then two in the same compositor frame (so in one game frame; a game
    # that fell behind may see all three at once); LSHIFT is held from frame 5 to the
    # click at 30; the mouse moved with the first tap.
    assert rows() in (
        ["1 True 12 34", "3 True 12 34", "3 False 12 34"],
        ["3 True 12 34", "3 False 12 34"],
        ["1 True 12 34", "3 False 12 34"],
        ["3 False 12 34"],
    ), rows()
    assert stats["compositor"]["input"]["script_finished"], stats["compositor"]["input"]


def test_a_windows_keyboard_and_mouse_reach_the_block(gl):
    """The mirror window's events, dispatched as pyglet would (a headless window here: no
    display in CI): keys, Escape kept for the game, the mouse, and leaving the window."""
    import pyglet
    from pyglet.window import key, mouse

    from engine.compositor.input_feed import bind_window

    window = pyglet.window.Window(width=64, height=32, visible=False)
    try:
        writer, reader = block()
        bind_window(window, writer)
        writer.publish(0, 0, force=True)
        tracker, state = InputTracker(reader), Input()
        tracker.update(state)
        window.dispatch_event("on_key_press", key.ESCAPE, 0)
        window.dispatch_event("on_key_press", key.W, key.MOD_SHIFT)
        window.dispatch_event("on_mouse_press", 10, 20, mouse.LEFT, 0)
        window.dispatch_event("on_mouse_scroll", 10, 20, 0.0, -3.0)
        window.dispatch_events()  # queued until now, as the mirror sink's present does
        writer.publish(1, 1)
        tracker.update(state)
        assert state.pressed("ESCAPE") and state.down("W") and state.keys_down == {"ESCAPE", "W"}
        assert not window.has_exit  # Escape went to the game, not to closing the mirror
        assert state.mouse.pressed("LEFT") and state.mouse.position == (10.0, 20.0)
        assert state.mouse.scroll == (0.0, -3.0) and state.mouse.window == (64, 32)
        window.dispatch_event("on_deactivate")  # the releases would never arrive
        window.dispatch_events()
        writer.publish(2, 2)
        tracker.update(state)
        assert state.released("W") and state.released("ESCAPE") and state.keys_down == set()
        assert state.mouse.released("LEFT") and state.mouse.buttons == set()
    finally:
        window.close()

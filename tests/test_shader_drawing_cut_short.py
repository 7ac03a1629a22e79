"""A drawing whose way out never ran: the next drawing still names the shader.

A GPU wait far over the render system's hard limit is one C call that both the
watchdog's timer and its backstop's kick interrupt. The first interrupt lands when the
call returns; the second at the first line of :meth:`ShaderLibrary.drawing`'s way out,
which so never runs. The library used to take every later drawing for part of that one
and name nothing, so a shader loaded at start-up that hung the driver was blamed on
``render.render`` (a crash loop). These tests leave a drawing's way out unrun, by hand and
with the real watchdog, and look at the running-now words the supervisor reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import write
from engine.contracts.handoff import Phase
from engine.render.shaders import ShaderLibrary

# The fragment stage of program "basic", with a loop on line 6 (where a hang is placed).
LOOPING = """#version 330 core
out vec4 frag_color;
uniform float u_time;
void main() {
    float x = 0.0;
    for (int i = 0; i < 4; i++) {
        x += u_time;
    }
    frag_color = vec4(1.0, x, 0.0, 1.0);
}
"""
SOLID = """#version 330 core
out vec4 frag_color;
void main() {
    frag_color = vec4(1.0, 0.0, 0.0, 1.0);
}
"""

# A system drawing with the library, its GPU wait a C call (through ctypes, as GL's are)
# over its hard limit that neither of the watchdog's signals can end: both wait, blocked,
# until it returns. (Python's signal.pthread_sigmask would run the handlers itself, and
# the second only with the timer's next signal.) 200 ms is over four of its hard limits,
# so the watchdog interrupts it as it returns, essential as it is (a shorter wait would be
# let finish its frame: watchdog.ESSENTIAL_SPARE_FACTOR).
DRAWER = """
import ctypes
import signal

import engine
from engine.render.shaders import ShaderLibrary

libc = ctypes.CDLL(None)
WATCHDOG_SIGNALS = ctypes.create_string_buffer(128)  # a sigset_t
libc.sigemptyset(WATCHDOG_SIGNALS)
libc.sigaddset(WATCHDOG_SIGNALS, int(signal.SIGALRM))
libc.sigaddset(WATCHDOG_SIGNALS, int(signal.SIGURG))

def gpu_wait():
    libc.pthread_sigmask(signal.SIG_BLOCK, WATCHDOG_SIGNALS, None)
    libc.usleep(200_000)
    libc.pthread_sigmask(signal.SIG_UNBLOCK, WATCHDOG_SIGNALS, None)

@engine.system(hard_limit_ms=20.0, essential=True)
def drawer(world, dt):
    library = world.resources[ShaderLibrary]
    with library.drawing():
        library.program("basic")
        gpu_wait()
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path / "shaders" / "basic.frag", LOOPING)
    (tmp_path / "systems").mkdir()
    return tmp_path


def library_of(project: Path, running, messages: list[str] | None = None) -> ShaderLibrary:
    report = messages.append if messages is not None else (lambda message: None)
    library = ShaderLibrary(project, report=report)
    library.running = running
    library.program("basic")  # built (version 1 recorded) outside any drawing
    return library


def names_the_shader(named, version: int = 1) -> bool:
    return (
        named is not None
        and named.phase == "shader"
        and (named.module, named.version, named.line) == ("basic.frag", version, 6)
    )


def test_a_drawing_whose_way_out_never_ran_does_not_hide_the_next(project, heartbeat):
    writer, reader = heartbeat
    library = library_of(project, writer.running)

    def draw_cut_short():  # the drawing's way out never runs
        drawing = library.drawing()
        drawing.__enter__()
        library.program("basic")
        assert names_the_shader(reader.running().main)
        return drawing  # held, as the interrupt's traceback holds it

    writer.running.phase(Phase.RENDER)
    cut_short = draw_cut_short()
    writer.running.phase(Phase.FRAME)  # what ran next stored its own word
    with library.drawing():
        library.program("basic")
        assert names_the_shader(reader.running().main)
    assert reader.running().main == reader.describe(Phase.FRAME)
    library.program("basic")  # outside any drawing: nothing is named
    assert reader.running().main == reader.describe(Phase.FRAME)
    del cut_short  # nothing runs later, when it goes (a stale word put back mid-frame)
    assert reader.running().main == reader.describe(Phase.FRAME)


def test_the_same_with_entered_again_is_not_inside_itself(project, heartbeat):
    writer, reader = heartbeat
    library = library_of(project, writer.running)
    held = []
    for _ in range(3):  # one statement, entered each time round: a loop, not nesting
        writer.running.phase(Phase.FRAME)
        drawing = library.drawing()
        drawing.__enter__()
        held.append(drawing)
        library.program("basic")
        assert names_the_shader(reader.running().main)


def test_a_nested_drawing_is_part_of_the_outer_one(project, heartbeat):
    writer, reader = heartbeat
    library = library_of(project, writer.running)

    def draw_deeper() -> None:
        with library.drawing():
            library.program("basic")

    writer.running.phase(Phase.RENDER)
    with library.drawing():
        with library.drawing():  # in the same function
            library.program("basic")
        assert names_the_shader(reader.running().main)  # the inner way out gave nothing back
        draw_deeper()  # in a function it calls
        assert names_the_shader(reader.running().main)
    assert reader.running().main == reader.describe(Phase.RENDER)


def test_after_the_watchdog_cut_a_drawing_short_the_next_names_the_shader(
    project, heartbeat, make_engine
):
    writer, reader = heartbeat
    write(project / "systems" / "drawer.py", DRAWER)
    messages: list[str] = []
    eng = make_engine(project, running=writer.running, report=messages.append)
    library = library_of(project, writer.running)
    eng.world.resources[ShaderLibrary] = library
    eng.step()  # the drawer's drawing is interrupted twice
    assert any("drawer.drawer v1" in m and "hard limit" in m for m in messages), messages
    library.apply_pending()  # between frames
    writer.running.phase(Phase.RENDER)
    with library.drawing():
        library.program("basic")
        assert names_the_shader(reader.running().main)
    assert reader.running().main == reader.describe(Phase.RENDER)


def test_a_live_shader_whose_drawing_was_cut_short_is_left_out_before_the_next_frame(
    project, heartbeat, make_engine
):
    writer, reader = heartbeat
    write(project / "shaders" / "basic.frag", SOLID)
    write(project / "systems" / "drawer.py", DRAWER)
    messages: list[str] = []
    eng = make_engine(project, running=writer.running, report=messages.append)
    library = library_of(project, writer.running, messages)
    eng.world.resources[ShaderLibrary] = library
    frag = project / "shaders" / "basic.frag"
    frag.write_text(LOOPING)  # version 2, swapped in live
    library.queue_change(frag, 0)
    (swap,) = library.apply_pending()
    assert swap.ok and swap.versions == {"basic.frag": 2}
    eng.step()  # its first drawing is interrupted twice, 200 ms in
    (swap,) = library.apply_pending()  # between frames: no drawing needed to see it
    assert swap.ok and swap.versions == {"basic.frag": 1}
    (left_out,) = [m for m in messages if "left out" in m]
    # "up to": its end was not seen (unless the backstop, starved, never kicked).
    assert re.search(
        r"basic\.frag v2 a drawing with it took (up to )?\d+ ms \(over 50 ms\)", left_out
    )
    assert left_out.endswith("and was interrupted; left out, v1 draws instead")

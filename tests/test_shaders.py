"""Live shaders with real files and real GL: swaps, fallbacks, errors, history, undo."""

from __future__ import annotations

import threading
from pathlib import Path

import esper
import numpy as np
import pytest

from engine.loader.history import ProjectHistory, VersionStatus
from engine.pose.base import Pose
from engine.render.camera import eyes_from_head
from engine.render.components import Material, Mesh, Transform
from engine.render.renderer import Renderer
from engine.render.shaders import (
    BUILTIN_DIR,
    ShaderLibrary,
    first_use_line,
    names_in_link_log,
    parse_info_log,
)

W, H = 64, 48
RED = (1.0, 0.0, 0.0, 1.0)

SOLID = """#version 330 core
out vec4 frag_color;
void main() {
    frag_color = vec4({rgb}, 1.0);
}
"""
# A syntax error on line 4 (Mesa reports the unexpected ';' on the same line).
BROKEN = """#version 330 core
out vec4 frag_color;
void main() {
    frag_color = vec4(0.0, 1.0, 0.0, 1.0) +;
}
"""


def solid(rgb: str) -> str:
    return SOLID.replace("{rgb}", rgb)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "shaders").mkdir()
    return tmp_path


@pytest.fixture
def world(request):
    name = f"test-shaders-{request.node.name}"
    esper.switch_world(name)
    yield esper
    esper.switch_world("default")
    esper.delete_world(name)


def centre(library: ShaderLibrary, world, shader: str = "basic") -> tuple[int, int, int]:
    """The colour at the centre of the left eye, looking at a red cube drawn with ``shader``."""
    for entity, _ in world.get_components(Transform):
        world.delete_entity(entity, immediate=True)
    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh("cube"), Material(RED, shader))
    renderer = Renderer(W, H, library, clear_color=(0, 0, 0, 1))
    image = np.zeros((H, W, 4), dtype=np.uint8)
    renderer.render(world, eyes_from_head(Pose((0.0, 1.6, 0.0)))[:1], (image,))
    renderer.close()
    r, g, b, _ = (int(v) for v in image[H // 2, W // 2])
    return r, g, b


def dominant(rgb: tuple[int, int, int]) -> str:
    return "rgb"[int(np.argmax(rgb))] if max(rgb) > 100 else "dark"


def edit(library: ShaderLibrary, path: Path, source: str, t: int = 0):
    path.write_text(source)
    library.queue_change(path, t)
    return library.apply_pending()


def statuses(project: Path, file_name: str) -> list[str]:
    unit = ProjectHistory(project).unit("shaders", file_name, suffix=Path(file_name).suffix)
    return [str(v.status) for v in unit.versions]


def test_info_log_lines_of_common_drivers_are_understood():
    assert parse_info_log("0:12(3): error: syntax error, unexpected ';'") == (
        12,
        "error: syntax error, unexpected ';'",
    )
    assert parse_info_log('0(7) : error C1008: undefined variable "x"')[0] == 7
    assert parse_info_log("ERROR: 0:9: 'x' : undeclared identifier")[0] == 9
    assert parse_info_log("0:2(1): warning: meh\n0:5(1): error: bad") == (5, "error: bad")
    assert parse_info_log("error: vertex shader output not written") == (
        None,
        "error: vertex shader output not written",
    )


def test_built_ins_draw_without_a_project(world):
    assert dominant(centre(ShaderLibrary(), world)) == "r"


def test_good_edit_swaps_and_broken_edit_keeps_last_good_program(project, world, capsys):
    frag = project / "shaders" / "basic.frag"
    frag.write_text((BUILTIN_DIR / "basic.frag").read_text())
    messages: list[str] = []
    library = ShaderLibrary(project, report=messages.append)
    assert dominant(centre(library, world)) == "r"

    swaps = edit(library, frag, solid("0.0, 1.0, 0.0"), t=123)
    assert [(s.program, s.ok, s.event_time_ns) for s in swaps] == [("basic", True, 123)]
    assert dominant(centre(library, world)) == "g"

    (swap,) = edit(library, frag, BROKEN)
    assert not swap.ok
    assert swap.error.path == frag
    assert swap.error.line == 4
    assert "error" in swap.error.message
    (message,) = messages  # through the report channel, not print
    assert f"{frag}:4" in message
    assert capsys.readouterr().out == ""
    assert dominant(centre(library, world)) == "g"  # still the last good program
    assert library.last_error("basic") == swap.error
    assert statuses(project, "basic.frag") == ["good", "good", "error"]

    # Undo goes back past nothing broken to version 1; redo skips the broken version 3.
    undo = library.undo("basic.frag")
    assert undo.ok and undo.versions == {"basic.frag": 1}
    assert dominant(centre(library, world)) == "r"
    redo = library.redo("basic.frag")
    assert redo.ok and redo.versions == {"basic.frag": 2}
    assert dominant(centre(library, world)) == "g"
    assert library.redo("basic.frag") is None

    # Fixing the file swaps again.
    (fixed,) = edit(library, frag, solid("0.0, 0.0, 1.0"))
    assert fixed.ok and library.last_error("basic") is None
    assert dominant(centre(library, world)) == "b"
    assert statuses(project, "basic.frag") == ["good", "good", "error", "good"]


def test_a_deleted_shader_file_keeps_the_last_good_program(project, world):
    frag = project / "shaders" / "basic.frag"
    library = ShaderLibrary(project)
    edit(library, frag, solid("0.0, 1.0, 0.0"))
    frag.unlink()
    library.queue_change(frag, 0)
    assert library.apply_pending() == []
    assert dominant(centre(library, world)) == "g"


def test_a_broken_file_at_startup_falls_back_and_reports(project, world):
    frag = project / "shaders" / "basic.frag"
    frag.write_text(BROKEN)
    library = ShaderLibrary(project)
    assert dominant(centre(library, world)) == "r"  # the built-in stands in
    assert library.last_error("basic").line == 4
    assert statuses(project, "basic.frag") == ["error"]


def test_undo_survives_a_restart(project, world):
    frag = project / "shaders" / "basic.frag"
    frag.write_text(solid("0.0, 1.0, 0.0"))
    library = ShaderLibrary(project)
    assert dominant(centre(library, world)) == "g"
    edit(library, frag, solid("0.0, 0.0, 1.0"))
    assert library.undo("basic.frag").ok
    assert dominant(centre(library, world)) == "g"
    # A new library over the same project (a restarted game) runs the active version,
    # not the newer file on disk.
    restarted = ShaderLibrary(project)
    assert dominant(centre(restarted, world)) == "g"


def test_a_fragment_only_program_borrows_the_basic_vertex_stage(project, world):
    edit_library = ShaderLibrary(project)
    (swap,) = edit(edit_library, project / "shaders" / "glow.frag", solid("1.0, 1.0, 0.0"))
    assert swap.ok and swap.program == "glow"
    r, g, b = centre(edit_library, world, shader="glow")
    assert r > 200 and g > 200 and b < 30
    assert "glow" in edit_library.names()


def test_a_single_file_glsl_program_reports_lines_of_the_file(project, world):
    glsl = project / "shaders" / "pulse.glsl"
    good = """#version 330 core
#ifdef VERTEX_SHADER
in vec3 position;
uniform mat4 u_model, u_view, u_projection;
void main() { gl_Position = u_projection * u_view * u_model * vec4(position, 1.0); }
#else
out vec4 frag_color;
void main() { frag_color = vec4(0.0, 0.0, 1.0, 1.0); }
#endif
"""
    library = ShaderLibrary(project)
    (swap,) = edit(library, glsl, good)
    assert swap.ok
    assert dominant(centre(library, world, shader="pulse")) == "b"
    broken = good.replace("frag_color = vec4(0.0, 0.0, 1.0, 1.0);", "frag_color = ;")
    (swap,) = edit(library, glsl, broken)
    assert not swap.ok and swap.error.path == glsl and swap.error.line == 8
    assert dominant(centre(library, world, shader="pulse")) == "b"


def test_stages_saved_together_are_linked_together(project, world):
    vert = project / "shaders" / "tint.vert"
    frag = project / "shaders" / "tint.frag"
    vert.write_text(
        (BUILTIN_DIR / "basic.vert")
        .read_text()
        .replace("out vec3 v_normal;", "out vec3 v_normal;\nout vec3 v_tint;")
        .replace("gl_Position =", "v_tint = vec3(0.0, 1.0, 0.0);\n    gl_Position =")
    )
    frag.write_text(
        "#version 330 core\nin vec3 v_tint;\nout vec4 c;\nvoid main() { c = vec4(v_tint, 1.0); }\n"
    )
    library = ShaderLibrary(project)
    library.queue_change(vert, 1)
    library.queue_change(frag, 2)
    (swap,) = library.apply_pending()
    assert swap.ok and set(swap.versions) == {"tint.vert", "tint.frag"}
    assert swap.event_time_ns == 1
    assert dominant(centre(library, world, shader="tint")) == "g"


def test_a_link_error_keeps_the_running_program(project, world):
    frag = project / "shaders" / "basic.frag"
    library = ShaderLibrary(project)
    assert dominant(centre(library, world)) == "r"
    # Compiles alone, but declares basic.vert's mat4 u_model as a vec4: one uniform of two
    # types, which no driver can link (Mesa: "declared as type"; NVIDIA: "Type mismatch
    # between shaders for uniform"). NVIDIA links a vec4 input against a vec3 output, and
    # Mesa an input the vertex stage never declares, so neither of those is used here.
    mismatched = (
        "#version 330 core\nuniform vec4 u_model;\nout vec4 c;\nvoid main() { c = u_model; }\n"
    )
    (swap,) = edit(library, frag, mismatched)
    assert not swap.ok and "u_model" in swap.error.log
    # Placed at the new file's declaration; the other stage's is named too.
    assert (swap.error.path, swap.error.line) == (frag, 2)
    vert_line = first_use_line((BUILTIN_DIR / "basic.vert").read_text(), "u_model")
    assert f"basic.vert:{vert_line}" in swap.error.message
    assert dominant(centre(library, world)) == "r"
    assert statuses(project, "basic.frag") == ["error"]


# Compiles alone; links nowhere: shade() is declared (line 3) and called, never defined.
UNDEFINED_FUNCTION = """#version 330 core
out vec4 frag_color;
vec3 shade(vec3 color);  // declared, never defined
void main() {
    frag_color = vec4(shade(vec3(1.0)), 1.0);
}
"""


def test_a_link_error_names_the_file_and_line_of_what_does_not_link(project, world, capsys):
    frag = project / "shaders" / "basic.frag"
    frag.write_text(solid("1.0, 0.0, 0.0"))
    library = ShaderLibrary(project)
    assert dominant(centre(library, world)) == "r"
    (swap,) = edit(library, frag, UNDEFINED_FUNCTION)
    assert not swap.ok and (swap.error.path, swap.error.line) == (frag, 3)
    assert f"{frag}:3: " in capsys.readouterr().err  # the message a user reads
    assert dominant(centre(library, world)) == "r"


def test_link_logs_of_common_drivers_name_what_did_not_link():
    from engine.render.shaders import _link_error_lines, _Stage

    # Mesa
    assert names_in_link_log("error: uniform `u_model' declared as type `vec4' and type `mat4'")
    assert names_in_link_log("error: unresolved reference to function `shade'") == ["shade"]
    # NVIDIA
    assert names_in_link_log(
        "error: Type mismatch between shaders for uniform (named u_model)"
    ) == ["u_model"]
    nvidia = (
        "Fragment info\n-------------\n"
        '0(5) : error C3002: call to undefined function "vec3 shade(vec3);"\n'
    )
    assert names_in_link_log(nvidia) == ["shade"]
    # NVIDIA gives the line under a stage heading: taken at its word, for that stage's file.
    stages = [
        _Stage("vertex", Path("a.vert"), "#version 330 core\nvoid main() {}\n"),
        _Stage("fragment", Path("a.frag"), UNDEFINED_FUNCTION),
    ]
    assert [(s.file_name, n) for s, n in _link_error_lines(nvidia, stages)] == [("a.frag", 5)]
    assert first_use_line("// shade\n/* shade\n*/ vec3 shade(vec3 c);\n", "shade") == 3


def test_changes_may_be_queued_from_another_thread(project, world):
    frag = project / "shaders" / "basic.frag"
    frag.write_text(solid("0.0, 1.0, 0.0"))
    library = ShaderLibrary(project)
    assert dominant(centre(library, world)) == "g"
    frag.write_text(solid("0.0, 0.0, 1.0"))
    watcher = threading.Thread(target=lambda: [library.queue_change(frag, t) for t in (5, 3, 9)])
    watcher.start()
    watcher.join()
    (swap,) = library.apply_pending()
    assert swap.ok and swap.event_time_ns == 3  # events coalesce, earliest time kept
    assert dominant(centre(library, world)) == "b"


def test_handles_only_shader_files_of_the_project(project):
    library = ShaderLibrary(project)
    assert library.handles(project / "shaders" / "x.frag")
    assert library.handles(project / "shaders" / "x.glsl")
    assert not library.handles(project / "shaders" / "x.py")
    assert not library.handles(project / "systems" / "x.frag")
    assert not ShaderLibrary().handles(project / "shaders" / "x.frag")
    library.queue_change(project / "systems" / "spin.py", 0)
    assert library.apply_pending() == []


def test_history_records_each_shader_file_as_its_own_unit(project, world):
    library = ShaderLibrary(project)
    edit(library, project / "shaders" / "basic.frag", solid("0.0, 1.0, 0.0"))
    history = ProjectHistory(project)
    assert "basic.frag" in history.names("shaders")
    unit = history.unit("shaders", "basic.frag", suffix=".frag")
    assert unit.active.status is VersionStatus.GOOD
    assert unit.source(unit.active.number) == solid("0.0, 1.0, 0.0")


def test_error_lines_count_the_blank_lines_before_version(project, world):
    frag = project / "shaders" / "basic.frag"
    library = ShaderLibrary(project)
    (swap,) = edit(library, frag, "\n\n" + BROKEN)  # pyglet strips these before compiling
    assert not swap.ok and swap.error.line == 6


# -- a shader that hangs the GPU: named while drawing, blamed, left out -------------------

# A loop the GPU finishes at once (so the test never hangs), on line 5: where a hang is placed.
LOOPING = """#version 330 core
out vec4 frag_color;
void main() {
    float g = 0.0;
    for (int i = 0; i < 4; i++) {  // line 5: the first loop
        g += 0.25;
    }
    frag_color = vec4(0.0, g, 0.0, 1.0);
}
"""


class FakeOverrun(BaseException):
    """Stands in for the watchdog's interrupt of the render system (also a BaseException)."""


def test_while_drawing_the_running_now_words_name_the_newest_shader_version(
    project, world, heartbeat
):
    from engine.contracts.handoff import Phase

    writer, reader = heartbeat
    frag = project / "shaders" / "basic.frag"
    frag.write_text(solid("1.0, 0.0, 0.0"))
    library = ShaderLibrary(project)
    library.running = writer.running
    assert dominant(centre(library, world)) == "r"
    (swap,) = edit(library, frag, LOOPING)
    assert swap.ok
    writer.running.phase(Phase.RENDER)
    with library.drawing():
        assert dominant(centre(library, world)) == "g"
        named = reader.running().main
    assert named is not None and named.phase == "shader" and named.user
    assert (named.module, named.version, named.line) == ("basic.frag", 2, 5)
    assert named.file == str(frag)
    assert reader.running().main == reader.describe(Phase.RENDER)  # given back after drawing
    centre(library, world)  # outside drawing(): nothing is named
    assert reader.running().main == reader.describe(Phase.RENDER)


def test_a_shader_blamed_for_a_hang_is_not_drawn_by_the_next_game(project, world, heartbeat):
    from engine.launcher.supervisor import blame, blamed_unit
    from engine.loader.loader import leave_out
    from engine.policy import FaultKind

    writer, reader = heartbeat
    frag = project / "shaders" / "basic.frag"
    frag.write_text(solid("1.0, 0.0, 0.0"))
    library = ShaderLibrary(project)
    library.running = writer.running
    assert dominant(centre(library, world)) == "r"
    edit(library, frag, LOOPING)
    with library.drawing():
        library.program("basic")
        report = reader.running()  # what the supervisor reads when the game stops beating
    fault = blame(project, FaultKind.HUNG, "hung: no heartbeat", report, "", None)
    assert (fault.module, fault.version, fault.phase) == ("basic.frag", 2, "shader")
    assert fault.location == "shaders/basic.frag:5"
    leave_out(blamed_unit(project, fault), fault.version, "hung")
    # The next game: the file on disk is unchanged, and still not drawn.
    assert dominant(centre(ShaderLibrary(project), world)) == "r"
    assert statuses(project, "basic.frag") == ["good", "bad"]


def test_a_shader_loaded_at_start_up_and_blamed_gives_way_to_the_built_in(project, world):
    frag = project / "shaders" / "basic.frag"
    frag.write_text(LOOPING)
    assert dominant(centre(ShaderLibrary(project), world)) == "g"
    from engine.loader.loader import leave_out

    leave_out(ProjectHistory(project).unit("shaders", "basic.frag", suffix=".frag"), 1, "hung")
    assert dominant(centre(ShaderLibrary(project), world)) == "r"  # the built-in lit shader
    (swap,) = edit(ShaderLibrary(project), frag, solid("0.0, 0.0, 1.0"))  # an edit runs at once
    assert swap.ok


def test_an_interrupted_slow_drawing_leaves_a_new_shader_out_in_process(project, world):
    now = [0]
    frag = project / "shaders" / "basic.frag"
    frag.write_text(solid("1.0, 0.0, 0.0"))
    library = ShaderLibrary(project, clock=lambda: now[0], report=lambda message: None)
    assert dominant(centre(library, world)) == "r"
    edit(library, frag, LOOPING)
    with pytest.raises(FakeOverrun), library.drawing():
        library.program("basic")
        now[0] += library.draw_limit_ns + 1
        raise FakeOverrun
    (swap,) = library.apply_pending()
    assert swap.ok and swap.versions == {"basic.frag": 1}
    assert dominant(centre(library, world)) == "r"
    assert statuses(project, "basic.frag") == ["good", "bad"]


def test_a_slow_drawing_that_finished_leaves_a_new_shader_out_too(project, world):
    """The watchdog lets the essential render system's GPU wait return and show its frame
    (no interrupt), so a new version whose drawings took over the limit is left out as the
    second finishes (one slow drawing is also a busy machine or a first-use compile), and
    the message does not claim an interrupt; a drawing within the limit and a version
    proven by many draws are kept."""
    from engine.render.shaders import WATCHED_DRAWS

    now = [0]
    messages: list[str] = []
    frag = project / "shaders" / "basic.frag"
    frag.write_text(solid("1.0, 0.0, 0.0"))
    library = ShaderLibrary(project, clock=lambda: now[0], report=messages.append)
    assert dominant(centre(library, world)) == "r"
    edit(library, frag, solid("0.0, 0.0, 1.0"))
    with library.drawing():  # within the limit
        library.program("basic")
        now[0] += library.draw_limit_ns
    assert library.apply_pending() == []
    for _ in range(WATCHED_DRAWS):
        with library.drawing():
            library.program("basic")
    with library.drawing():  # slow, but proven by many draws
        library.program("basic")
        now[0] += 3 * library.draw_limit_ns
    assert library.apply_pending() == []
    edit(library, frag, LOOPING)
    with library.drawing():  # one slow drawing: its first use, or a busy machine
        library.program("basic")
        now[0] += 3 * library.draw_limit_ns
    assert library.apply_pending() == []
    with library.drawing():  # a second: the shader is too heavy
        library.program("basic")
        now[0] += 80_000_000
    (swap,) = library.apply_pending()
    assert swap.ok and swap.versions == {"basic.frag": 2}
    assert dominant(centre(library, world)) == "b"
    assert statuses(project, "basic.frag") == ["good", "good", "bad"]
    (left_out,) = [m for m in messages if "left out" in m]
    assert (
        "basic.frag v3 2 drawings with it took over 50 ms (the last 80 ms); left out, v2 draws"
        in left_out
    )


def test_a_quick_interrupt_or_a_proven_shader_is_not_left_out(project, world):
    from engine.render.shaders import WATCHED_DRAWS

    now = [0]
    frag = project / "shaders" / "basic.frag"
    frag.write_text(LOOPING)
    library = ShaderLibrary(project, clock=lambda: now[0], report=lambda message: None)
    with pytest.raises(FakeOverrun), library.drawing():  # slow, but loaded at start-up
        library.program("basic")
        now[0] += library.draw_limit_ns + 1
        raise FakeOverrun
    assert library.apply_pending() == []
    edit(library, frag, solid("1.0, 0.0, 0.0"))
    with pytest.raises(FakeOverrun), library.drawing():  # an exception, but a quick drawing
        library.program("basic")
        raise FakeOverrun
    for _ in range(WATCHED_DRAWS):
        with library.drawing():
            library.program("basic")
    with pytest.raises(FakeOverrun), library.drawing():  # slow, but proven by many draws
        library.program("basic")
        now[0] += library.draw_limit_ns + 1
        raise FakeOverrun
    assert library.apply_pending() == []
    assert statuses(project, "basic.frag") == ["good", "good"]

"""The pieces a warm standby game process is made of, each on its own: a layer writer that
maps a block without taking it over, shader programs built ahead without a trace in the
history, and a render stage that attaches later."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.contracts.layer import LayerReader, LayerSpec, LayerWriter, create_layer_fd
from engine.pose.base import EyeView, Pose
from engine.render import shaders as shader_module
from engine.render.shaders import ShaderLibrary, prebuild

FRAG = """#version 330 core
in vec3 v_normal;
in vec2 v_uv;
uniform vec4 color;
uniform vec3 light_direction;
uniform float ambient;
uniform sampler2D albedo;
out vec4 frag_color;
void main() {
    frag_color = vec4(color.rgb * %s, color.a);
}
"""


def test_a_writer_that_is_not_attached_leaves_the_block_to_the_one_publishing():
    spec = LayerSpec(width=4, height=4, eyes=1)
    fd = create_layer_fd(spec, "standby")
    live = LayerWriter(fd, spec)
    slot = live.acquire()
    slot.pixels[:] = 7
    live.publish(slot, frame=41, eyes=(EyeView(Pose()),), completed_ns=1)
    reader = LayerReader(fd)
    standby = LayerWriter(fd, spec, attach=False)
    frame = reader.read()
    assert frame is not None and frame.frame == 41 and frame.pixels.max() == 7
    with pytest.raises(ValueError, match="not attached"):
        standby.acquire()
    live.close()
    standby.attach()  # the live writer is gone: the standby takes the block over
    slot = standby.acquire()
    slot.pixels[:] = 9
    standby.publish(slot, frame=0, eyes=(EyeView(Pose()),), completed_ns=2)
    frame = reader.read()
    assert frame is not None and frame.frame == 0 and frame.pixels.max() == 9
    reader.close()
    standby.close()


def history_files(project: Path) -> dict[str, bytes]:
    root = project / ".engine"
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def test_programs_built_ahead_leave_no_trace_and_the_game_takes_them(tmp_path, gl):
    shader_module._prebuilt.clear()
    project = tmp_path / "game"
    (project / "shaders").mkdir(parents=True)
    (project / "shaders" / "glow.frag").write_text(FRAG % "1.5")
    ShaderLibrary(project).program("glow")  # v1 recorded and running, as a game leaves it
    before = history_files(project)
    assert before
    built = prebuild(project)
    assert "glow" in built and "basic" in built
    assert history_files(project) == before  # nothing recorded by the standby
    ahead = dict(shader_module._prebuilt)
    assert ahead
    library = ShaderLibrary(project)  # the game that takes over
    program = library.program("glow")
    assert program in ahead.values()  # taken, not compiled again
    assert len(shader_module._prebuilt) == len(ahead) - 1
    shader_module._prebuilt.clear()


def test_an_edit_made_after_the_build_ahead_is_compiled_and_stale_programs_go(tmp_path, gl):
    shader_module._prebuilt.clear()
    project = tmp_path / "game"
    (project / "shaders").mkdir(parents=True)
    path = project / "shaders" / "glow.frag"
    path.write_text(FRAG % "1.5")
    prebuild(project)
    old_keys = set(shader_module._prebuilt)
    old_programs = set(map(id, shader_module._prebuilt.values()))
    path.write_text(FRAG % "0.5")  # saved while the standby waits
    library = ShaderLibrary(project)
    assert id(library.program("glow")) not in old_programs  # compiled from the new text
    prebuild(project)  # again: the basic program is kept, the stale glow one goes
    kept = old_keys & set(shader_module._prebuilt)
    assert len(kept) == 1 and len(old_keys) == 2
    assert [k for k in kept if "1.5" in str(k)] == []
    shader_module._prebuilt.clear()

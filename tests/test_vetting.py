"""The vetting parts without processes: the verdicts, a preview engine's candidates (modules
and shader files) and a live engine's promote command, in-process with real files and GL."""

from __future__ import annotations

import shutil

from conftest import run_until, write
from engine.launcher.vetting import (
    Candidate,
    attach_preview,
    attach_promote,
    decide,
    history_baseline,
)
from engine.render.stage import RenderSettings

TINT = """#version 330 core
in vec3 v_normal;
in vec2 v_uv;
uniform vec4 color;
uniform vec3 light_direction;
uniform float ambient;
uniform sampler2D albedo;
out vec4 frag_color;
void main() {{
    frag_color = vec4(color.rgb * {scale}, color.a);
}}
"""

MOVER = """
import engine

@engine.system
def mover(world, dt):
    pass
"""


def candidate(**kw) -> Candidate:
    base = {"module": "m", "version": 2, "sha256": "x", "status": "probation"}
    return Candidate(**{**base, **kw})


def test_verdicts_reject_faults_at_once_and_judge_speed_only_after_the_frames():
    verdicts = decide(
        [
            candidate(module="raises", fault="systems/raises.py:4: ZeroDivisionError"),
            candidate(module="young", frames=10, worst_ms=9.0, budget_ms=2.0),
            candidate(module="slow", frames=90, worst_ms=9.0, budget_ms=2.0, late=40),
            candidate(module="clean", frames=90, worst_ms=0.5, budget_ms=2.0),
            candidate(module="bad", status="error"),
        ],
        frames=90,
    )
    actions = {v.candidate.module: v.action for v in verdicts}
    assert actions == {
        "raises": "reject",
        "young": "wait",
        "slow": "reject",
        "clean": "promote",
        "bad": "reject",
    }
    by_name = {v.candidate.module: v for v in verdicts}
    assert "raises.py:4" in by_name["raises"].reason
    assert "p99 9.00 ms of 2.00 ms" in by_name["slow"].reason


def test_a_preview_engine_reports_module_and_shader_candidates(project, make_engine, gl):
    write(project / "systems" / "mover.py", MOVER)
    write(project / "shaders" / "tint.frag", TINT.format(scale="1.0"))
    settings = RenderSettings(width=32, height=32)
    live = make_engine(project, render=settings)
    live.render_stage.shaders.program("tint")
    live.close()
    # The preview's copy of the history, as the supervisor makes it.
    state = project / ".engine" / "preview"
    shutil.copytree(project / ".engine" / "history", state / "history")
    baseline = history_baseline(state / "history")
    assert baseline["mover"] == 1 and baseline["tint.frag"] == 1
    write(project / "systems" / "mover.py", MOVER + "\n# edited\n")
    write(project / "shaders" / "tint.frag", TINT.format(scale="0.5"))
    preview = make_engine(project, render=settings, state_dir=state)
    candidates = attach_preview(preview, baseline)
    preview.render_stage.shaders.program("tint")
    run_until(preview, lambda: preview.frame > 5)
    report = {c.module: c for c in candidates.report()}
    assert set(report) == {"mover", "tint.frag"}
    assert report["mover"].version == 2 and report["mover"].frames > 0
    assert report["tint.frag"].version == 2 and report["tint.frag"].fault is None
    # The live history did not see the candidates.
    assert history_baseline(project / ".engine" / "history")["mover"] == 1


def test_the_live_engine_holds_saves_and_promotes_only_the_vetted_text(project, make_engine):
    write(project / "systems" / "mover.py", MOVER)
    messages: list[str] = []
    live = make_engine(project, hold=lambda name: True, report=messages.append)
    attach_promote(live)
    live.start_watching()
    edited = MOVER + "\n# edited\n"
    write(project / "systems" / "mover.py", edited)
    run_until(live, lambda: any("once vetted" in m for m in messages))
    assert live.history("mover").latest.number == 1  # held: not even recorded
    from engine.loader.history import source_hash

    stale = live.serve({"op": "promote", "modules": {"mover": {"sha256": "0" * 64}}})
    assert stale["ok"] and stale["promoted"] == {} and "changed" in stale["refused"]["mover"]
    on_disk = (project / "systems" / "mover.py").read_text()
    vetted = {"sha256": source_hash(on_disk), "frames": 90, "worst_ms": 0.3}
    reply = live.serve({"op": "promote", "modules": {"mover": vetted}})
    assert reply["ok"] and reply["promoted"] == {"mover": 2}, reply
    run_until(live, lambda: live.loader.active["mover"].version == 2)
    record = live.history("mover").get(2).vetted
    assert record is not None and record.frames == 90 and str(record.result) == "promoted"

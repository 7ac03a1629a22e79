"""``engine doctor``, run as a user would (real subprocesses), on this machine and on a
project with a syntax error and a broken shader; and its probes surviving a child that
hangs or crashes."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import write
from engine.launcher.doctor import (
    EGL_EXTENSIONS,
    FAIL,
    GL_EXTENSIONS,
    OK,
    WARN,
    Check,
    module_checks,
    start_module_probe,
    write_report,
)

ENV = {**os.environ, "PYGLET_HEADLESS": "1", "PYTHONUNBUFFERED": "1"}
# status, name (single spaces inside), two or more spaces, the rest
LINE = re.compile(r"^(OK|WARN|FAIL) +(\S(?:.*?\S)?)  +(\S.*)$")


def doctor(*args: str, env: dict | None = None, cwd: Path | None = None):  # noqa: ANN201
    return subprocess.run(
        [sys.executable, "-m", "engine.launcher.cli", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**ENV, **(env or {})},
        cwd=cwd,
    )


def by_name(stdout: str) -> dict[str, tuple[str, str]]:
    """``{name: (status, rest of the line)}`` for every report line."""
    found = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            found[m.group(2)] = (m.group(1), m.group(3))
    return found


def test_doctor_reports_every_machine_check_in_one_line_each(tmp_path):
    library = write(tmp_path / "libfake_xr.so", "")
    manifest = tmp_path / "runtime.json"
    manifest.write_text(
        json.dumps({"runtime": {"name": "Fake XR", "library_path": str(library)}}),
        encoding="utf-8",
    )
    r = doctor(env={"XR_RUNTIME_JSON": str(manifest), "DISPLAY": ""})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\x1b[" not in r.stdout  # not a terminal: plain lines
    lines = by_name(r.stdout)
    expected = {
        "python", "packages", "gl", *EGL_EXTENSIONS, *GL_EXTENSIONS, "display",
        "cpu priority", "vulkan", "openxr runtime", "pyopenxr", "signal fence",
    }  # fmt: skip
    assert expected <= set(lines), r.stdout
    assert lines["python"][0] == OK and sys.version.split()[0] in lines["python"][1]
    assert lines["gl"][0] == OK and "OpenGL" in lines["gl"][1] and "pyglet" in lines["gl"][1]
    assert lines["openxr runtime"] == (OK, "Fake XR (XR_RUNTIME_JSON)")
    assert lines["display"][0] == WARN and "no DISPLAY set" in lines["display"][1]
    assert lines["signal fence"][0] == OK, lines["signal fence"]  # tried: SIGCONT refused
    for name, (status, rest) in lines.items():
        assert status in (OK, WARN), (name, rest)  # this machine runs the engine
        if status == WARN:
            assert " -> " in rest, f"{name}: a missing feature says how to get it"
    assert len(r.stdout.splitlines()) == len(lines)  # nothing but report lines


BROKEN_MODULE = """
import engine

@engine.system
def broken(world, dt)
    pass
"""

GOOD_MODULE = """
import engine

@engine.system
def fine(world, dt):
    pass
"""

BROKEN_FRAGMENT = """
#version 330 core
out vec4 out_color;
void main() {
    out_color = vec4(1.0) +;
}
"""


def test_doctor_on_a_project_names_each_broken_file_and_line(tmp_path):
    project = tmp_path / "game"
    write(project / "systems" / "fine.py", GOOD_MODULE)
    write(project / "systems" / "broken.py", BROKEN_MODULE)
    write(project / "systems" / "leans.py", "from systems.broken import broken\n")
    write(project / "systems" / "raises.py", "x = 1\nraise RuntimeError('boom at import')\n")
    write(project / "shaders" / "glow.frag", BROKEN_FRAGMENT)
    write(project / "game.py", "from systems.fine import fine\n\ndef setup(world):\n    pass\n")
    r = doctor("game", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = by_name(r.stdout)
    assert lines["module broken"] == (
        FAIL,
        "game/systems/broken.py:4: SyntaxError: expected ':' -> fix the file; a running game "
        "keeps its last good version",
    )
    assert lines["module raises"][1].startswith("game/systems/raises.py:2: RuntimeError: boom")
    assert lines["module leans"][1].startswith(
        "game/systems/leans.py imports a module that fails: game/systems/broken.py:4: "
    )
    assert lines["shader glow"][0] == FAIL
    assert lines["shader glow"][1].startswith("game/shaders/glow.frag:4: ")
    assert "module fine" not in lines and "module game" not in lines
    assert lines["history"][0] == OK
    assert "project game:" in r.stdout.splitlines()
    assert not (project / ".engine").exists()  # the doctor records nothing in the project


def test_doctor_on_a_good_project_exits_0_and_counts_what_loads(tmp_path):
    project = tmp_path / "game"
    write(project / "systems" / "fine.py", GOOD_MODULE)
    r = doctor(str(project))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = by_name(r.stdout)
    assert lines["modules"] == (OK, "1 module load")
    assert lines["shaders"] == (OK, "none in the project (the built-ins draw)")


def test_doctor_on_a_bad_path_says_so_in_one_line_and_exits_2(tmp_path):
    r = doctor(str(tmp_path / "no" / "such"))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"engine: no project folder at {tmp_path / 'no' / 'such'} (give a folder with systems/)"
    ]


def test_a_module_that_hangs_or_crashes_at_import_costs_one_line(tmp_path):
    """Module code the watchdog cannot stop (a C call) or that kills the process: the
    probe is killed at its time limit or dies, and the report blames that module."""
    hang = tmp_path / "hang"
    write(hang / "systems" / "a_fine.py", GOOD_MODULE)
    write(hang / "systems" / "stuck.py", "import ctypes\nctypes.CDLL(None).sleep(100)\n")
    crash = tmp_path / "crash"
    write(crash / "systems" / "segv.py", "import ctypes\nctypes.string_at(0)\n")
    hung = module_checks(hang, start_module_probe(hang, load_limit_s=0.5, timeout_s=15))
    probe = start_module_probe(crash)
    crashed = module_checks(crash, probe)
    assert [(c.name, c.status) for c in hung] == [("modules", FAIL)]
    assert hung[0].detail.startswith("the check timed out after ") and "loading stuck" in (
        hung[0].detail
    )
    assert crashed[0].detail.startswith("the check crashed (signal SIGSEGV)")
    assert crashed[0].detail.endswith("while loading segv")


def test_the_report_is_coloured_on_a_terminal_and_plain_otherwise():
    checks = [Check("gl", OK, "OpenGL 4.5"), Check("vulkan", WARN, "none", "apt-get install x")]
    plain, coloured = io.StringIO(), io.StringIO()
    write_report(checks, plain)  # a StringIO is not a terminal
    write_report(checks, coloured, colour=True)
    assert plain.getvalue() == "OK    gl      OpenGL 4.5\nWARN  vulkan  none -> apt-get install x\n"
    assert "\x1b[" in coloured.getvalue()
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured.getvalue()) == plain.getvalue()

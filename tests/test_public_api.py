"""``import engine`` gives what games are built with, each name documented, and no internals;
a project module that takes a taken name is said in one line, and breaks nothing."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from conftest import write

#: What a game author builds with, and nothing else (see engine/__init__.py's table).
PUBLIC = {
    "Engine",
    "FrameInfo",
    "Input",
    "Material",
    "Mesh",
    "Pose",
    "Processor",
    "Transform",
    "World",
    "component",
    "system",
}


def test_the_public_names_are_the_game_authors_set():
    assert set(engine.__all__) == PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_has_its_own_docstring(name):
    value = getattr(engine, name)
    doc = inspect.getdoc(value) or ""
    assert len(doc.split()) >= 5, f"engine.{name} has no docstring worth the name: {doc!r}"
    if inspect.isclass(value):  # not the signature a dataclass makes up for itself
        assert not doc.startswith(f"{value.__name__}("), f"engine.{name}: {doc!r}"


@pytest.mark.parametrize(
    "name", ["ManualClock", "PendingComponent", "SchedulePolicy", "VersionHistory", "Scheduler"]
)
def test_internals_are_not_at_the_top(name):
    with pytest.raises(AttributeError):
        getattr(engine, name)
    assert name not in dir(engine)


def test_the_documented_example_names_resolve():
    import engine.render.components as components

    assert engine.Transform is components.Transform  # one class, wherever it is imported


def test_modules_named_like_python_or_builtin_ones_are_said_and_run(project, make_engine):
    for name in ("random", "math"):
        write(
            project / "systems" / f"{name}.py",
            "import engine\n\n@engine.system\ndef f(world, dt):\n    pass\n",
        )
    write(
        project / "systems" / "motion.py",
        "import engine\n\n@engine.system\ndef g(world, dt):\n    pass\n",
    )
    write(
        project / "systems" / "physics.py",
        "import engine\n\n@engine.system\ndef h(world, dt):\n    pass\n",
    )
    lines: list[str] = []

    eng = make_engine(project, report=lines.append)
    eng.step()

    said = [line for line in lines if "name of Python's" in line or "built-in" in line]
    assert len(said) == 3, lines
    assert any(
        line.startswith("engine: systems/random.py has the name of Python's `random`")
        for line in said
    )
    assert any(
        line.startswith("engine: systems/math.py has the name of Python's `math`") for line in said
    )
    assert any(
        line.startswith("engine: systems/motion.py replaces the engine's built-in systems.motion")
        for line in said
    )
    assert {"random.f", "math.f", "motion.g", "physics.h"} <= set(eng.scheduler.handles)


def test_a_math_py_in_the_working_folder_does_not_break_the_engines_processes(tmp_path):
    engine_command = Path(sys.executable).parent / "engine"
    if not engine_command.exists():
        pytest.skip("needs the installed `engine` command (python -m puts the folder first)")
    project = tmp_path / "game"
    for name in ("math", "random", "json"):  # numpy, tempfile, the control socket use them
        write(
            project / "systems" / f"{name}.py",
            "import engine\n\n@engine.system\ndef f(world, dt):\n    pass\n",
        )

    r = subprocess.run(
        [str(engine_command), "run", "..", "--frames", "30", "--quiet", "--no-render"],
        cwd=project / "systems",  # where a user editing systems/ would start it
        env={**os.environ, "PYGLET_HEADLESS": "1", "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "swap math v1 (load) ok" in r.stdout

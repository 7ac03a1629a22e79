"""A game that starts with a module version other than its file's says so, once, at start."""

from __future__ import annotations

from pathlib import Path

from conftest import COUNTER, write
from engine.loader.history import ProjectHistory, VersionStatus
from engine.loader.loader import leave_out


def versions_on_disk(project: Path, *steps: int) -> None:
    """Record one version per step, each run and found good, as edits of a running game
    would be; the last one's text is on disk."""
    unit = ProjectHistory(project).unit("systems", "counter")
    for step in steps:
        text = write(project / "systems" / "counter.py", COUNTER.format(step=step)).read_text()
        number = unit.record(text).number
        unit.activate(number)
        unit.mark(number, VersionStatus.GOOD)


def start_and_listen(make_engine, project: Path) -> list[str]:
    lines: list[str] = []
    make_engine(project, report=lines.append)
    return [line for line in lines if "from history" in line or "left out" in line]


def test_a_start_after_undo_says_the_file_on_disk_is_a_newer_version(project, make_engine):
    versions_on_disk(project, 1, 2, 3)
    unit = ProjectHistory(project).unit("systems", "counter")
    unit.activate(1)  # `engine undo` twice on a stopped game

    (notice,) = start_and_listen(make_engine, project)

    assert notice.startswith("engine: counter: running v1 from history;")
    assert "systems/counter.py on disk is v3" in notice
    assert f"engine redo {project} counter" in notice


def test_a_start_on_the_files_version_says_nothing(project, make_engine):
    versions_on_disk(project, 1, 2)

    assert start_and_listen(make_engine, project) == []


def test_a_start_after_a_leave_out_names_why_the_file_is_not_run(project, make_engine):
    versions_on_disk(project, 1, 2)
    unit = ProjectHistory(project).unit("systems", "counter")
    leave_out(unit, 2, "the game process died in count (segfault)")

    (notice,) = start_and_listen(make_engine, project)

    assert "running v1 from history; systems/counter.py on disk is v2" in notice
    assert "which failed (the game process died in count (segfault))" in notice
    assert "engine redo" not in notice  # redo skips a bad version: it cannot help


def test_a_module_left_out_with_nothing_to_run_says_so(project, make_engine):
    versions_on_disk(project, 1)
    why = "systems/counter.py:3: hung at import; left out"
    leave_out(ProjectHistory(project).unit("systems", "counter"), 1, why)

    (notice,) = start_and_listen(make_engine, project)

    assert notice == (
        "engine: counter: left out; systems/counter.py on disk is v1, which failed "
        "(systems/counter.py:3: hung at import): "
        "edit and save the file to try it again"
    )


def test_a_restarted_game_does_not_say_it_again(project, make_engine):
    versions_on_disk(project, 1, 2)
    ProjectHistory(project).unit("systems", "counter").activate(1)
    lines: list[str] = []

    make_engine(project, report=lines.append, start_notices=False)  # as a restart does

    assert not [line for line in lines if "from history" in line]


def test_an_edit_recorded_but_never_swapped_in_runs_at_the_next_start(project, make_engine):
    """The game stopped (or died) between recording a save and swapping it in: the file's
    text is the newest version and never ran; it runs, quietly, not the one before it."""
    versions_on_disk(project, 1)
    unit = ProjectHistory(project).unit("systems", "counter")
    text = write(project / "systems" / "counter.py", COUNTER.format(step=5)).read_text()
    assert unit.record(text).number == 2  # recorded by the watcher; active is still v1
    lines: list[str] = []

    eng = make_engine(project, report=lines.append)

    assert eng.history("counter").active_number == 2
    assert not [line for line in lines if "from history" in line]

"""The project watcher: which files it reports, and folders made while it runs."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.loader.watcher import ProjectWatcher


def make_watcher(project: Path, shaders: list, systems: list) -> ProjectWatcher:
    return ProjectWatcher(
        project,
        on_systems=lambda changes, event_ns: systems.append(changes),
        on_shader=lambda path, event_ns: shaders.append(path.name),
    )


def test_a_new_folders_files_are_all_reported_with_it(tmp_path):
    """A file saved into a folder made a moment before can beat the watch on that folder,
    and then raises no event of its own; the folder's own event brings it in."""
    (tmp_path / "systems").mkdir()
    shaders, systems = [], []
    watcher = make_watcher(tmp_path, shaders, systems)
    folder = tmp_path / "shaders"
    folder.mkdir()
    (folder / "basic.frag").write_text("void main() {}")
    (folder / "notes.txt").write_text("not a shader")
    watcher._dispatch({folder}, added={folder})
    assert shaders == ["basic.frag"]


def test_an_existing_folders_own_events_do_not_rescan_it(tmp_path):
    (tmp_path / "systems").mkdir()
    (tmp_path / "systems" / "mover.py").write_text("x = 1\n")
    shaders, systems = [], []
    watcher = make_watcher(tmp_path, shaders, systems)
    watcher._dispatch({tmp_path / "systems"}, added=set())  # e.g. its mtime changed
    assert systems == []


def test_a_shader_saved_into_a_new_folder_right_after_it_is_made_is_seen(tmp_path):
    (tmp_path / "systems").mkdir()
    seen = threading.Event()
    shaders: list[str] = []
    watcher = ProjectWatcher(
        tmp_path,
        on_systems=lambda changes, event_ns: None,
        on_shader=lambda path, event_ns: (shaders.append(path.name), seen.set()),
    )
    watcher.start()
    try:
        folder = tmp_path / "shaders"
        folder.mkdir()
        (folder / "basic.frag").write_text("void main() {}")
        assert seen.wait(10), "the new folder's shader was never reported"
    finally:
        watcher.stop()
    assert "basic.frag" in shaders

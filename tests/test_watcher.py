"""The project watcher: which files it reports, and folders made while it runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import engine.loader.watcher as watcher_module
from engine.loader.watcher import Backoff, ProjectWatcher


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


# -- the watcher does not die ----------------------------------------------------------


def test_backoff_doubles_to_a_ceiling_and_starts_again_after_a_healthy_run():
    b = Backoff(first_s=0.5, max_s=3.0, healthy_s=10.0)
    assert [b.next_delay(ran_for_s=1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.next_delay(ran_for_s=10.0) == 0.5


class Changes:
    """Collects what a watcher reports, and lets a test wait for a module's change."""

    def __init__(self) -> None:
        self.sources: dict[str, object] = {}
        self.arrived = threading.Condition()
        self.messages: list[str] = []

    def on_systems(self, changes, event_ns) -> None:
        with self.arrived:
            self.sources.update(changes)
            self.arrived.notify_all()

    def wait_for(self, name: str, text: str, timeout_s: float = 15.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: self.sources.get(name) == text, timeout_s)


def start_watcher(project: Path, changes: Changes, **kw) -> ProjectWatcher:
    watcher = ProjectWatcher(
        project,
        on_systems=changes.on_systems,
        report=changes.messages.append,
        backoff=Backoff(first_s=0.01),
        **kw,
    )
    watcher.start()
    return watcher


def test_a_watch_that_fails_is_reported_and_started_again(tmp_path, monkeypatch):
    (tmp_path / "systems").mkdir()
    real_watch = watcher_module.watchfiles.watch
    calls = []

    def failing_once(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("inotify said no")
        return real_watch(*args, **kw)

    monkeypatch.setattr(watcher_module.watchfiles, "watch", failing_once)
    changes = Changes()
    watcher = start_watcher(tmp_path, changes)
    try:
        (tmp_path / "systems" / "mover.py").write_text("x = 1\n")
        assert changes.wait_for("mover", "x = 1\n")
    finally:
        watcher.stop()
    assert len(calls) == 2 and watcher.restarts == 1
    assert changes.messages == [
        "engine: the file watcher stopped (RuntimeError: inotify said no); restarting it in 0.01 s"
    ]


def test_a_watch_that_goes_deaf_is_noticed_and_what_changed_meanwhile_is_reported(
    tmp_path, monkeypatch
):
    """What ``os.closerange(3, 1024)`` in user code does to inotify: no error, no events."""
    (tmp_path / "systems").mkdir()
    real_watch = watcher_module.watchfiles.watch
    deaf = threading.Event()

    def goes_deaf(*args, **kw):
        for changes in real_watch(*args, **kw):
            yield set() if deaf.is_set() else changes

    monkeypatch.setattr(watcher_module.watchfiles, "watch", goes_deaf)
    changes = Changes()
    watcher = start_watcher(tmp_path, changes, probe_every_s=0.1, probe_within_s=0.3)
    try:
        deaf.set()
        monkeypatch.setattr(watcher_module.watchfiles, "watch", real_watch)  # the restart
        (tmp_path / "systems" / "mover.py").write_text("x = 2\n")  # never reported as an event
        assert changes.wait_for("mover", "x = 2\n")
    finally:
        watcher.stop()
    assert watcher.restarts >= 1 and watcher.alive is False
    assert "WatchStopped: no event for" in changes.messages[0]


def test_a_callback_that_raises_is_reported_and_the_watch_goes_on(tmp_path):
    (tmp_path / "systems").mkdir()
    changes = Changes()
    calls = []

    def on_systems(found, event_ns):
        calls.append(found)
        if len(calls) == 1:
            raise ValueError("[1, 2]")
        changes.on_systems(found, event_ns)

    watcher = ProjectWatcher(
        tmp_path, on_systems=on_systems, report=changes.messages.append, debounce_ms=50
    )
    watcher.start()
    try:
        (tmp_path / "systems" / "a.py").write_text("a = 1\n")
        deadline = time.monotonic() + 15
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "systems" / "b.py").write_text("b = 1\n")
        assert changes.wait_for("b", "b = 1\n")
    finally:
        watcher.stop()
    assert watcher.restarts == 0
    assert changes.messages == ["engine: handling a change failed (ValueError: [1, 2])"]


def test_a_file_that_cannot_be_a_module_is_reported_as_why(tmp_path):
    (tmp_path / "systems").mkdir()
    changes = Changes()
    folder = tmp_path / "systems" / "folder.py"
    folder.mkdir()
    (tmp_path / "systems" / "latin.py").write_bytes(b"x = 1\n# caf\xe9\n")
    watcher = ProjectWatcher(tmp_path, on_systems=changes.on_systems)
    watcher._dispatch({folder, tmp_path / "systems" / "latin.py"})
    assert str(changes.sources["folder"]) == f"{folder}: is a folder, not a module file"
    assert str(changes.sources["latin"]).endswith(
        "latin.py:2: not UTF-8 text: invalid continuation byte (byte 11)"
    )

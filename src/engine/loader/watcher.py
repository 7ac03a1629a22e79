"""Watching a project folder with ``watchfiles`` and saying what changed, by kind.

Editors save in many ways: write in place, truncate then write (VS Code), write a temp file
and rename it over the original (vim, JetBrains "safe write"), ``sed -i`` (also a rename),
several saves within milliseconds, ``git checkout`` touching many files at once. Rather
than interpret event types, the watcher looks at the *final state* of each touched path
once a burst of events settles (``step_ms`` of quiet): the file exists → it changed; it
does not → it was deleted. Every pattern above reduces to that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import watchfiles

SHADER_SUFFIXES = (".vert", ".frag", ".glsl")
ASSET_SUFFIXES = (".obj", ".png")  # anywhere in the project outside hidden folders
COMMANDS_DIR = Path(".engine") / "commands"
PROBE_NAME = "watch-probe"
#: Folders whose (re)creation makes the watcher take every file in them as changed.
WATCHED_DIRS = ("systems", "shaders")

#: An empty read right after an event may be a truncate-then-write caught in the middle.
EMPTY_RECHECK_S = 0.03


class ProjectWatcher:
    """A background thread that reports changes to ``systems/``, ``shaders/`` and commands.

    Args:
        project_dir: the game project.
        on_systems: ``(changes, event_ns)`` where ``changes`` maps a module name to its new
            source, or to ``None`` if its file is gone. Called on the watcher thread.
        on_shader: ``(path, event_ns)`` for a shader file that changed or vanished.
        on_command: ``(path)`` for a command file dropped into ``.engine/commands``.
        step_ms: quiet time that ends a burst of events.
    """

    def __init__(
        self,
        project_dir: Path,
        *,
        on_systems: Callable[[dict[str, str | None], int], None],
        on_shader: Callable[[Path, int], None] | None = None,
        on_command: Callable[[Path], None] | None = None,
        step_ms: int = 3,
        debounce_ms: int = 200,
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        self.on_systems = on_systems
        self.on_shader = on_shader
        self.on_command = on_command
        self.step_ms = step_ms
        self.debounce_ms = debounce_ms
        self._stop = threading.Event()
        self._seen_probe = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- classification -------------------------------------------------------------------
    def _kind(self, path: Path) -> str | None:
        try:
            rel = path.relative_to(self.project_dir)
        except ValueError:
            return None
        parts = rel.parts
        if len(parts) == 1 and parts[0] in WATCHED_DIRS:
            return "dir"
        if len(parts) == 2 and parts[0] == "systems" and path.suffix == ".py":
            return "systems" if path.stem.isidentifier() else None
        if len(parts) == 2 and parts[0] == "shaders" and path.suffix in SHADER_SUFFIXES:
            return "shaders"
        if path.suffix.lower() in ASSET_SUFFIXES and not any(p[0] == "." for p in parts):
            return "shaders"  # told to on_shader's listeners too: the renderer takes them
        if rel.parent == COMMANDS_DIR:
            if path.name == PROBE_NAME:
                return "probe"
            if path.suffix == ".json" and not path.name.endswith(".result.json"):
                return "commands"
        return None

    def _filter(self, change: watchfiles.Change, path: str) -> bool:
        return self._kind(Path(path)) is not None

    # -- the thread -----------------------------------------------------------------------
    def start(self, wait_ready: bool = True, timeout_s: float = 10.0) -> None:
        """Start watching; with ``wait_ready``, return once events are really being seen,
        after handing ``on_command`` the commands that were already waiting."""
        (self.project_dir / COMMANDS_DIR).mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="engine-watcher", daemon=True)
        self._thread.start()
        if not wait_ready:
            return
        probe = self.project_dir / COMMANDS_DIR / PROBE_NAME
        deadline = time.monotonic() + timeout_s
        while not self._seen_probe.is_set():
            if time.monotonic() > deadline or self.error is not None:
                raise RuntimeError(f"file watcher did not start: {self.error!r}")
            probe.write_text(str(time.monotonic_ns()))
            self._seen_probe.wait(0.05)
        probe.unlink(missing_ok=True)
        # Commands dropped while no one was watching (the game was starting or restarting)
        # raised their events before the watch: take them now. Each is claimed by unlinking
        # it, so one the watch also reports runs once.
        if self.on_command is not None:
            for path in sorted((self.project_dir / COMMANDS_DIR).iterdir()):
                if self._kind(path) == "commands":
                    self.on_command(path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            for changes in watchfiles.watch(
                self.project_dir,
                watch_filter=self._filter,
                debounce=self.debounce_ms,
                step=self.step_ms,
                stop_event=self._stop,
                rust_timeout=500,
                yield_on_timeout=False,
                raise_interrupt=False,
            ):
                added = {Path(p) for change, p in changes if change == watchfiles.Change.added}
                self._dispatch({Path(p) for _, p in changes}, added)
        except BaseException as exc:  # reported by start() and by the engine's stats
            self.error = exc

    def _dispatch(self, paths: set[Path], added: set[Path] = frozenset()) -> None:
        received_ns = time.monotonic_ns()
        systems: dict[str, str | None] = {}
        oldest_ns = received_ns
        for path in paths & added:
            if self._kind(path) == "dir" and path.is_dir():
                # A new systems/ or shaders/: files written into it before the watch on it
                # was in place (an editor saving into a folder it just made) raised no
                # event of their own. Take every file in it as changed.
                paths |= {p for p in path.iterdir() if self._kind(p) not in (None, "dir")}
        for path in sorted(paths):
            kind = self._kind(path)
            if kind == "probe":
                self._seen_probe.set()
            elif kind == "systems":
                source, event_ns = read_settled(path, received_ns)
                systems[path.stem] = source
                oldest_ns = min(oldest_ns, event_ns)
            elif kind == "shaders" and self.on_shader is not None:
                self.on_shader(path, event_time_ns(path, received_ns))
            elif kind == "commands" and self.on_command is not None and path.exists():
                self.on_command(path)
        if systems:
            self.on_systems(systems, oldest_ns)


def event_time_ns(path: Path, received_ns: int) -> int:
    """When the file was written, on the monotonic clock (from its mtime, if recent)."""
    try:
        age = time.time_ns() - path.stat().st_mtime_ns
    except OSError:
        return received_ns
    if 0 <= age < 5_000_000_000:
        return received_ns - age
    return received_ns


def read_settled(path: Path, received_ns: int) -> tuple[str | None, int]:
    """The file's final text (``None`` if gone) and the time it was written.

    An empty file read right after an event is re-read once a little later: a
    truncate-then-write save can be caught between its two steps.
    """
    for attempt in range(2):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, received_ns
        except (OSError, UnicodeDecodeError) as exc:
            # Unreadable now (permissions, a binary file): compile will report it.
            return f"raise ImportError({str(exc)!r})\n", received_ns
        if text or attempt:
            return text, event_time_ns(path, received_ns)
        time.sleep(EMPTY_RECHECK_S)
    return "", received_ns

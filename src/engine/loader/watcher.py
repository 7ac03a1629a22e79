"""Watching a project folder with ``watchfiles`` and saying what changed, by kind.

Editors save in many ways: write in place, truncate then write (VS Code), write a temp file
and rename it over the original (vim, JetBrains "safe write"), ``sed -i`` (also a rename),
several saves within milliseconds, ``git checkout`` touching many files at once. Rather
than interpret event types, the watcher looks at the *final state* of each touched path
once a burst of events settles (``step_ms`` of quiet): the file exists → it changed; it
does not → it was deleted. Every pattern above reduces to that.

The watcher does not die. A callback that raises is reported and the watch goes on. A
watch that fails (``watchfiles`` raises) or silently stops seeing events — user code that
runs ``os.closerange(3, 1024)`` closes its inotify descriptor, and from then on no event
arrives — is reported and started again, after a back-off (:class:`Backoff`). It notices
the silent kind with a probe: when the project has been quiet for ``probe_every_s``, it
touches ``.engine/watch-probe-PID-N`` (its own: the live game, a preview and the supervisor
may each watch the project) and expects to see that event within ``probe_within_s``.
Each time a watch is live (the first time too) it compares the files with what it last
saw and reports every difference, so edits made while no watch was running are not lost.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from engine.loader.modules import EMPTY_FILE, LoadError, read_source

SHADER_SUFFIXES = (".vert", ".frag", ".glsl")
ASSET_SUFFIXES = (".obj", ".png")  # anywhere in the project outside hidden folders
PROBE = Path(".engine") / "watch-probe"  # + "-PID-N": one file per watcher
#: Folders whose (re)creation makes the watcher take every file in them as changed.
WATCHED_DIRS = ("systems", "shaders")

#: An empty or missing file right after an event may be a save caught in the middle (a
#: truncate-then-write, a rename-away-then-write): it is read again every
#: ``EMPTY_RECHECK_S`` until it has text or ``EMPTY_SETTLE_S`` has passed. A single
#: recheck after 30 ms lost a truncate-then-write on a busy machine (the write came later).
EMPTY_RECHECK_S = 0.01
EMPTY_SETTLE_S = 0.3
#: How often the watch loop wakes when nothing happens (to probe, and to stop).
TICK_MS = 100


@dataclass
class Backoff:
    """How long to wait before restarting a watch that failed.

    ``first_s``, doubled for each failure in a row, at most ``max_s``; a watch that ran
    for ``healthy_s`` before failing starts the count again.

    Example:
        >>> b = Backoff()
        >>> [b.next_delay(ran_for_s=0.0) for _ in range(4)], b.next_delay(ran_for_s=60.0)
        ([0.1, 0.2, 0.4, 0.8], 0.1)
    """

    first_s: float = 0.1
    max_s: float = 5.0
    healthy_s: float = 30.0
    failures: int = 0

    def next_delay(self, ran_for_s: float) -> float:
        if ran_for_s >= self.healthy_s:
            self.failures = 0
        delay = min(self.max_s, self.first_s * (1 << self.failures))
        self.failures += 1
        return delay


class WatchStopped(RuntimeError):
    """The watch stopped seeing events (its probe never arrived)."""


class ProjectWatcher:
    """A background thread that reports changes to ``systems/`` and ``shaders/``.

    Args:
        project_dir: the game project.
        on_systems: ``(changes, event_ns)`` where ``changes`` maps a module name to its new
            source, ``None`` if its file is gone, or a :class:`LoadError` if it cannot be a
            module (a folder, not UTF-8, empty). Called on the watcher thread.
        on_shader: ``(path, event_ns)`` for a shader file that changed or vanished.
        report: where failures of the watch itself are told.
        step_ms / debounce_ms: quiet time that ends a burst of events / longest burst.
        probe_every_s / probe_within_s: see the module docstring.
        backoff: waits before restarts.
    """

    def __init__(
        self,
        project_dir: Path,
        *,
        on_systems: Callable[[dict[str, str | None | LoadError], int], None],
        on_shader: Callable[[Path, int], None] | None = None,
        report: Callable[[str], None] = print,
        step_ms: int = 3,
        debounce_ms: int = 200,
        probe_every_s: float = 1.0,
        probe_within_s: float = 3.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        self.on_systems = on_systems
        self.on_shader = on_shader
        self.report = report
        self.step_ms = step_ms
        self.debounce_ms = debounce_ms
        self.probe_every_s = probe_every_s
        self.probe_within_s = probe_within_s
        self.backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._live = threading.Event()
        self._thread: threading.Thread | None = None
        self._known: dict[Path, tuple[int, int, int, bool]] = {}
        self._probe_seen = 0
        self._probe_sent = 0
        self._probe_sent_ns = 0
        #: The last failure of the watch (kept for stats), and how many there were.
        self.error: BaseException | None = None
        self.restarts = 0
        self.probe = PROBE.with_name(f"{PROBE.name}-{os.getpid()}-{id(self):x}")

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
        if rel == self.probe:
            return "probe"
        if rel.parent == PROBE.parent and rel.name.startswith(PROBE.name):
            return None  # another watcher's probe
        if path.suffix.lower() in ASSET_SUFFIXES and not any(p[0] == "." for p in parts):
            return "shaders"  # told to on_shader's listeners too: the renderer takes them
        return None

    def _filter(self, change: watchfiles.Change, path: str) -> bool:
        return self._kind(Path(path)) is not None

    # -- the thread -----------------------------------------------------------------------
    def start(self, wait_ready: bool = True, timeout_s: float = 10.0) -> None:
        """Start watching; with ``wait_ready``, return once events are really being seen.

        Raises ``RuntimeError`` if no watch is live within ``timeout_s``."""
        (self.project_dir / self.probe).parent.mkdir(parents=True, exist_ok=True)
        self._known = self._scan()
        self._thread = threading.Thread(target=self._run, name="engine-watcher", daemon=True)
        self._thread.start()
        if wait_ready and not self._live.wait(timeout_s):
            raise RuntimeError(f"file watcher did not start: {self.error!r}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        (self.project_dir / self.probe).unlink(missing_ok=True)

    @property
    def alive(self) -> bool:
        """Whether the watcher thread runs (it only ends when stopped)."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._watch()
            except BaseException as exc:  # a thread has no one above it to tell
                if self._stop.is_set():
                    return
                self.error = exc
                self.restarts += 1
                delay = self.backoff.next_delay(time.monotonic() - started)
                self.report(
                    f"engine: the file watcher stopped ({type(exc).__name__}: {exc}); "
                    f"restarting it in {delay:g} s"
                )
                if self._stop.wait(delay):
                    return

    def _watch(self) -> None:
        """One watch, until stopped; raises when it fails or stops seeing events."""
        self._live.clear()
        probe_every_ns = round(self.probe_every_s * 1e9)
        probe_within_ns = round(self.probe_within_s * 1e9)
        last_event_ns = time.monotonic_ns()
        self._send_probe()
        changes_iter = watchfiles.watch(
            self.project_dir,
            watch_filter=self._filter,
            debounce=self.debounce_ms,
            step=self.step_ms,
            stop_event=self._stop,
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
        )
        try:
            for changes in changes_iter:
                now = time.monotonic_ns()
                if changes:
                    last_event_ns = now
                    added = {Path(p) for c, p in changes if c == watchfiles.Change.added}
                    self._dispatch({Path(p) for _, p in changes}, added)
                live = self._probe_seen >= self._probe_sent
                if not self._live.is_set():
                    if live:  # report what changed while no watch ran, then go live
                        self._rescan()
                        self._live.set()
                    else:
                        self._send_probe()  # the first one may have come before the watch
                elif not live and now - self._probe_sent_ns > probe_within_ns:
                    raise WatchStopped(
                        f"no event for {(now - self._probe_sent_ns) / 1e9:.1f} s after a "
                        "probe (its file descriptor was closed?)"
                    )
                elif live and now - max(last_event_ns, self._probe_sent_ns) > probe_every_ns:
                    self._send_probe()
        finally:
            try:
                changes_iter.close()
            except BaseException:  # a dead watch may panic as it is torn down
                pass

    def _send_probe(self) -> None:
        self._probe_sent += 1
        self._probe_sent_ns = time.monotonic_ns()
        try:
            (self.project_dir / self.probe).write_text(str(self._probe_sent))
        except OSError:
            pass  # .engine removed: the next probe recreates nothing; the watch restarts

    # -- what changed ---------------------------------------------------------------------
    def _scan(self) -> dict[Path, tuple[int, int, int, bool]]:
        """Every watched file now, with what tells a change (mtime, size, inode, folder)."""
        out = {}
        for folder, kind in (("systems", "systems"), ("shaders", "shaders")):
            try:
                entries = list(os.scandir(self.project_dir / folder))
            except OSError:
                continue
            for entry in entries:
                path = Path(entry.path)
                if self._kind(path) == kind:
                    out[path] = _signature(path)
        return out

    def _rescan(self) -> None:
        """Report what changed since the watch last saw it (while no watch ran)."""
        now = self._scan()
        changed = {p for p in now.keys() | self._known.keys() if now.get(p) != self._known.get(p)}
        if changed:
            self._dispatch(changed)

    def _dispatch(self, paths: set[Path], added: set[Path] = frozenset()) -> None:
        """Tell the callbacks about ``paths``; a callback that raises is reported."""
        received_ns = time.monotonic_ns()
        systems: dict[str, str | None | LoadError] = {}
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
                try:
                    self._probe_seen = max(self._probe_seen, int(path.read_text()))
                except (OSError, ValueError):
                    pass
            elif kind == "systems":
                source, event_ns = read_settled(path, received_ns)
                systems[path.stem] = source
                oldest_ns = min(oldest_ns, event_ns)
                self._known[path] = _signature(path)
            elif kind == "shaders":
                self._known[path] = _signature(path)
                if self.on_shader is not None:
                    self._call(self.on_shader, path, event_time_ns(path, received_ns))
        if systems:
            self._call(self.on_systems, systems, oldest_ns)

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception as exc:
            self.report(f"engine: handling a change failed ({type(exc).__name__}: {exc})")


def _signature(path: Path) -> tuple[int, int, int, bool]:
    try:
        st = path.stat()
    except OSError:
        return (0, -1, 0, False)
    return (st.st_mtime_ns, st.st_size, st.st_ino, path.is_dir())


def event_time_ns(path: Path, received_ns: int) -> int:
    """When the file was written, on the monotonic clock (from its mtime, if recent)."""
    try:
        age = time.time_ns() - path.stat().st_mtime_ns
    except OSError:
        return received_ns
    if 0 <= age < 5_000_000_000:
        return received_ns - age
    return received_ns


def _unsettled(source: str | None | LoadError) -> bool:
    """Gone or empty: maybe a save half-way."""
    return source is None or isinstance(source, LoadError) and source.message == EMPTY_FILE


def read_settled(path: Path, received_ns: int) -> tuple[str | None | LoadError, int]:
    """The module file's final text (``None`` if gone, a :class:`LoadError` if it cannot
    be a module) and the time it was written.

    An empty or missing file right after an event is read again until it has text, for
    up to ``EMPTY_SETTLE_S``: a truncate-then-write save can be caught between its two
    steps, and a file replaced (by a new file or a folder) between its removal and its
    return. A file that stays empty or gone is reported as such, that much later.
    """
    source = read_source(path.stem, path)
    deadline = time.monotonic() + EMPTY_SETTLE_S
    while _unsettled(source) and time.monotonic() < deadline:
        time.sleep(EMPTY_RECHECK_S)
        source = read_source(path.stem, path)
    if source is None:
        return None, received_ns
    return source, event_time_ns(path, received_ns)

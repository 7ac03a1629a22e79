"""Every version of every hot-swappable unit (system module or shader), kept on disk.

Layout inside a project::

    .engine/history/<kind>/<name>/index.json     # a snapshot: versions, statuses, pointers
    .engine/history/<kind>/<name>/log.jsonl      # every change since that snapshot
    .engine/history/<kind>/<name>/v0003.py       # the source of version 3, verbatim

``kind`` is ``systems`` or ``shaders``; ``name`` is the module stem (``physics``) or the
shader file name (``basic.frag``).

A change (a new version, a status, the active pointer) costs one appended line of the log,
whatever the length of the history: each line holds the *whole* new state of what changed
(a version record, a pointer), so replaying the log over the snapshot is idempotent. When
the log has grown as long as the history, the snapshot is rewritten (a temp file, then
``os.replace``) and the log emptied; a crash between the two only replays lines the
snapshot already holds. A line cut short by a crash is ignored. Version sources are written
atomically, before the line that records them.

Undo and redo move the *active* pointer, not the file on disk: the editor's buffer is the
user's, the history is the engine's. A restarted game loads the active version.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path


def report_to_stderr(message: str) -> None:
    """Where a history's messages go when it is given no ``report`` (tools, tests)."""
    sys.stderr.write(message + "\n")


HISTORY_DIR = Path(".engine") / "history"


class VersionStatus(StrEnum):
    """Where a version stands.

    ``pending``: recorded, not yet running. ``probation``: running, inside its probation
    window. ``good``: passed probation (or was undone/redone to and ran). ``bad``: ran and
    failed (raised during probation, hung, or killed the process). ``error``: never ran
    (syntax error, import error, load-time crash or timeout).
    """

    PENDING = "pending"
    PROBATION = "probation"
    GOOD = "good"
    BAD = "bad"
    ERROR = "error"


#: Statuses undo/redo may move to: versions that compiled and have not been proven bad.
RUNNABLE = frozenset({VersionStatus.PENDING, VersionStatus.PROBATION, VersionStatus.GOOD})


@dataclass(slots=True)
class Version:
    """One recorded version of a unit."""

    number: int
    time: float
    sha256: str
    status: VersionStatus
    why: str = ""
    file_name: str = ""
    #: How this version last went live: ``load`` (at start-up) or a live swap (``edit``,
    #: ``undo``, ``redo``, ``rollback``). Only a live swap can be blamed for a crash.
    went_live: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["status"] = str(self.status)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Version:
        return cls(
            number=int(d["number"]),
            time=float(d["time"]),
            sha256=str(d["sha256"]),
            status=VersionStatus(d["status"]),
            why=str(d.get("why", "")),
            file_name=str(d.get("file_name", "")),
            went_live=str(d.get("went_live", "")),
        )


def source_hash(source: str) -> str:
    """The content hash versions are identified by."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


#: The log is folded into the snapshot once it has this many lines, or as many lines as the
#: history has versions if that is more (so the rewrites cost O(1) per change on average).
COMPACT_MIN_LINES = 64


def _atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class VersionHistory:
    """The versions of one unit, with an active pointer and undo/redo.

    Example:
        >>> h = VersionHistory(Path(tmp), "systems", "spin")      # doctest: +SKIP
        >>> v = h.record("def spin(world, dt): ...")                # doctest: +SKIP
        >>> h.activate(v.number); h.active.number                   # doctest: +SKIP
        1
    """

    def __init__(
        self,
        project_dir: Path,
        kind: str,
        name: str,
        suffix: str = ".py",
        report: Callable[[str], None] = report_to_stderr,
        root: Path | None = None,
    ) -> None:
        self.report = report  # an unreadable index is said here, then moved aside
        self.kind = kind
        self.name = name
        self.suffix = suffix
        # root: where the project's histories are (default PROJECT/.engine/history; a
        # preview game keeps a copy of its own elsewhere).
        self.dir = (Path(root) if root else Path(project_dir) / HISTORY_DIR) / kind / name
        self.versions: list[Version] = []
        self.active_number: int | None = None
        #: The version whose source equals the file on disk when last seen.
        self.disk_number: int | None = None
        self._load()

    # -- persistence ---------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    @property
    def log_path(self) -> Path:
        return self.dir / "log.jsonl"

    def _load(self) -> None:
        self._log_lines = 0
        self._log_torn = False
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            # A corrupt index must not stop the game: start a fresh one beside it.
            broken = self.index_path.with_suffix(f".broken-{int(time.time())}.json")
            try:
                os.replace(self.index_path, broken)
            except OSError:
                pass
            self.report(f"engine: history index {self.index_path} unreadable ({exc}); moved aside")
            data = {}
        self.versions = [Version.from_json(v) for v in data.get("versions", [])]
        self.active_number = data.get("active")
        self.disk_number = data.get("disk")
        try:
            log = self.log_path.read_bytes()
        except FileNotFoundError:
            return
        # A last line without its newline was cut short: the next line must not join it.
        self._log_torn = bool(log) and not log.endswith(b"\n")
        for line in log.splitlines():
            self._log_lines += 1
            try:
                self._replay(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: the change it held never happened

    def _replay(self, change: dict) -> None:
        """Apply one log line (idempotent: each line holds whole new states)."""
        if "version" in change:
            v = Version.from_json(change["version"])
            if v.number == len(self.versions) + 1:
                self.versions.append(v)
            elif 1 <= v.number <= len(self.versions):
                self.versions[v.number - 1] = v
        if "active" in change:
            self.active_number = change["active"]
        if "disk" in change:
            self.disk_number = change["disk"]

    def reload(self) -> None:
        """Re-read the index from disk (another process may have changed it)."""
        self.versions, self.active_number, self.disk_number = [], None, None
        self._load()

    def save(self) -> None:
        """Write the whole history as the snapshot and empty the log (compaction)."""
        payload = {
            "kind": self.kind,
            "name": self.name,
            "active": self.active_number,
            "disk": self.disk_number,
            "versions": [v.to_json() for v in self.versions],
        }
        _atomic_write(self.index_path, json.dumps(payload, indent=1))
        # Emptied after the snapshot holds everything: a crash in between replays lines the
        # snapshot already has, which changes nothing.
        with open(self.log_path, "wb"):
            pass
        self._log_lines = 0
        self._log_torn = False

    def _append(self, change: dict) -> None:
        """Record one change: an appended line, or a compaction when the log is long."""
        if self._log_lines + 1 >= max(COMPACT_MIN_LINES, len(self.versions)):
            self.save()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(change, separators=(",", ":")) + "\n").encode("utf-8")
        if self._log_torn:
            line, self._log_torn = b"\n" + line, False
        # One write() on an O_APPEND descriptor: the line lands whole, after any other.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        self._log_lines += 1

    # -- queries --------------------------------------------------------------------
    def get(self, number: int) -> Version:
        """The version numbered ``number``; raises ``KeyError`` if there is none."""
        if 1 <= number <= len(self.versions):
            return self.versions[number - 1]
        raise KeyError(f"{self.kind}/{self.name} has no version {number}")

    @property
    def active(self) -> Version | None:
        return None if self.active_number is None else self.get(self.active_number)

    @property
    def latest(self) -> Version | None:
        return self.versions[-1] if self.versions else None

    def source(self, number: int) -> str:
        """The exact source text of version ``number``."""
        return (self.dir / self.get(number).file_name).read_text(encoding="utf-8")

    def last_good(self, before: int | None = None) -> Version | None:
        """The newest ``good`` version, optionally only among those numbered below ``before``."""
        for v in reversed(self.versions):
            if before is not None and v.number >= before:
                continue
            if v.status is VersionStatus.GOOD:
                return v
        return None

    # -- changes --------------------------------------------------------------------
    def record(self, source: str, *, from_disk: bool = True) -> Version:
        """Store ``source`` as a new version (status ``pending``) and return it.

        Saving the same text twice in a row records it once: the existing latest version is
        returned. ``from_disk`` marks the version as the one matching the file on disk.
        """
        sha = source_hash(source)
        latest = self.latest
        if latest is not None and latest.sha256 == sha:
            if from_disk and self.disk_number != latest.number:
                self.disk_number = latest.number
                self._append({"disk": latest.number})
            return latest
        number = len(self.versions) + 1
        file_name = f"v{number:04d}{self.suffix}"
        _atomic_write(self.dir / file_name, source)
        version = Version(number, time.time(), sha, VersionStatus.PENDING, "", file_name)
        self.versions.append(version)
        change: dict = {"version": version.to_json()}
        if from_disk:
            self.disk_number = number
            change["disk"] = number
        self._append(change)
        return version

    def mark(
        self, number: int, status: VersionStatus, why: str = "", went_live: str | None = None
    ) -> None:
        v = self.get(number)
        v.status = status
        if went_live is not None:
            v.went_live = went_live
        if why or status in (VersionStatus.GOOD, VersionStatus.PROBATION):
            v.why = why
        self._append({"version": v.to_json()})

    def activate(self, number: int | None) -> None:
        if number is not None:
            self.get(number)
        self.active_number = number
        self._append({"active": number})

    def undo_target(self) -> Version | None:
        """The runnable version an undo would move to (the newest one before active)."""
        start = (self.active_number or (len(self.versions) + 1)) - 1
        for n in range(start, 0, -1):
            if self.get(n).status in RUNNABLE:
                return self.get(n)
        return None

    def redo_target(self) -> Version | None:
        """The runnable version a redo would move to (the oldest one after active)."""
        start = (self.active_number or 0) + 1
        for n in range(start, len(self.versions) + 1):
            if self.get(n).status in RUNNABLE:
                return self.get(n)
        return None


class ProjectHistory:
    """All units' histories of one project, opened on demand and cached."""

    def __init__(
        self,
        project_dir: Path,
        report: Callable[[str], None] = report_to_stderr,
        root: Path | None = None,
    ) -> None:
        """``report`` takes each unit's messages (an unreadable index, moved aside).
        ``root`` is where the histories are kept (default ``PROJECT/.engine/history``)."""
        self.project_dir = Path(project_dir)
        self.root = Path(root) if root else self.project_dir / HISTORY_DIR
        self.report = report
        self._units: dict[tuple[str, str], VersionHistory] = {}

    def unit(self, kind: str, name: str, suffix: str = ".py") -> VersionHistory:
        key = (kind, name)
        h = self._units.get(key)
        if h is None:
            h = self._units[key] = VersionHistory(
                self.project_dir, kind, name, suffix, report=self.report, root=self.root
            )
        return h

    def names(self, kind: str) -> list[str]:
        """Units of ``kind`` that have a history on disk or in memory."""
        root = self.root / kind
        on_disk = (
            {
                p.name
                for p in root.iterdir()
                if (p / "index.json").exists() or (p / "log.jsonl").exists()
            }
            if root.is_dir()
            else set()
        )
        return sorted(on_disk | {n for k, n in self._units if k == kind})

"""Every version of every hot-swappable unit (system module or shader), kept on disk.

Layout inside a project::

    .engine/history/<kind>/<name>/index.json     # versions, statuses, active pointer
    .engine/history/<kind>/<name>/v0003.py       # the source of version 3, verbatim

``kind`` is ``systems`` or ``shaders``; ``name`` is the module stem (``physics``) or the
shader file name (``basic.frag``). Writes are atomic (write a temp file, then
``os.replace``) so a crash mid-write never leaves a torn index.

Undo and redo move the *active* pointer, not the file on disk: the editor's buffer is the
user's, the history is the engine's. A restarted game loads the active version.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

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

    def __init__(self, project_dir: Path, kind: str, name: str, suffix: str = ".py") -> None:
        self.kind = kind
        self.name = name
        self.suffix = suffix
        self.dir = Path(project_dir) / HISTORY_DIR / kind / name
        self.versions: list[Version] = []
        self.active_number: int | None = None
        #: The version whose source equals the file on disk when last seen.
        self.disk_number: int | None = None
        self._load()

    # -- persistence ---------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    def _load(self) -> None:
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # A corrupt index must not stop the game: start a fresh one beside it.
            broken = self.index_path.with_suffix(f".broken-{int(time.time())}.json")
            try:
                os.replace(self.index_path, broken)
            except OSError:
                pass
            print(f"engine: history index {self.index_path} unreadable ({exc}); moved aside")
            return
        self.versions = [Version.from_json(v) for v in data.get("versions", [])]
        self.active_number = data.get("active")
        self.disk_number = data.get("disk")

    def reload(self) -> None:
        """Re-read the index from disk (another process may have changed it)."""
        self.versions, self.active_number, self.disk_number = [], None, None
        self._load()

    def save(self) -> None:
        payload = {
            "kind": self.kind,
            "name": self.name,
            "active": self.active_number,
            "disk": self.disk_number,
            "versions": [v.to_json() for v in self.versions],
        }
        _atomic_write(self.index_path, json.dumps(payload, indent=1))

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
            if from_disk:
                self.disk_number = latest.number
                self.save()
            return latest
        number = len(self.versions) + 1
        file_name = f"v{number:04d}{self.suffix}"
        _atomic_write(self.dir / file_name, source)
        version = Version(number, time.time(), sha, VersionStatus.PENDING, "", file_name)
        self.versions.append(version)
        if from_disk:
            self.disk_number = number
        self.save()
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
        self.save()

    def activate(self, number: int | None) -> None:
        if number is not None:
            self.get(number)
        self.active_number = number
        self.save()

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

    def __init__(self, project_dir: Path) -> None:
        self.project_dir = Path(project_dir)
        self._units: dict[tuple[str, str], VersionHistory] = {}

    def unit(self, kind: str, name: str, suffix: str = ".py") -> VersionHistory:
        key = (kind, name)
        h = self._units.get(key)
        if h is None:
            h = self._units[key] = VersionHistory(self.project_dir, kind, name, suffix)
        return h

    def names(self, kind: str) -> list[str]:
        """Units of ``kind`` that have a history on disk or in memory."""
        root = self.project_dir / HISTORY_DIR / kind
        on_disk = (
            {p.name for p in root.iterdir() if (p / "index.json").exists()}
            if root.is_dir()
            else set()
        )
        return sorted(on_disk | {n for k, n in self._units if k == kind})

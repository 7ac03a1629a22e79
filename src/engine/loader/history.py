"""Every version of every hot-swappable unit (system module or shader), kept on disk.

Layout inside a project::

    .engine/history/<kind>/<name>/index.json     # a snapshot: versions, statuses, pointers
    .engine/history/<kind>/<name>/log.jsonl      # every change since that snapshot
    .engine/history/<kind>/<name>/v0003.py       # the source of version 3, verbatim

``kind`` is ``systems`` or ``shaders``; ``name`` is the module stem (``physics``) or the
shader file name (``basic.frag``).

A change (a new version, a status, the active pointer) costs one appended line of the log,
whatever the length of the history: each line holds the new values of what changed (a new
version's whole record; for a status or a vetting only the fields that changed; a
pointer), never a difference from the old value, so replaying the log over the snapshot is
idempotent. When the log has grown as long as the history, the snapshot is rewritten (a
temp file, then ``os.replace``) and the log emptied; a crash between the two only replays
lines the snapshot already holds. A line cut short by a crash is ignored. Version sources
are written atomically, before the line that records them.

Undo and redo move the *active* pointer, not the file on disk: the editor's buffer is the
user's, the history is the engine's. A restarted game loads the active version.

The metadata stays small: a version's record leaves out fields at their defaults (no
``why``, never vetted, the usual file name ``v0003.py``), its time is kept to the
millisecond, and the snapshot holds one record per line (about 150 bytes a version;
``tests/test_history_metadata.py`` counts them). Histories written before (indented
snapshots, whole records in every log line) are read as they are and rewritten in this
form at the next compaction.

A version records where it was *vetted* (:class:`Vetting`, :meth:`VersionHistory.mark_vetted`):
the preview ran it on a copy of the world for some frames, and it was promoted into the
live game or rejected, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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


class VettingResult(StrEnum):
    """How vetting a version ended: ``promoted`` into the live game, ``rejected`` (it
    faulted or overran its budget on the copy), or ``discarded`` by the user."""

    PROMOTED = "promoted"
    REJECTED = "rejected"
    DISCARDED = "discarded"


@dataclass(frozen=True, slots=True)
class Vetting:
    """Where and how a version was tried before it went live (or instead).

    ``where``: ``preview`` (a copy of the world) or another place a caller names;
    ``frames``: frames it ran there; ``worst_ms``: its slowest frame's time in its systems;
    ``reason``: why it was rejected (``file:line: what happened``), or a note.
    """

    where: str
    frames: int
    worst_ms: float
    result: VettingResult
    reason: str = ""

    def describe(self) -> str:
        """One line: ``vetted in preview: promoted after 90 frames (worst 3.1 ms)``."""
        text = (
            f"vetted in {self.where}: {self.result} after {self.frames} frames "
            f"(worst {self.worst_ms:.1f} ms)"
        )
        return f"{text}: {self.reason}" if self.reason else text

    def to_json(self) -> dict:
        d: dict = {
            "where": self.where,
            "frames": self.frames,
            "worst_ms": round(self.worst_ms, 3),
            "result": str(self.result),
        }
        if self.reason:
            d["reason"] = self.reason
        return d

    @classmethod
    def from_json(cls, d: dict) -> Vetting:
        """Raises ``KeyError``/``ValueError``/``TypeError`` on a malformed record."""
        return cls(
            where=str(d["where"]),
            frames=int(d["frames"]),
            worst_ms=float(d["worst_ms"]),
            result=VettingResult(d["result"]),
            reason=str(d.get("reason", "")),
        )


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
    #: Where it was tried before going live, and how that ended (None: never vetted).
    vetted: Vetting | None = None

    def to_json(self) -> dict:
        """The record as stored: fields at their defaults are left out, the time is kept
        to the millisecond."""
        d: dict = {
            "number": self.number,
            "time": round(self.time, 3),
            "sha256": self.sha256,
            "status": str(self.status),
            "file_name": self.file_name,
        }
        if self.why:
            d["why"] = self.why
        if self.went_live:
            d["went_live"] = self.went_live
        if self.vetted is not None:
            d["vetted"] = self.vetted.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict) -> Version:
        """A record as stored now or by earlier versions of the engine (every field
        written, ``vetted`` unknown). Raises ``KeyError``/``ValueError`` if malformed."""
        v = cls(
            number=int(d["number"]),
            time=float(d["time"]),
            sha256=str(d["sha256"]),
            status=VersionStatus(d["status"]),
            file_name=str(d.get("file_name", "")),
        )
        v.update(d)
        return v

    def update(self, d: dict) -> None:
        """Set the fields a log line or a record holds (``status``, ``why``, ``went_live``,
        ``vetted``); others are left as they are. Raises ``ValueError`` on a bad status."""
        if "status" in d:
            self.status = VersionStatus(d["status"])
        if "why" in d:
            self.why = str(d["why"])
        if "went_live" in d:
            self.went_live = str(d["went_live"])
        if "vetted" in d:
            vetted = d["vetted"]
            self.vetted = None if vetted is None else Vetting.from_json(vetted)


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
        self.versions = [self._restored(v) for v in data.get("versions", [])]
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
        """Apply one log line (idempotent: each line holds new values, not differences).

        ``version``: a whole record (a new version; every change, in logs written before).
        ``update``: the fields of one version that changed; skipped if the version is not
        there (its own line was cut short)."""
        if "version" in change:
            v = self._restored(change["version"])
            if v.number == len(self.versions) + 1:
                self.versions.append(v)
            elif 1 <= v.number <= len(self.versions):
                self.versions[v.number - 1] = v
        if "update" in change:
            fields = change["update"]
            number = int(fields["number"])
            if 1 <= number <= len(self.versions):
                self.versions[number - 1].update(fields)
        if "active" in change:
            self.active_number = change["active"]
        if "disk" in change:
            self.disk_number = change["disk"]

    def _file_name(self, number: int) -> str:
        return f"v{number:04d}{self.suffix}"

    def _stored(self, v: Version) -> dict:
        """``v``'s record as written here: the file name left out when it is the usual one."""
        d = v.to_json()
        if d["file_name"] == self._file_name(v.number):
            del d["file_name"]
        return d

    def _restored(self, d: dict) -> Version:
        """A record as read here (written now, or before with its file name)."""
        v = Version.from_json(d)
        if not v.file_name:
            v.file_name = self._file_name(v.number)
        return v

    def reload(self) -> None:
        """Re-read the index from disk (another process may have changed it)."""
        self.versions, self.active_number, self.disk_number = [], None, None
        self._load()

    def save(self) -> None:
        """Write the whole history as the snapshot and empty the log (compaction)."""
        head = json.dumps(
            {
                "kind": self.kind,
                "name": self.name,
                "active": self.active_number,
                "disk": self.disk_number,
            }
        )
        # One compact record per line: small, and still readable (and diffable) by a person.
        records = ",\n".join(
            json.dumps(self._stored(v), separators=(",", ":")) for v in self.versions
        )
        _atomic_write(self.index_path, f'{head[:-1]}, "versions": [\n{records}\n]}}\n')
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
        file_name = self._file_name(number)
        _atomic_write(self.dir / file_name, source)
        version = Version(number, time.time(), sha, VersionStatus.PENDING, "", file_name)
        self.versions.append(version)
        change: dict = {"version": self._stored(version)}
        if from_disk:
            self.disk_number = number
            change["disk"] = number
        self._append(change)
        return version

    def mark(
        self, number: int, status: VersionStatus, why: str = "", went_live: str | None = None
    ) -> None:
        """Set a version's status (and ``why``, ``went_live``); one log line holding the
        fields that changed. Raises ``KeyError`` for an unknown version."""
        v = self.get(number)
        change: dict = {"number": number, "status": str(status)}
        v.status = status
        if went_live is not None and went_live != v.went_live:
            v.went_live = change["went_live"] = went_live
        if (why or status in (VersionStatus.GOOD, VersionStatus.PROBATION)) and why != v.why:
            v.why = change["why"] = why
        self._append({"update": change})

    def mark_vetted(
        self,
        number: int,
        *,
        where: str = "preview",
        frames: int,
        worst_ms: float,
        result: VettingResult | str,
        reason: str = "",
    ) -> Vetting:
        """Record where version ``number`` was vetted and how it ended; returns the record.

        The status is not changed (a rejected candidate is marked ``bad`` with
        :meth:`mark` by whoever rejected it, if it should leave undo's reach). Raises
        ``KeyError`` for an unknown version, ``ValueError`` for a result that is not a
        :class:`VettingResult`.
        """
        v = self.get(number)
        # Rounded as stored, so the record in memory is the one a reader gets back.
        worst = round(float(worst_ms), 3)
        vetting = Vetting(where, int(frames), worst, VettingResult(result), reason)
        v.vetted = vetting
        self._append({"update": {"number": number, "vetted": vetting.to_json()}})
        return vetting

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

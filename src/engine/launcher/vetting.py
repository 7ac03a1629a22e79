"""Vetting code before it goes live: candidates run in a preview game on a copy of the world.

With ``engine run PROJECT --vet``, a save does not reach the live game. The supervisor
starts a **preview** game process: a copy of the live world (its newest checkpoint, taken
at a frame boundary by a forked child, so it cost the live game no frame), a copy of the
history, its own layer and frame clock, at a lower CPU and GPU priority. It runs the live
versions of every module plus the **candidates**: the versions saved since. Then:

* ``engine promote PROJECT`` loads the candidates into the live game (a swap like any
  other, on probation there too), each only if its file still holds the text that was
  vetted; ``engine discard PROJECT`` drops them (the files keep the text; the live game
  keeps its versions).
* With ``--vet auto`` the supervisor decides (:func:`decide`): a candidate that ran
  ``frames`` frames on the copy without a fault and within its budget is promoted; one
  that faulted or made frames late is rejected with the reason (file and line), and never
  touches the live world.

One part per process:

* the preview game (:func:`attach_preview`): slowness is measured there, not cut (a
  system over its budget keeps running, so the preview's frame rate shows it; a call is
  still interrupted after 250 ms, and faults count as in any game). Its **baseline** is
  the newest version of each module in the history when it started (the live game's); a
  module with a newer version is a candidate. The ``vet`` command reports each (:class:`Candidate`).
* the live game (:func:`attach_promote`): ``promote`` loads modules whose file text has
  the vetted hash; ``reject`` records a rejected text in the live history, marked bad,
  with where and why it was rejected (``engine history`` shows both).
* the supervisor: :func:`decide` turns a ``vet`` report into verdicts; pure, so it is
  tested without processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.loader.history import VersionStatus, source_hash
from engine.loader.watcher import SHADER_SUFFIXES

if TYPE_CHECKING:
    from engine.game import Engine

#: Frames a candidate runs on the copy before ``--vet auto`` promotes it.
DEFAULT_VET_FRAMES = 90


@dataclass
class Candidate:
    """A module version running in the preview (or tried there and rolled back).

    ``frames``: frames it has been the running version. ``worst_ms``: its slowest system
    now (p99 over the last 90 calls) against that system's ``budget_ms``. ``late``: calls
    of its systems over their budget since it went live. ``fault``: why it was rolled
    back or disabled (file:line), ``None`` while it runs clean.
    """

    module: str
    version: int
    sha256: str
    status: str
    frames: int = 0
    worst_ms: float = 0.0
    budget_ms: float = 0.0
    late: int = 0
    fault: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """What the supervisor does with one candidate: ``promote``, ``reject`` or ``wait``."""

    action: str
    candidate: Candidate
    reason: str = ""


def decide(candidates: list[Candidate], frames: int = DEFAULT_VET_FRAMES) -> list[Verdict]:
    """Verdicts for a preview's candidates (``--vet auto``).

    A candidate that faulted (rolled back, disabled, or marked bad in the preview) is
    rejected with the reason at once; after ``frames`` frames, one whose slowest system
    runs over its budget (p99 of its last 90 calls: the scheduler itself forgives a late
    call now and then, and so does vetting) is rejected, and one within it is promoted.
    The rest wait.
    """
    verdicts = []
    for c in candidates:
        if c.fault is not None or c.status in (VersionStatus.ERROR, VersionStatus.BAD):
            verdicts.append(Verdict("reject", c, c.fault or f"{c.status} in the preview"))
        elif c.frames >= frames and c.budget_ms > 0 and c.worst_ms > c.budget_ms:
            why = (
                f"over budget in the preview: p99 {c.worst_ms:.2f} ms of {c.budget_ms:.2f} ms "
                f"over its last {min(c.frames, 90)} calls ({c.late} late)"
            )
            verdicts.append(Verdict("reject", c, why))
        elif c.frames >= frames:
            verdicts.append(Verdict("promote", c, f"{c.frames} frames clean in the preview"))
        else:
            verdicts.append(Verdict("wait", c))
    return verdicts


# -- in the preview game -------------------------------------------------------------------


@dataclass
class _Tracked:
    version: int
    frames: int = 0
    overruns_at_start: dict[str, int] = field(default_factory=dict)
    late: int = 0
    worst_ms: float = 0.0
    budget_ms: float = 0.0
    fault: str | None = None


class PreviewCandidates:
    """The preview game's candidates: counted every frame, measured when the ``vet``
    command (between frames) asks for them.

    ``baseline`` maps each module to the newest version number its history had when the
    preview started (absent: a module that had none).
    """

    def __init__(self, engine: Engine, baseline: dict[str, int]) -> None:
        self.engine = engine
        self.baseline = baseline
        self._tracked: dict[str, _Tracked] = {}
        self._shader_seen: dict[tuple[str, int], int] = {}  # (file, version): first frame

    def after_frame(self, engine: Engine) -> None:
        """Per frame, only what cannot wait for a report: frames counted, and a system of
        a candidate that was disabled (it may come back before the next ``vet``)."""
        for name, loaded in list(engine.loader.active.items()):
            version = loaded.version
            if version is None or version <= self.baseline.get(name, 0):
                continue  # a live version (a candidate rolled back keeps its record)
            tracked = self._tracked.get(name)
            handles = self._handles(name, loaded)
            if tracked is None or tracked.version != version:
                tracked = self._tracked[name] = _Tracked(
                    version, overruns_at_start={h.key: h.stats.overruns for h in handles}
                )
            tracked.frames += 1
            if tracked.fault is None:
                disabled = next((h for h in handles if str(h.state) == "disabled"), None)
                if disabled is not None:
                    tracked.fault = _handle_fault(disabled)

    def _handles(self, name: str, loaded: Any) -> list[Any]:
        """The scheduler's handles of module ``name``'s systems."""
        handles = self.engine.scheduler.handles
        keys = (f"{name}.{spec.name}" for spec, _ in loaded.systems)
        return [handles[key] for key in keys if key in handles]

    def _measure(self, name: str, tracked: _Tracked) -> None:
        """Its systems' times now: the slowest p99 (last 90 calls) and its budget, and the
        calls over budget since it went live (kept once it is no longer running)."""
        loaded = self.engine.loader.active.get(name)
        if loaded is None or loaded.version != tracked.version:
            return
        late, worst, budget = 0, 0.0, 0.0
        for h in self._handles(name, loaded):
            p99 = float(h.stats.snapshot()["p99_ms"])
            late += h.stats.overruns - tracked.overruns_at_start.get(h.key, 0)
            if p99 >= worst:
                worst, budget = p99, h.budget_ns / 1e6
        tracked.late, tracked.worst_ms, tracked.budget_ms = late, worst, round(budget, 4)

    def report(self) -> list[Candidate]:
        """Every module with a version newer than the baseline: its newest such version."""
        out = []
        loader = self.engine.loader
        for name in sorted(set(self.engine.history_store.names("systems")) | set(loader.active)):
            unit = loader.unit(name)
            newest = unit.latest
            if newest is None or newest.number <= self.baseline.get(name, 0):
                continue
            tracked = self._tracked.get(name)
            running = tracked is not None and tracked.version == newest.number
            if running:
                self._measure(name, tracked)
            fault = tracked.fault if running else None
            if newest.status in (VersionStatus.ERROR, VersionStatus.BAD):
                fault = fault or newest.why or str(newest.status)
            out.append(
                Candidate(
                    module=name,
                    version=newest.number,
                    sha256=newest.sha256,
                    status=str(newest.status),
                    frames=tracked.frames if running else 0,
                    worst_ms=tracked.worst_ms if running else 0.0,
                    budget_ms=tracked.budget_ms if running else 0.0,
                    late=tracked.late if running else 0,
                    fault=fault,
                )
            )
        return out + self._shader_candidates()

    def _shader_candidates(self) -> list[Candidate]:
        """Shader files with a version newer than the baseline: a compile or link error is
        their fault; otherwise they ran once the library made them active."""
        history = self.engine.history_store
        out = []
        for name in history.names("shaders"):
            unit = history.unit("shaders", name, suffix=Path(name).suffix)
            newest = unit.latest
            if newest is None or newest.number <= self.baseline.get(name, 0):
                continue
            failed = newest.status in (VersionStatus.ERROR, VersionStatus.BAD)
            active = unit.active_number == newest.number
            first = self._shader_seen.setdefault((name, newest.number), self.engine.frame)
            out.append(
                Candidate(
                    module=name,
                    version=newest.number,
                    sha256=newest.sha256,
                    status=str(newest.status),
                    frames=self.engine.frame - first if active else 0,
                    fault=(newest.why or str(newest.status)) if failed else None,
                )
            )
        return out


def _handle_fault(handle: Any) -> str:
    """Why a candidate's system was disabled: the failure policy's line, with file:line."""
    reason = handle.reason
    if reason is None:
        return str(handle.last_error or f"{handle.key} disabled")
    message = reason.message or reason.detail
    if reason.location and reason.location not in message:
        message = f"{reason.location}: {message}"
    return message


def attach_preview(engine: Engine, baseline: dict[str, int]) -> PreviewCandidates:
    """Make ``engine`` (the preview game's) count its candidates and answer ``vet``."""
    from engine.game import Command

    candidates = PreviewCandidates(engine, baseline)
    engine.after_frame.append(candidates.after_frame)

    def vet(args: dict[str, Any]) -> dict[str, Any]:
        report = [c.to_json() for c in candidates.report()]
        return {"ok": True, "frame": engine.frame, "candidates": report}

    engine.commands["vet"] = Command(vet)
    return candidates


def history_baseline(history_root: Path) -> dict[str, int]:
    """The newest version number of each module (by name) and shader file (by file name,
    ``basic.frag``) in the history at ``history_root``."""
    from engine.loader.history import ProjectHistory

    history = ProjectHistory(history_root.parent, root=history_root)
    out = {}
    for kind in ("systems", "shaders"):
        for name in history.names(kind):
            suffix = Path(name).suffix if kind == "shaders" else ".py"
            latest = history.unit(kind, name, suffix=suffix).latest
            if latest is not None:
                out[name] = latest.number
    return out


# -- in the live game ----------------------------------------------------------------------


def attach_promote(engine: Engine) -> None:
    """Give ``engine`` (the live game's) the ``promote`` command: load the named modules
    from their files, each only if the file's text has the vetted hash, and record in the
    history where each was vetted. ``modules`` maps a name to ``{"sha256", "frames",
    "worst_ms", "reason"}`` (a :class:`Candidate`'s fields)."""
    from engine.game import Command
    from engine.loader.modules import read_source

    def promote(args: dict[str, Any]) -> dict[str, Any]:
        wanted: dict[str, dict[str, Any]] = args["modules"]
        sources, refused = {}, {}
        shaders = {n: v for n, v in wanted.items() if n.endswith(SHADER_SUFFIXES)}
        wanted = {n: v for n, v in wanted.items() if n not in shaders}
        swapped_shaders = _promote_shaders(engine, shaders, refused)
        for name, vetted in wanted.items():
            sha = vetted.get("sha256") if isinstance(vetted, dict) else None
            path = engine.loader.source_path(name)
            source = read_source(name, path) if path is not None else None
            if not isinstance(source, str):
                refused[name] = "its file is gone"
            elif source_hash(source) != sha:
                refused[name] = "its file changed after it was vetted: vet it again"
            else:
                sources[name] = source
        promoted = {}
        if sources:
            for swap in engine.loader.prepare(sources, kind="promote"):
                promoted[swap.name] = swap.version
                vetted = wanted[swap.name]
                if swap.version is not None:
                    engine.loader.unit(swap.name).mark_vetted(
                        swap.version,
                        frames=int(vetted.get("frames", 0)),
                        worst_ms=float(vetted.get("worst_ms", 0.0)),
                        result="promoted",
                        reason=str(vetted.get("reason", "")),
                    )
            for name in sources:
                if name not in promoted:
                    refused[name] = str(engine.loader.errors.get(name) or "did not load")
        return {"ok": True, "promoted": {**promoted, **swapped_shaders}, "refused": refused}

    def reject(args: dict[str, Any]) -> dict[str, Any]:
        # The live history keeps the rejected text too, marked bad (undo and redo skip it;
        # a restart under --vet never runs it) with where and why it was rejected.
        name, vetted = args["module"], args["candidate"]
        path = engine.loader.source_path(name)
        source = read_source(name, path) if path is not None else None
        if not isinstance(source, str) or source_hash(source) != vetted.get("sha256"):
            return {"ok": True, "recorded": None}  # edited since: the new text is vetted anew
        with engine.loader._history_lock:
            unit = engine.loader.unit(name)
            version = unit.record(source)
            if version.number != unit.active_number:
                unit.mark(version.number, VersionStatus.BAD, str(vetted.get("reason", "")))
            unit.mark_vetted(
                version.number,
                frames=int(vetted.get("frames", 0)),
                worst_ms=float(vetted.get("worst_ms", 0.0)),
                result="rejected",
                reason=str(vetted.get("reason", "")),
            )
        return {"ok": True, "recorded": version.number}

    engine.commands["promote"] = Command(promote, {"modules": dict}, between_frames=False)
    engine.commands["reject"] = Command(
        reject, {"module": str, "candidate": dict}, between_frames=False
    )


def _promote_shaders(
    engine: Engine, shaders: dict[str, dict[str, Any]], refused: dict[str, str]
) -> dict[str, int]:
    """Hand the live game's shader library the vetted shader files (it rebuilds them
    between frames, like a save); returns ``{file: version}`` of those taken."""
    import time

    taken = {}
    for name, vetted in shaders.items():
        path = engine.project_dir / "shaders" / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            refused[name] = "its file is gone"
            continue
        if source_hash(text) != vetted.get("sha256"):
            refused[name] = "its file changed after it was vetted: vet it again"
            continue
        for listener in engine.shader_listeners:
            listener(path, time.monotonic_ns())
        taken[name] = int(vetted.get("version", 0))
    return taken

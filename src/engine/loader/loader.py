"""The loader: versions of system modules, prepared off the frame and swapped between frames.

Life of an edit::

    watcher thread                              main thread (frame boundary)
    --------------                              ----------------------------
    file event → read source → record version   apply_pending():
    → compile + execute into a fresh module        migrate components, on_unload(old),
    → queue a PendingSwap                          on_load(new), hand systems to the
                                                   scheduler, version on probation

Nothing the new version does before ``apply_pending`` touches the world, so a version that
fails to compile, import or execute leaves the running game exactly as it was.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.contracts.handoff import CodeKind, RunningNow
from engine.loader.history import (
    RUNNABLE,
    ProjectHistory,
    Version,
    VersionHistory,
    VersionStatus,
    source_hash,
)
from engine.loader.modules import (
    PACKAGE,
    LoadedModule,
    LoadError,
    error_from_exception,
    execute_module,
)
from engine.scheduler.scheduler import Scheduler
from engine.scheduler.watchdog import Overrun
from engine.world.checkpoint import PendingComponent, default_resolver
from engine.world.components import component_key
from engine.world.migration import MigrationError, build_instance, migrate_instance

KIND = "systems"


@dataclass
class PendingSwap:
    """A prepared change of one module, waiting for the next frame boundary."""

    name: str
    new: LoadedModule | None  # None: unload the module
    version: int | None
    event_ns: int
    kind: str  # "edit" | "delete" | "undo" | "redo" | "rollback" | "load"


@dataclass
class SwapRecord:
    """What happened to one change (the stats JSON lists these)."""

    module: str
    version: int | None
    ok: bool
    error: str | None
    latency_ms: float | None
    kind: str
    frame: int
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "version": self.version,
            "ok": self.ok,
            "error": self.error,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "kind": self.kind,
            "frame": self.frame,
        }


class SwapLog:
    """The newest swap records (a ring of ``keep``) and counts of every swap since start.

    A long session swaps thousands of times: only the newest records are kept (what the
    console and the stats show), so memory and the cost of showing them stay bounded.
    Reads like a list of the kept records (``log[-1]``, ``len(log)``, iteration);
    ``total`` and ``failed`` count every record ever appended. Works for any record with
    an ``ok`` attribute (shader swaps too).
    """

    def __init__(self, keep: int = 256) -> None:
        self.recent: deque[Any] = deque(maxlen=keep)
        self.total = 0
        self.failed = 0

    def append(self, record: Any) -> None:
        self.recent.append(record)
        self.total += 1
        if not record.ok:
            self.failed += 1

    def __iter__(self) -> Iterator[Any]:
        return iter(self.recent)

    def __len__(self) -> int:
        return len(self.recent)

    def __getitem__(self, index: int) -> Any:
        """A kept record by position (``-1``: the newest); raises ``IndexError``."""
        return self.recent[index]

    def __repr__(self) -> str:
        return f"SwapLog(total={self.total}, failed={self.failed}, recent={list(self.recent)!r})"

    def last(self, n: int) -> list[Any]:
        """The newest ``n`` kept records, oldest of them first."""
        if n <= 0:
            return []
        newest_first = list(itertools.islice(reversed(self.recent), n))
        newest_first.reverse()
        return newest_first

    def counts(self) -> dict[str, int]:
        return {"total": self.total, "failed": self.failed, "kept": len(self.recent)}


class _Batch:
    """Modules being prepared together (a ``git checkout`` changes several at once)."""

    def __init__(self, sources: dict[str, tuple[str | None, int | None]]) -> None:
        self.sources = sources  # name -> (source or None for deleted, version)
        self.prepared: dict[str, LoadedModule] = {}
        self.in_progress: dict[str, types.ModuleType] = {}
        self.errors: dict[str, LoadError] = {}


class Loader:
    """Owns the active version of every system module of one engine.

    Args:
        project_dir: the game project (``systems/`` inside it).
        history: where versions are recorded.
        scheduler: receives each module's systems when a version goes live.
        world: the world hooks and migrations act on.
        builtin_dirs: folders of the engine's own system modules, importable as
            ``systems.<name>`` when the project has no module of that name.
        load_limit_s: longest module-level code may run at import.
        report: where swap results and errors are printed.
    """

    def __init__(
        self,
        project_dir: Path,
        history: ProjectHistory,
        scheduler: Scheduler,
        world: Any,
        *,
        builtin_dirs: list[Path] | None = None,
        load_limit_s: float = 2.0,
        report: Callable[[str], None] = print,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.project_dir = Path(project_dir)
        self.systems_dir = self.project_dir / "systems"
        self.history = history
        self.scheduler = scheduler
        self.world = world
        self.builtin_dirs = [Path(p) for p in (builtin_dirs or [])]
        self.load_limit_s = load_limit_s
        self.report = report
        self.clock_ns = clock_ns
        self.active: dict[str, LoadedModule] = {}
        self.dependents: dict[str, set[str]] = {}
        self.probation: dict[str, int] = {}  # module -> frame its probation ends
        self.swaps = SwapLog()
        self.errors: dict[str, LoadError] = {}
        self._pending: list[PendingSwap] = []
        self._lock = threading.RLock()
        self._batch: _Batch | None = None
        self.frame = 0
        #: Told which module's code runs now (its import, its hooks) for the heartbeat.
        self.running = RunningNow()

    # -- finding sources ----------------------------------------------------------------
    def source_path(self, name: str) -> Path | None:
        """The file a module comes from: the project's, else a built-in one."""
        for d in [self.systems_dir, *self.builtin_dirs]:
            p = d / f"{name}.py"
            if p.is_file():
                return p
        return None

    def project_modules(self) -> list[str]:
        if not self.systems_dir.is_dir():
            return []
        return sorted(
            p.stem
            for p in self.systems_dir.glob("*.py")
            if p.stem.isidentifier() and p.stem != "__init__"
        )

    def unit(self, name: str) -> VersionHistory:
        return self.history.unit(KIND, name)

    # -- preparing (any thread) -----------------------------------------------------------
    def resolve(self, stem: str, importer: str) -> types.ModuleType:
        """Import hook target: the module ``systems.<stem>`` as of the batch being prepared."""
        batch = self._batch
        if batch is not None:
            if stem in batch.prepared:
                module = batch.prepared[stem].module
            elif stem in batch.in_progress:  # circular import: the partial module, as Python
                module = batch.in_progress[stem]
            elif stem in batch.sources and batch.sources[stem][0] is not None:
                module = self._prepare_one(batch, stem).module
            else:
                module = self._active_or_load(batch, stem)
        else:
            with self._lock:
                active = self.active.get(stem)
            if active is None:
                active = self._load_now(stem)
            module = active.module
        if importer != stem:
            self.dependents.setdefault(stem, set()).add(importer)
        return module

    def require(self, stem: str) -> LoadedModule:
        """The active version of ``stem``, loading it now if needed (main thread)."""
        return self.active.get(stem) or self._load_now(stem)

    def _load_now(self, stem: str) -> LoadedModule:
        """Load a module that is imported before it was loaded (``game.py`` importing a
        built-in). Only between frames on the main thread: it goes live immediately."""
        if self.source_path(stem) is None:
            raise ModuleNotFoundError(f"No module named '{PACKAGE}.{stem}'")
        if threading.current_thread() is not threading.main_thread():
            raise ModuleNotFoundError(f"'{PACKAGE}.{stem}' is not loaded yet")
        chosen = self.startup_source(stem)
        if chosen is None:
            raise ModuleNotFoundError(f"'{PACKAGE}.{stem}' is left out (its version was bad)")
        source, number = chosen
        self.prepare({stem: source}, kind="load", versions={stem: number} if number else None)
        self.apply_pending(self.frame)
        if stem not in self.active:
            raise ModuleNotFoundError(f"'{PACKAGE}.{stem}' failed to load: {self.errors.get(stem)}")
        return self.active[stem]

    def _active_or_load(self, batch: _Batch, stem: str) -> types.ModuleType:
        with self._lock:
            active = self.active.get(stem)
        if active is not None:
            return active.module
        path = self.source_path(stem)
        if path is None:
            raise ModuleNotFoundError(f"No module named '{PACKAGE}.{stem}'")
        chosen = self.startup_source(stem)
        if chosen is None:
            raise ModuleNotFoundError(f"'{PACKAGE}.{stem}' is left out (its version was bad)")
        source, number = chosen
        if number is None:
            number = (
                self.unit(stem).record(source, from_disk=path.parent == self.systems_dir).number
            )
        batch.sources[stem] = (source, number)
        return self._prepare_one(batch, stem).module

    def _prepare_one(self, batch: _Batch, name: str) -> LoadedModule:
        source, version = batch.sources[name]
        assert source is not None
        if name in batch.errors:
            raise batch.errors[name]
        path = self.source_path(name) or (self.systems_dir / f"{name}.py")
        placeholder = types.ModuleType(f"{PACKAGE}.{name}")
        batch.in_progress[name] = placeholder
        running = self.running.enter(
            self.running.register(CodeKind.MODULE, name, version, None, path)
        )
        try:
            loaded = execute_module(name, source, path, version, self, self.load_limit_s)
        except LoadError as err:
            batch.errors[name] = err
            raise
        finally:
            self.running.leave(running)
            batch.in_progress.pop(name, None)
        batch.prepared[name] = loaded
        loaded.imports = {d for d, users in self.dependents.items() if name in users}
        return loaded

    def prepare(
        self,
        sources: dict[str, str | None],
        *,
        kind: str = "edit",
        event_ns: int | None = None,
        versions: dict[str, int] | None = None,
    ) -> list[PendingSwap]:
        """Prepare new versions of several modules together and queue them for swapping.

        ``sources`` maps module name to its new source, or ``None`` for a deleted file. With
        ``kind="edit"`` each source is recorded as a new version; undo/redo/rollback pass
        ``versions`` (the history numbers the sources are). Returns the queued swaps;
        failures are recorded, reported and not queued.
        """
        event_ns = self.clock_ns() if event_ns is None else event_ns
        plan: dict[str, tuple[str | None, int | None]] = {}
        for name, source in sources.items():
            if source is None:
                plan[name] = (None, None)
            elif versions and name in versions:
                plan[name] = (source, versions[name])
            else:
                plan[name] = (source, self.unit(name).record(source).number)
        batch = _Batch(plan)
        queued: list[PendingSwap] = []
        with self._lock:  # one batch at a time: the import hook reads self._batch
            self._batch = batch
            try:
                for name, (source, version) in list(plan.items()):
                    if source is None:
                        queued.append(PendingSwap(name, None, None, event_ns, "delete"))
                        continue
                    try:
                        loaded = batch.prepared.get(name) or self._prepare_one(batch, name)
                    except LoadError as err:
                        self._load_failed(name, version, err, kind)
                        continue
                    queued.append(PendingSwap(name, loaded, version, event_ns, kind))
                # Modules pulled in by imports (built-ins, new dependencies) go live too.
                for name, loaded in batch.prepared.items():
                    if name not in plan:
                        queued.append(PendingSwap(name, loaded, loaded.version, event_ns, "load"))
            finally:
                self._batch = None
            self._pending.extend(queued)
        return queued

    def _load_failed(self, name: str, version: int | None, err: LoadError, kind: str) -> None:
        self.errors[name] = err
        if version is not None:
            unit = self.unit(name)
            if unit.get(version).status is VersionStatus.PENDING:
                unit.mark(version, VersionStatus.ERROR, str(err))
        self.swaps.append(SwapRecord(name, version, False, str(err), None, kind, self.frame))
        keeps = self.active.get(name)
        still = f"; version {keeps.version} keeps running" if keeps else ""
        self.report(f"engine: {name} v{version} failed to load{still}\n  {err}")

    # -- swapping (main thread, between frames) ----------------------------------------------
    def apply_pending(self, frame: int) -> list[SwapRecord]:
        """Swap in every prepared module; call only between frames, on the main thread."""
        if not self._pending:
            return []
        with self._lock:
            pending, self._pending = self._pending, []
        # Several saves of one module before a frame boundary: the last one wins.
        latest: dict[str, PendingSwap] = {}
        for p in pending:
            latest.pop(p.name, None)
            latest[p.name] = p
        records = []
        for p in latest.values():
            rec = self._apply(p, frame)
            records.append(rec)
            self.swaps.append(rec)
            status = "ok" if rec.ok else "FAILED"
            latency = f" in {rec.latency_ms:.1f} ms" if rec.latency_ms is not None else ""
            detail = f": {rec.error}" if rec.error else ""
            self.report(f"engine: swap {p.name} v{p.version} ({p.kind}) {status}{latency}{detail}")
        return records

    def _apply(self, p: PendingSwap, frame: int) -> SwapRecord:
        old = self.active.get(p.name)
        if p.new is None:
            if old is not None:
                self._run_hook(old, "on_unload")
                self.world.drop_handlers_of(old.module.__name__)
                with self._lock:
                    del self.active[p.name]
                sys.modules.pop(f"{PACKAGE}.{p.name}", None)
                self.scheduler.remove_module(p.name)
                self.probation.pop(p.name, None)
            return SwapRecord(p.name, None, True, None, self._latency(p), p.kind, frame)
        new = p.new
        try:
            conversions = self._plan_migration(new)
        except MigrationError as exc:
            return self._swap_failed(p, f"component migration refused: {exc}", frame)
        on_load = new.hook("on_load")
        before = self.world.checkpoint() if on_load is not None else None
        if old is not None:
            self._run_hook(old, "on_unload")
            self.world.drop_handlers_of(old.module.__name__)  # no stale version hears events
        for old_cls, new_cls, converted in conversions:
            self._commit_migration(old_cls, new_cls, converted)
        if on_load is not None:
            error = self._run_hook(new, "on_load")
            if error is not None:
                assert before is not None
                self.world.restore_into(before, self.resolve_component)
                for old_cls, new_cls, _ in conversions:
                    self.world.alias_component(new_cls, old_cls)
                return self._swap_failed(p, f"on_load failed: {error}", frame)
        with self._lock:
            self.active[p.name] = new
        sys.modules[f"{PACKAGE}.{p.name}"] = new.module
        self.scheduler.set_module_systems(p.name, p.version, new.systems, frame)
        if p.version is not None:
            unit = self.unit(p.name)
            unit.activate(p.version)
            status = unit.get(p.version).status
            if status is not VersionStatus.GOOD:
                status = VersionStatus.PROBATION
            unit.mark(p.version, status, went_live=p.kind)
        self.probation[p.name] = frame + self.scheduler.policy.probation_frames
        self.errors.pop(p.name, None)
        return SwapRecord(p.name, p.version, True, None, self._latency(p), p.kind, frame)

    def _swap_failed(self, p: PendingSwap, why: str, frame: int) -> SwapRecord:
        err = LoadError(p.name, str(p.new.path if p.new else p.name), None, why)
        self.errors[p.name] = err
        if p.version is not None:
            self.unit(p.name).mark(p.version, VersionStatus.ERROR, why)
        return SwapRecord(p.name, p.version, False, why, self._latency(p), p.kind, frame)

    def _latency(self, p: PendingSwap) -> float:
        return max(0.0, (self.clock_ns() - p.event_ns) / 1e6)

    def _run_hook(self, loaded: LoadedModule, hook: str) -> str | None:
        """Run ``on_load``/``on_unload`` under the frame watchdog; the error text or None."""
        fn = loaded.hook(hook)
        if fn is None:
            return None
        wd = self.scheduler.watchdog
        line = getattr(getattr(fn, "__code__", None), "co_firstlineno", 0)
        name = self.running.register(
            CodeKind.HOOK, loaded.name, loaded.version, hook, loaded.path, line
        )
        running = self.running.enter(name)
        wd.arm_once(f"{loaded.name}.{hook}")
        try:
            fn(self.world)
        except (Exception, Overrun, SystemExit) as exc:
            wd.disarm_once()
            self.running.leave(running)
            err = error_from_exception(loaded.name, loaded.path, exc)
            self.report(f"engine: {loaded.name}.{hook} raised: {err}")
            return str(err)
        wd.disarm_once()
        self.running.leave(running)
        return None

    # -- component migration -------------------------------------------------------------
    def _plan_migration(self, new: LoadedModule) -> list[tuple[type, type, list[Any]]]:
        """Convert (without storing) every live instance of an older class of ``new``'s
        components. Raises :class:`MigrationError` before anything is changed."""
        plans = []
        if not new.components:
            return plans
        for old_cls in self.world.component_types():
            if issubclass(old_cls, PendingComponent):
                key = old_cls.key
            else:
                key = component_key(old_cls)
            new_cls = new.components.get(key)
            if new_cls is None or new_cls is old_cls:
                continue
            converted = []
            for entity in self.world.entities_with(old_cls):
                instance = self.world.component_for_entity(entity, old_cls)
                if isinstance(instance, PendingComponent):
                    converted.append((entity, build_instance(new_cls, instance.fields)))
                else:
                    converted.append((entity, migrate_instance(instance, new_cls)))
            plans.append((old_cls, new_cls, converted))
        return plans

    def _commit_migration(self, old_cls: type, new_cls: type, converted: list[Any]) -> None:
        self.world.replace_components(old_cls, dict(converted))
        self.world.alias_component(old_cls, new_cls)

    def resolve_component(self, key: str) -> type | None:
        """The active class for a component key (checkpoint restore uses this)."""
        module = key.split(":", 1)[0]
        if module.startswith(PACKAGE + "."):
            loaded = self.active.get(module[len(PACKAGE) + 1 :])
            if loaded is not None:
                return loaded.components.get(key)
            return None
        return default_resolver(key)

    # -- probation, rollback, undo/redo (main thread) -----------------------------------------
    def tick(self, frame: int) -> None:
        """Promote versions whose probation passed without a fault."""
        self.frame = frame
        if not self.probation:
            return
        for name, until in list(self.probation.items()):
            if frame >= until:
                del self.probation[name]
                loaded = self.active.get(name)
                if loaded is not None and loaded.version is not None:
                    unit = self.unit(name)
                    if unit.get(loaded.version).status is VersionStatus.PROBATION:
                        unit.mark(loaded.version, VersionStatus.GOOD)

    def on_probation(self, name: str) -> bool:
        return name in self.probation

    def rollback(self, name: str, why: str) -> int | None:
        """Mark the active version of ``name`` bad and go back to its last good version.

        Returns the version rolled back to, or None if there is none (the scheduler then
        disables the module's systems). The swap happens at the next frame boundary. The
        decision, and its message, are the failure policy's (see ``engine.policy``).
        """
        loaded = self.active.get(name)
        if loaded is None or loaded.version is None:
            return None
        unit = self.unit(name)
        unit.mark(loaded.version, VersionStatus.BAD, why)
        self.probation.pop(name, None)
        target = unit.last_good()
        if target is None or target.number == loaded.version:
            return None
        self.prepare(
            {name: unit.source(target.number)}, kind="rollback", versions={name: target.number}
        )
        return target.number

    def move(self, name: str, direction: str) -> int:
        """Undo or redo ``name`` (``direction`` is ``"undo"`` or ``"redo"``).

        Prepares the target version; it goes live at the next frame boundary. Raises
        ``LookupError`` when there is nothing to move to.
        """
        unit = self.unit(name)
        unit.reload()
        target = unit.undo_target() if direction == "undo" else unit.redo_target()
        if target is None:
            raise LookupError(f"{name}: nothing to {direction} (active v{unit.active_number})")
        swaps = self.prepare(
            {name: unit.source(target.number)}, kind=direction, versions={name: target.number}
        )
        if not swaps:
            raise LookupError(f"{name}: v{target.number} failed to load: {self.errors.get(name)}")
        return target.number

    # -- start-up ----------------------------------------------------------------------------
    def load_all(self, frame: int = 0) -> list[SwapRecord]:
        """Load every project module (the active version of each) and swap them in now.

        A module whose file changed while the game was stopped gets a new version. A module
        that fails to load falls back to its last good version, if it has one. A version
        the supervisor blamed for a crash or hang is bad and not loaded (see
        :func:`leave_out`).
        """
        sources: dict[str, str | None] = {}
        versions: dict[str, int] = {}
        for name in self.project_modules():
            chosen = self.startup_source(name)
            if chosen is None:
                continue
            sources[name], number = chosen
            if number is not None:
                versions[name] = number
        self.prepare(sources, kind="load", versions=versions)
        # Fall back to the last good version for whatever failed.
        retry: dict[str, str | None] = {}
        for name in sources:
            if name in self.errors:
                good = self.unit(name).last_good()
                if good is not None:
                    retry[name] = self.unit(name).source(good.number)
                    versions[name] = good.number
        if retry:
            self.prepare(retry, kind="load", versions=versions)
        return self.apply_pending(frame)

    def startup_source(self, name: str) -> tuple[str, int | None] | None:
        """Which source a module starts with: ``(source, version)``, ``version`` None for
        new text (recorded when prepared), or None when the module is left out.

        The history's active version runs if the file still holds the text it last saw
        (an undo survives a restart); a file changed while the game was stopped is new; a
        file whose text was proven bad, with nothing else to run, is left out until edited.
        """
        path = self.source_path(name)
        if path is None:
            return None
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.report(f"engine: cannot read {path}: {exc}")
            return None
        unit = self.unit(name)
        active = unit.active
        on_disk = unit.get(unit.disk_number) if unit.disk_number is not None else None
        unchanged = on_disk is not None and on_disk.sha256 == source_hash(source)
        if active is None and unchanged and on_disk.status is VersionStatus.BAD:
            return None
        if active is not None and unchanged and active.status in RUNNABLE:
            return unit.source(active.number), active.number
        return source, None


def leave_out(unit: VersionHistory, number: int, why: str) -> Version | None:
    """Mark version ``number`` of a module bad (``why``) so the next start does not run it.

    The version that ran before it becomes active — the last good one, else the newest
    runnable one before it — and is returned; with none, the module is left out (``None``)
    until its file is edited. Used by the supervisor for the version the heartbeat named
    when the game died or hung, whether it was swapped in live or loaded at start-up.
    """
    unit.mark(number, VersionStatus.BAD, why)
    if unit.active_number is not None and unit.active_number != number:
        active = unit.get(unit.active_number)
        if active.status in RUNNABLE:
            return active  # the blamed version never went live (it died loading)
    before = unit.last_good(before=number) or next(
        (v for v in reversed(unit.versions[: number - 1]) if v.status in RUNNABLE), None
    )
    unit.activate(before.number if before else None)
    return before

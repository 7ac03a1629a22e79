"""The loader: versions of system modules, prepared off the frame and swapped between frames.

Life of an edit::

    watcher thread        loader thread (one job at a time)        main thread, frame boundary
    --------------        ---------------------------------        ---------------------------
    file event → source → record the version → compile (big       apply_pending(): snapshot the
                          sources in a helper process) → run the   world, on_unload(old), migrate
                          module code at the frame gate, under     components, on_load(new), hand
                          the load limit → publish the prepared    the systems to the scheduler;
                          batch (a short lock)                     the version goes on probation

Nothing the new version does before ``apply_pending`` touches the world, so a version that
fails to compile, import or execute leaves the running game exactly as it was.

Threads. The watcher, the control socket and the frame loop never run user module code:
they hand the loader a *job* (:meth:`Loader.prepare_later`; :meth:`Loader.prepare` waits
for it) and the loader's own thread runs it. While it runs a batch, imports of
``systems.x`` made *on that thread* see the batch's version of ``x`` (or the partially
initialised module, in a circular import); on every other thread — systems running in a
frame, threads user code started — they see the **active** version. No lock is held while
user code runs: a batch is prepared without one and published under a short one.

Module code runs at the frame gate (:mod:`engine.loader.gate`): it pauses while the main
thread runs a frame, so a heavy import costs the frame loop nothing, and it is interrupted
past ``load_limit_s``. Code that neither finishes nor returns to Python (a call that blocks
for ever) is abandoned: its thread is parked and a new loader thread takes the next job.

Every load fault is reported to the failure policy (:mod:`engine.policy`), which answers
``keep-old``: the running version stays live and the message names the file and line.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.contracts.handoff import CodeKind, RunningNow
from engine.loader.compiler import Compiler
from engine.loader.gate import FrameGate, GatedRun
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
    new_module,
    read_source,
)
from engine.loader.threads import UserThreads
from engine.policy import Action, FailurePolicy, Fault, FaultKind
from engine.scheduler.pacing import run_on_surplus
from engine.scheduler.scheduler import Scheduler
from engine.scheduler.watchdog import Overrun, innermost_loop
from engine.world.checkpoint import PendingComponent, Snapshot, default_resolver
from engine.world.components import component_key
from engine.world.migration import (
    MigrationError,
    build_instance,
    lay_out_floats,
    migrate_instance,
    shells_in_address_order,
)

KIND = "systems"
#: How long past its load limit a load may go without returning to Python (a call that
#: blocks) before it is abandoned and a new loader thread takes over.
ABANDON_AFTER_S = 1.0
#: Stops a runaway thread may swallow (one per watch window) before it is unstoppable.
UNSTOPPABLE_AFTER = 3

#: How much lower the loader thread's CPU priority is than the game's (nice levels).
LOADER_NICENESS = 10

#: A module's new source: text, ``None`` (the file is gone) or why it cannot be a module.
Source = str | None | LoadError


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
    """Modules prepared together (a ``git checkout`` changes several at once), on one thread."""

    def __init__(
        self, sources: dict[str, tuple[Source, int | None]], kind: str, event_ns: int
    ) -> None:
        self.sources = sources  # name -> (source, version)
        self.kind = kind
        self.event_ns = event_ns
        self.pulled: set[str] = set()  # modules loaded because a batch module imported them
        self.prepared: dict[str, LoadedModule] = {}
        self.in_progress: dict[str, types.ModuleType] = {}
        self.errors: dict[str, LoadError] = {}
        #: importer -> {batch module it got -> line of the import}: fails with it.
        self.uses: dict[str, dict[str, int | None]] = {}
        #: importer -> every systems module it imported (active or batch).
        self.imports: dict[str, set[str]] = {}
        self.abandoned = False


@dataclass
class _Job:
    """One piece of work for the loader thread, and what it is doing right now."""

    fn: Callable[[_Job], Any]
    future: Future
    batch: _Batch | None = None
    runs: list[tuple[GatedRun, str, int | None, Path]] = field(default_factory=list)
    abandoned: bool = False


def _settle(future: Future, result: Any) -> None:
    """Resolve ``future`` unless it already was (an abandoned job finishing late)."""
    try:
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class Loader:
    """Owns the active version of every system module of one engine.

    Args:
        project_dir: the game project (``systems/`` inside it).
        history: where versions are recorded.
        scheduler: receives each module's systems when a version goes live.
        world: the world hooks and migrations act on.
        builtin_dirs: folders of the engine's own system modules, importable as
            ``systems.<name>`` when the project has no module of that name.
        load_limit_s: longest module-level code may run at import (time waiting at the
            frame gate does not count).
        report: where swap results and errors are printed.
        failure_policy: decides what load faults cost (a new one by default).
        compiler: compiles sources (big ones in a helper process).
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
        failure_policy: FailurePolicy | None = None,
        compiler: Compiler | None = None,
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
        self.failure_policy = failure_policy or FailurePolicy()
        self.compiler = compiler or Compiler()
        #: The frame loop closes it for the length of each frame (see engine.loader.gate).
        self.frame_gate = FrameGate()
        self.active: dict[str, LoadedModule] = {}  # written on the main thread, under _lock
        self.probation: dict[str, int] = {}  # module -> frame its probation ends
        self.swaps = SwapLog()
        self.errors: dict[str, LoadError] = {}
        self._pending: list[PendingSwap] = []
        self._failures: list[SwapRecord] = []  # recorded on the loader thread, listed at swaps
        self._rolling_back: dict[str, int] = {}
        self._lock = threading.Lock()  # short: publishing, never around user code
        self._history_lock = threading.RLock()  # history files: loader thread and main
        self._local = threading.local()  # .batch: the batch this thread is preparing
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._job: _Job | None = None  # the job the loader thread runs now
        self._closed = False
        roots = [self.project_dir, *self.builtin_dirs]
        self._user_prefixes = tuple(str(Path(d).resolve()) + os.sep for d in roots) + tuple(
            str(d) + os.sep for d in roots
        )
        self.frame = 0
        #: Told which module's code runs now (its import, its hooks) for the heartbeat.
        self.running = RunningNow()
        #: ``hold(name)``: the module starts with its active version whatever its file
        #: holds (edits to it are vetted elsewhere first; see engine.launcher.vetting).
        self.hold: Callable[[str], bool] | None = None
        #: Say which modules start off their file's version (see :meth:`startup_source`).
        self.start_notices = True
        self._start_notices: set[str] = set()  # modules said to start off their file
        self._shadow_notices: set[str] = set()  # modules said to take a taken name
        #: Threads module code started: gated, watched each frame, stopped when they run
        #: away or their version leaves (see engine.loader.threads). Noticed from load_all.
        self.threads = UserThreads(self.frame_gate, self._is_user_file)
        #: ``(fault, file, line)``: a thread that swallows every stop (see
        #: :meth:`watch_threads`); the game process ends itself (``None``: it is only said).
        self.on_unstoppable: Callable[[Fault, str, int], None] | None = None

    # -- finding sources ----------------------------------------------------------------
    def source_path(self, name: str) -> Path | None:
        """The file a module comes from: the project's (even a folder by that name, which
        then fails to load with a clear message), else a built-in one."""
        p = self.systems_dir / f"{name}.py"
        if p.exists():
            return p
        for d in self.builtin_dirs:
            if (d / f"{name}.py").is_file():
                return d / f"{name}.py"
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
        with self._history_lock:
            return self.history.unit(KIND, name)

    def _is_user_file(self, filename: str) -> bool:
        return filename.startswith(self._user_prefixes)

    def _where(self, path: str, line: int | None) -> str:
        """``systems/x.py:3``: the file relative to the project when inside it."""
        try:
            shown = str(Path(path).relative_to(self.project_dir))
        except ValueError:
            shown = path
        return f"{shown}:{line}" if line else shown

    # -- imports (any thread) --------------------------------------------------------------
    def resolve(self, stem: str, importer: str) -> types.ModuleType:
        """Import hook target: the module ``systems.<stem>`` for ``importer``.

        On the thread preparing a batch: the batch's version (prepared now if it is in the
        batch, the partially initialised module in a circular import). Anywhere else: the
        active version; on the main thread between frames a module never loaded is loaded
        now. Raises ``ModuleNotFoundError`` or ``ImportError``.
        """
        batch: _Batch | None = getattr(self._local, "batch", None)
        if batch is None:
            active = self.active.get(stem)
            if active is not None:
                return active.module
            return self._load_now(stem).module
        batch.imports.setdefault(importer, set()).add(stem)
        if stem in batch.prepared:
            module = batch.prepared[stem].module
        elif stem in batch.in_progress:  # a circular import: the partial module, as Python
            module = batch.in_progress[stem]
        elif stem in batch.sources:
            source = batch.sources[stem][0]
            if source is None:
                raise ModuleNotFoundError(f"No module named '{PACKAGE}.{stem}' (file deleted)")
            if isinstance(source, LoadError):
                raise ImportError(f"{PACKAGE}.{stem} cannot be loaded: {source}")
            module = self._prepare_dependency(batch, stem)
        else:
            active = self.active.get(stem)
            if active is not None:
                return active.module
            module = self._load_into_batch(batch, stem)
        if stem != importer:
            batch.uses.setdefault(importer, {})[stem] = _import_line(importer)
        return module

    def _prepare_dependency(self, batch: _Batch, stem: str) -> types.ModuleType:
        try:
            return self._prepare_one(batch, stem).module
        except LoadError as err:
            raise ImportError(f"{PACKAGE}.{stem} failed to load: {err}") from None

    def _load_into_batch(self, batch: _Batch, stem: str) -> types.ModuleType:
        """A module imported by a batch module and never loaded (a built-in, a new file)."""
        if self.source_path(stem) is None:
            raise ModuleNotFoundError(f"No module named '{PACKAGE}.{stem}'")
        chosen = self.startup_source(stem)
        if chosen is None:
            raise ModuleNotFoundError(f"'{PACKAGE}.{stem}' is left out (its version was bad)")
        source, number = chosen
        if isinstance(source, LoadError):
            raise ImportError(f"{PACKAGE}.{stem} cannot be loaded: {source}")
        if number is None:
            path = self.source_path(stem)
            with self._history_lock:
                number = (
                    self.unit(stem)
                    .record(source, from_disk=path is not None and path.parent == self.systems_dir)
                    .number
                )
        batch.sources[stem] = (source, number)
        batch.pulled.add(stem)
        return self._prepare_dependency(batch, stem)

    def require(self, stem: str) -> LoadedModule:
        """The active version of ``stem``, loading it now if needed (main thread)."""
        return self.active.get(stem) or self._load_now(stem)

    def _load_now(self, stem: str) -> LoadedModule:
        """Load a module imported before it was loaded (``game.py`` importing a built-in,
        a system importing a new module). Only on the main thread: the loader thread
        prepares it while the frame waits, and it goes live at once (alone: other
        prepared swaps wait for the frame boundary)."""
        if self.source_path(stem) is None:
            raise ModuleNotFoundError(f"No module named '{PACKAGE}.{stem}'")
        if threading.current_thread() is not threading.main_thread():
            raise ModuleNotFoundError(f"'{PACKAGE}.{stem}' is not loaded yet")
        chosen = self.startup_source(stem)
        if chosen is None:
            raise ModuleNotFoundError(f"'{PACKAGE}.{stem}' is left out (its version was bad)")
        source, number = chosen
        versions = {stem: number} if number else None
        swaps = self.prepare({stem: source}, kind="load", versions=versions)
        with self._lock:
            self._pending = [p for p in self._pending if p not in swaps]
        for p in swaps:
            self._record(p, self._apply(p, self.frame))
        if stem not in self.active:
            raise ModuleNotFoundError(f"'{PACKAGE}.{stem}' failed to load: {self.errors.get(stem)}")
        return self.active[stem]

    # -- preparing (the loader thread) -----------------------------------------------------
    def prepare(
        self,
        sources: dict[str, Source],
        *,
        kind: str = "edit",
        event_ns: int | None = None,
        versions: dict[str, int] | None = None,
    ) -> list[PendingSwap]:
        """Prepare new versions of several modules together, queue them for swapping, and
        wait until they are (see :meth:`prepare_later`). Returns the queued swaps; failures
        are recorded, reported and not queued."""
        future = self.prepare_later(sources, kind=kind, event_ns=event_ns, versions=versions)
        try:
            return self._wait(future)
        except LoadError:  # abandoned (its failure was reported)
            return []

    def prepare_later(
        self,
        sources: dict[str, Source],
        *,
        kind: str = "edit",
        event_ns: int | None = None,
        versions: dict[str, int] | None = None,
    ) -> Future:
        """Hand the loader thread new versions of several modules, prepared together.

        ``sources`` maps module name to its new source, ``None`` for a deleted file, or a
        :class:`LoadError` for a file that cannot be a module. With ``kind="edit"`` each
        source is recorded as a new version; undo/redo/rollback pass ``versions`` (the
        history numbers the sources are). Returns a future of the queued swaps. Jobs run
        one at a time, in the order they were handed in. Raises ``RuntimeError`` once the
        loader is closed.
        """
        event_ns = self.clock_ns() if event_ns is None else event_ns
        sources = dict(sources)
        return self._submit(lambda job: self._prepare_job(job, sources, kind, event_ns, versions))

    def _prepare_job(
        self,
        job: _Job,
        sources: dict[str, Source],
        kind: str,
        event_ns: int,
        versions: dict[str, int] | None,
    ) -> list[PendingSwap]:
        plan: dict[str, tuple[Source, int | None]] = {}
        for name, source in sources.items():
            if source is None or isinstance(source, LoadError):
                plan[name] = (source, None)
            elif versions and name in versions:
                plan[name] = (source, versions[name])
            else:
                with self._history_lock:
                    plan[name] = (source, self.unit(name).record(source).number)
        batch = job.batch = _Batch(plan, kind, event_ns)
        self._local.batch = batch
        try:
            for name, (source, _) in list(plan.items()):
                if isinstance(source, str) and name not in batch.prepared:
                    try:
                        self._prepare_one(batch, name)
                    except LoadError:
                        pass  # in batch.errors
        finally:
            self._local.batch = None
        _fail_with_dependencies(batch)
        return self._publish(batch)

    def _prepare_one(self, batch: _Batch, name: str) -> LoadedModule:
        if name in batch.errors:
            raise batch.errors[name]
        source, version = batch.sources[name]
        assert isinstance(source, str)
        path = self.source_path(name) or (self.systems_dir / f"{name}.py")
        self._say_if_shadowing(name, path)
        module = new_module(name, path, self)
        batch.in_progress[name] = module
        job = self._job
        run = GatedRun(
            self.frame_gate,
            round(self.load_limit_s * 1e9),
            self._is_user_file,
            on_park=self._parked,
        )
        if job is not None:
            job.runs.append((run, name, version, path))
        # The heartbeat names this module version while its code runs: a crash or hang in
        # it is blamed on it (also at start-up, before the first frame).
        running = self.running.enter(
            self.running.register(CodeKind.MODULE, name, version, None, path)
        )
        try:
            run.checkpoint()  # an in-process compile is one C call: start it between frames
            chunks = self.compiler.compile(source, str(path))
            with run:
                loaded = execute_module(module, chunks, version, path, between=run.checkpoint)
            if run.interrupts:  # it caught the interrupt and finished anyway
                raise LoadError(
                    name,
                    str(path),
                    None,
                    "LoadTimeout: module code ran past the load limit and swallowed the interrupt",
                    timeout=True,
                )
        except BaseException as exc:  # an interrupt can land in engine code too
            if isinstance(exc, KeyboardInterrupt):
                raise
            err = batch.errors[name] = error_from_exception(name, path, exc)
            raise err from None
        finally:
            self.running.leave(running)
            batch.in_progress.pop(name, None)
            if job is not None:
                job.runs.pop()
        batch.prepared[name] = loaded
        loaded.imports = set(batch.imports.get(name, ())) - {name}
        return loaded

    def _publish(self, batch: _Batch) -> list[PendingSwap]:
        """Queue the batch's swaps and record its failures (a short lock)."""
        queued: list[PendingSwap] = []
        for name, (source, version) in batch.sources.items():
            err = batch.errors.get(name) or (source if isinstance(source, LoadError) else None)
            if err is not None:
                if not batch.abandoned:
                    self._load_failed(name, version, err, batch.kind)
            elif source is None:
                queued.append(PendingSwap(name, None, None, batch.event_ns, "delete"))
            else:
                kind = "load" if name in batch.pulled else batch.kind
                queued.append(
                    PendingSwap(name, batch.prepared[name], version, batch.event_ns, kind)
                )
        with self._lock:
            if batch.abandoned:
                return []
            self._pending.extend(queued)
        return queued

    def _load_failed(self, name: str, version: int | None, err: LoadError, kind: str) -> None:
        """Record and report a version that could not be loaded (any thread)."""
        if version is not None:
            with self._history_lock:
                unit = self.unit(name)
                if unit.get(version).status is VersionStatus.PENDING:
                    unit.mark(version, VersionStatus.ERROR, str(err))
        keeps = self.active.get(name)
        fault = Fault(
            FaultKind.LOAD_TIMEOUT if err.timeout else FaultKind.LOAD_ERROR,
            err.message,
            module=name,
            version=version,
            phase="load",
            location=self._where(err.path, err.line),
            has_good_version=keeps is not None,
        )
        decision = self.failure_policy.decide(fault, self.clock_ns())
        assert decision.action is Action.KEEP_OLD, decision  # nothing of it is live to undo
        self.report(f"engine: {decision.message}")
        with self._lock:
            self.errors[name] = err
            record = SwapRecord(name, version, False, str(err), None, kind, self.frame)
            self._failures.append(record)

    # -- the loader thread -------------------------------------------------------------------
    def _submit(self, fn: Callable[[_Job], Any]) -> Future:
        job = _Job(fn, Future())
        with self._lock:
            if self._closed:
                raise RuntimeError("the loader is closed")
            self._jobs.put(job)
            if self._worker is None:
                self._start_worker()
        return job.future

    def _start_worker(self) -> None:
        """A new loader thread (under ``_lock``)."""
        self._worker = threading.Thread(target=self._work, name="engine-loader", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        me = threading.current_thread()
        run_on_surplus(LOADER_NICENESS)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            self._job = job
            try:
                result: Any = job.fn(job)
            except BaseException as exc:  # reported to whoever waits for the job
                result = exc
            _settle(job.future, result)
            if self._worker is not me:  # abandoned meanwhile: the new thread goes on
                return
            self._job = None

    def _wait(self, future: Future) -> Any:
        """The job's result; meanwhile, a load that stopped returning is abandoned. On the
        main thread the frame gate is lent: the frame cannot go on without the load."""
        if threading.current_thread() is self._worker:
            raise RuntimeError("the loader thread cannot wait for its own job")
        main = threading.current_thread() is threading.main_thread()
        with self.frame_gate.lent() if main else nullcontext():
            while True:
                try:
                    return future.result(timeout=0.05)
                except FutureTimeout:
                    self._supervise()

    def _supervise(self) -> None:
        """Abandon the running load if it stopped returning to Python past its limit."""
        job = self._job
        runs = list(job.runs) if job is not None else []  # the loader thread changes it
        if job is None or not runs or job.abandoned:
            return
        run = runs[-1][0]
        if run.started_ns and run.running_ns() > (self.load_limit_s + ABANDON_AFTER_S) * 1e9:
            self._abandon(job, "did not return (a call that blocks?); its thread was stopped")

    def _parked(self, run: GatedRun) -> None:
        job = self._job
        if job is not None and any(r is run for r, *_ in job.runs):
            self._abandon(job, "swallowed every interrupt; its thread was stopped")

    def _abandon(self, job: _Job, why: str) -> None:
        """Give up on a job whose user code will not finish: its batch is dropped, its
        thread parks at its next Python event, and a new loader thread takes over."""
        runs = list(job.runs)
        with self._lock:
            if job.abandoned:
                return
            job.abandoned = True
            if job.batch is not None:
                job.batch.abandoned = True
            if runs:
                runs[-1][0].abandoned = True
            if self._job is job:
                self._job = None
            if not self._closed:
                self._start_worker()
        run, name, version, path = runs[-1] if runs else (None, "?", None, Path("?"))
        line = run and _current_line(run.thread_id, str(path))
        if run is not None and run.thread is not None and not run.finished:
            # Parked at its next line of project code, it uses no CPU. If it keeps a CPU
            # busy all the same (it got past its interrupts), the watch stops it from
            # outside like a runaway thread of the module's, and escalates.
            self.threads.adopt(run.thread, name, version, str(path))
        err = LoadError(name, str(path), line, f"LoadTimeout: module code {why}", timeout=True)
        self._load_failed(name, version, err, job.batch.kind if job.batch else "edit")
        _settle(job.future, err)

    def close(self) -> None:
        """Stop the loader thread (after its job) and the compiler helper."""
        with self._lock:
            self._closed = True
            self._jobs.put(None)
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=1.0)
        self.threads.uninstall()
        self.compiler.close()

    # -- swapping (main thread, between frames) ----------------------------------------------
    def apply_pending(self, frame: int) -> list[SwapRecord]:
        """Swap in every prepared module; call only between frames, on the main thread.

        Returns the records of this boundary: loads that failed since the last one, then
        the swaps made now."""
        if self._job is not None:
            self._supervise()
        if not self._pending and not self._failures:
            return []
        with self._lock:
            pending, self._pending = self._pending, []
            failures, self._failures = self._failures, []
        for rec in failures:
            self.swaps.append(rec)
            if self._rolling_back.pop(rec.module, None) is not None:
                self.probation.pop(rec.module, None)  # the rollback failed: strikes from now
        # Several saves of one module before a frame boundary: the last one wins.
        latest: dict[str, PendingSwap] = {}
        for p in pending:
            latest.pop(p.name, None)
            latest[p.name] = p
        records = list(failures)
        for p in latest.values():
            rec = self._apply(p, frame)
            self._record(p, rec)
            records.append(rec)
        return records

    def _record(self, p: PendingSwap, rec: SwapRecord) -> None:
        self.swaps.append(rec)
        self._rolling_back.pop(p.name, None)
        status = "ok" if rec.ok else "FAILED"
        latency = f" in {rec.latency_ms:.1f} ms" if rec.latency_ms is not None else ""
        detail = f": {rec.error}" if rec.error else ""
        self.report(f"engine: swap {p.name} v{p.version} ({p.kind}) {status}{latency}{detail}")

    def _apply(self, p: PendingSwap, frame: int) -> SwapRecord:
        """One swap, all or nothing.

        The world (entities, components and the resources mapping) is snapshot before the
        first hook runs. ``on_unload`` of the leaving version that raises: its changes are
        undone and the swap goes on (a broken ``on_unload`` must not pin its version).
        A refused migration or an ``on_load`` that raises: the world is put back as it was
        before ``on_unload`` and the old version stays live; its ``on_load`` is not run
        again, as everything it set up is in the restored world.
        """
        old = self.active.get(p.name)
        if p.new is None:
            return self._unload(p, old, frame)
        new = p.new
        has_hooks = new.hook("on_load") is not None or (old and old.hook("on_unload"))
        snapshot = self._snapshot() if has_hooks else None
        if old is not None:
            self._leave(old, snapshot)
        try:
            conversions = self._plan_migration(new)
        except MigrationError as exc:
            self._restore(snapshot)
            return self._swap_failed(p, f"component migration refused: {exc}", frame)
        for old_cls, new_cls, converted in conversions:
            self._commit_migration(old_cls, new_cls, converted)
        error = self._run_hook(new, "on_load", old is not None)
        if error is not None:
            self._restore(snapshot)
            for old_cls, new_cls, _ in conversions:
                self.world.alias_component(new_cls, old_cls)
            return self._swap_failed(p, f"on_load failed: {error}", frame)
        with self._lock:
            self.active[p.name] = new
        if old is not None:
            self.world.drop_handlers_of(old.module)  # no stale version hears events
            self.threads.stop_module(old.module.__dict__)  # nor runs a thread
        sys.modules[f"{PACKAGE}.{p.name}"] = new.module
        proven = False  # a version that already passed its probation (once is enough)
        if p.version is not None:
            with self._history_lock:
                unit = self.unit(p.name)
                unit.activate(p.version)
                status = unit.get(p.version).status
                proven = status is VersionStatus.GOOD
                if not proven:
                    status = VersionStatus.PROBATION
                unit.mark(p.version, status, went_live=p.kind)
        self.scheduler.set_module_systems(p.name, p.version, new.systems, frame, proven)
        if proven:  # at start-up, after a restart, by undo/redo or a rollback
            self.probation.pop(p.name, None)  # a fault strikes; it is not rolled back
        else:
            self.probation[p.name] = frame + self.scheduler.policy.probation_frames
        self.errors.pop(p.name, None)
        return SwapRecord(p.name, p.version, True, None, self._latency(p), p.kind, frame)

    def _unload(self, p: PendingSwap, old: LoadedModule | None, frame: int) -> SwapRecord:
        """A deleted file: unload its module, unless live modules still import it."""
        if old is not None:
            users = sorted(m for m, lm in self.active.items() if p.name in lm.imports)
            if users:
                return self._keep_imported(p, old, users, frame)
            self._leave(old, self._snapshot() if old.hook("on_unload") else None)
            with self._lock:
                del self.active[p.name]
            self.world.drop_handlers_of(old.module)
            self.threads.stop_module(old.module.__dict__)
            sys.modules.pop(f"{PACKAGE}.{p.name}", None)
            self.scheduler.remove_module(p.name)
            self.probation.pop(p.name, None)
        return SwapRecord(p.name, None, True, None, self._latency(p), p.kind, frame)

    def _keep_imported(
        self, p: PendingSwap, old: LoadedModule, users: list[str], frame: int
    ) -> SwapRecord:
        """Refuse to unload a module others import: they would fail at their next call."""
        detail = (
            f"{self._where(str(old.path), None)} was deleted, but {', '.join(users)} "
            f"import{'s' if len(users) == 1 else ''} it (edit or delete them first)"
        )
        importer = self.active[users[0]]
        fault = Fault(
            FaultKind.LOAD_ERROR,
            detail,
            module=p.name,
            version=old.version,
            phase="load",
            location=self._where(str(importer.path), None),
            has_good_version=True,
        )
        self.report(f"engine: {self.failure_policy.decide(fault, self.clock_ns()).message}")
        return SwapRecord(p.name, None, False, detail, self._latency(p), p.kind, frame)

    def _leave(self, old: LoadedModule, snapshot: tuple[Snapshot, dict] | None) -> None:
        """Run the leaving version's ``on_unload``; undo what it did if it raises."""
        if self._run_hook(old, "on_unload", True) is not None:
            self._restore(snapshot)

    def _snapshot(self) -> tuple[Snapshot, dict] | None:
        """The world and its resources mapping, to put back if a swap fails half-way.

        Components that cannot be pickled are held by reference in the snapshot, so an
        undone swap puts them back, the same objects (see :meth:`World.snapshot`)."""
        try:
            return self.world.snapshot(), dict(self.world.resources)
        except Exception as exc:  # pickling failed for another reason: no safety net
            self.report(
                f"engine: the world cannot be snapshot for the swap ({exc}); a hook "
                "that fails now cannot be undone"
            )
            return None

    def _restore(self, snapshot: tuple[Snapshot, dict] | None) -> None:
        if snapshot is None:
            return
        entities, resources = snapshot
        self.world.restore_into(entities, self.resolve_component)
        self.world.resources.clear()
        self.world.resources.update(resources)

    def _swap_failed(self, p: PendingSwap, why: str, frame: int) -> SwapRecord:
        err = LoadError(p.name, str(p.new.path if p.new else p.name), None, why)
        self.errors[p.name] = err
        if p.version is not None:
            with self._history_lock:
                self.unit(p.name).mark(p.version, VersionStatus.ERROR, why)
        return SwapRecord(p.name, p.version, False, why, self._latency(p), p.kind, frame)

    def _latency(self, p: PendingSwap) -> float:
        return max(0.0, (self.clock_ns() - p.event_ns) / 1e6)

    def _run_hook(self, loaded: LoadedModule, hook: str, replacing: bool = False) -> str | None:
        """Run ``on_load``/``on_unload`` under the frame watchdog; the error text or None.

        A hook that raises is reported to the failure policy (``hook-error``)."""
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
            fault = Fault(
                FaultKind.HOOK_ERROR,
                err.message,
                module=loaded.name,
                version=loaded.version,
                system=f"{loaded.name}.{hook}",
                phase=hook,
                location=self._where(err.path, err.line),
                has_good_version=replacing,
            )
            self.report(f"engine: {self.failure_policy.decide(fault, self.clock_ns()).message}")
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
            entities = self.world.entities_with(old_cls)
            # Filled in the order queries visit them: see shells_in_address_order.
            shells = None
            if not callable(getattr(new_cls, "migrate", None)):  # a hook builds its own
                shells = shells_in_address_order(new_cls, len(entities))
            for entity, shell in zip(entities, shells or itertools.repeat(None), strict=False):
                instance = self.world.component_for_entity(entity, old_cls)
                if isinstance(instance, PendingComponent):
                    converted.append((entity, build_instance(new_cls, instance.fields, shell)))
                else:
                    converted.append((entity, migrate_instance(instance, new_cls, shell)))
            lay_out_floats([instance for _, instance in converted])
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
        """Promote versions whose probation passed without a fault; stop user threads
        that ran away (see :meth:`watch_threads`)."""
        self.frame = frame
        if self.threads.threads:
            self.watch_threads()
        if not self.probation:
            return
        for name, until in list(self.probation.items()):
            if frame >= until and name not in self._rolling_back:
                del self.probation[name]
                loaded = self.active.get(name)
                if loaded is not None and loaded.version is not None:
                    with self._history_lock:
                        unit = self.unit(name)
                        if unit.get(loaded.version).status is VersionStatus.PROBATION:
                            unit.mark(loaded.version, VersionStatus.GOOD)

    def watch_threads(self, now_ns: int | None = None) -> list[Fault]:
        """Report every user thread that ran away to the failure policy and stop it
        (main thread). One that ran away after ``UNSTOPPABLE_AFTER`` stops is
        *unstoppable*: the policy's restart goes to :attr:`on_unstoppable` (the game
        process ends itself for the supervisor to restart without the version; without
        a supervisor, it is said and the thread is stopped again). Returns the faults."""
        faults = []
        for runaway in self.threads.watch(now_ns):
            entry = runaway.thread
            version = entry.version
            if version is None:
                loaded = self.active.get(entry.module)
                if loaded is not None and loaded.module.__dict__ is entry.namespace:
                    version = loaded.version
            file = runaway.file or entry.file
            unstoppable = entry.stops >= UNSTOPPABLE_AFTER
            fault = Fault(
                FaultKind.UNSTOPPABLE if unstoppable else FaultKind.RUNAWAY_THREAD,
                runaway.detail(),
                module=entry.module,
                version=version,
                phase="thread",
                location=self._where(file, runaway.line),
            )
            decision = self.failure_policy.decide(fault, self.clock_ns())
            self.report(f"engine: {decision.message}")
            if decision.rule.action is Action.RESTART_WITHOUT and self.on_unstoppable is not None:
                self.threads.threads.pop(entry.thread.ident or 0, None)  # said once
                self.on_unstoppable(fault, file, runaway.line or 0)
            else:
                self.threads.stop(entry)
            faults.append(fault)
        return faults

    def on_probation(self, name: str) -> bool:
        """Whether ``name``'s active version is new (or is being rolled back right now)."""
        return name in self.probation

    def rollback(self, name: str, why: str) -> int | None:
        """Mark the active version of ``name`` bad and go back to its last good version.

        Returns the version rolled back to, or None if there is none (the scheduler then
        disables the module's systems). The swap happens at the next frame boundary. The
        decision, and its message, are the failure policy's (see ``engine.policy``).
        """
        if name in self._rolling_back:
            return self._rolling_back[name]
        loaded = self.active.get(name)
        if loaded is None or loaded.version is None:
            return None
        with self._history_lock:
            unit = self.unit(name)
            unit.mark(loaded.version, VersionStatus.BAD, why)
            target = unit.last_good()
            source = (
                unit.source(target.number)
                if target is not None and target.number != loaded.version
                else None
            )
        if target is None or source is None:
            self.probation.pop(name, None)
            return None  # the scheduler disables its systems, as the policy decided
        self._rolling_back[name] = target.number
        self.prepare_later({name: source}, kind="rollback", versions={name: target.number})
        return target.number

    def move(self, name: str, direction: str) -> int:
        """Undo or redo ``name`` (``direction`` is ``"undo"`` or ``"redo"``), from any
        thread but the loader's.

        Prepares the target version (waiting for it); it goes live at the next frame
        boundary. Raises ``LookupError`` when there is nothing to move to or the target
        fails to load.
        """
        with self._history_lock:
            unit = self.unit(name)
            unit.reload()
            target = unit.undo_target() if direction == "undo" else unit.redo_target()
            if target is None:
                raise LookupError(f"{name}: nothing to {direction} (active v{unit.active_number})")
            source = unit.source(target.number)
        swaps = self.prepare({name: source}, kind=direction, versions={name: target.number})
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
        self.threads.install()
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

    def startup_source(self, name: str) -> tuple[str | LoadError, int | None] | None:
        """Which source a module starts with: ``(source, version)``, ``version`` None for
        new text (recorded when prepared), or None when the module is left out. ``source``
        is a :class:`LoadError` for a file that cannot be a module (a folder, not UTF-8,
        empty): it fails to load, with its file and line.

        The history's active version runs if the file still holds the text it last saw
        (an undo survives a restart), unless that text is a newer version that never ran
        (an edit the game stopped or died before swapping in: it runs now); a file changed
        while the game was stopped is new; a file whose text was proven bad, with nothing
        else to run, is left out until edited. A start on a version other than the file's
        is said once (see :meth:`_start_notice`).
        """
        path = self.source_path(name)
        if path is None:
            return None
        source = read_source(name, path)
        if source is None:
            return None
        if isinstance(source, LoadError):
            return source, None
        with self._history_lock:
            unit = self.unit(name)
            active = unit.active
            on_disk = unit.get(unit.disk_number) if unit.disk_number is not None else None
            unchanged = on_disk is not None and on_disk.sha256 == source_hash(source)
            if active is None and unchanged and on_disk.status is VersionStatus.BAD:
                self._start_notice(name, path, None, on_disk)
                return None
            held = self.hold is not None and self.hold(name)
            if held and active is not None and active.status in RUNNABLE:
                return unit.source(active.number), active.number  # the file waits for vetting
            if active is not None and unchanged and active.status in RUNNABLE:
                if on_disk.status is VersionStatus.PENDING and on_disk.number > active.number:
                    # An edit recorded but never swapped in (the game stopped or died
                    # first): the user's latest text runs, as it would have.
                    return source, on_disk.number
                if active.number != on_disk.number:
                    self._start_notice(name, path, active, on_disk)
                return unit.source(active.number), active.number
        return source, None

    def _say_if_shadowing(self, name: str, path: Path) -> None:
        """Say once, in one line, that a project module takes the name of a built-in system
        module (it replaces it) or of a Python module (harmless in the game, where it is
        ``systems.<name>``, but Python started in ``systems/`` imports it instead)."""
        if name in self._shadow_notices or path.parent != self.systems_dir:
            return
        self._shadow_notices.add(name)
        file = self._where(str(path), None)
        if any((d / f"{name}.py").is_file() for d in self.builtin_dirs):
            self.report(
                f"engine: {file} replaces the engine's built-in systems.{name} (every "
                f"`from systems.{name} import ...` gets yours); rename it to keep the built-in"
            )
        elif name in sys.stdlib_module_names:
            self.report(
                f"engine: {file} has the name of Python's `{name}` module: the game imports "
                f"it as systems.{name}, but Python started in systems/ gets it instead of "
                "Python's; a new name avoids that"
            )

    def _start_notice(
        self, name: str, path: Path, running: Version | None, on_disk: Version
    ) -> None:
        """Say once per module that it starts with a version other than its file's (after
        an undo, or a version the supervisor left out), and how to run the file's."""
        if not self.start_notices or name in self._start_notices:
            return
        self._start_notices.add(name)
        file = self._where(str(path), None)
        # The first clause of why it failed: the file, line and error (the rest is what
        # the engine did about it then).
        why = (on_disk.why or str(on_disk.status)).split("; ")[0]
        failed = f"v{on_disk.number}, which failed ({why})"
        if running is None:
            self.report(
                f"engine: {name}: left out; {file} on disk is {failed}: "
                "edit and save the file to try it again"
            )
            return
        if on_disk.status in RUNNABLE:
            project = _shown_path(self.project_dir)
            self.report(
                f"engine: {name}: running v{running.number} from history; {file} on disk is "
                f"v{on_disk.number} (`engine redo {project} {name}`, or edit and save the "
                "file, to run it)"
            )
        else:
            self.report(
                f"engine: {name}: running v{running.number} from history; {file} on disk is "
                f"{failed}: edit and save the file to try it again"
            )


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


def _shown_path(path: Path) -> str:
    """``path`` as a user would type it here: relative to the working folder when inside it."""
    try:
        shown = str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
    return shown if shown != "." else "."


def _import_line(importer: str) -> int | None:
    """The line of ``importer``'s module code that is importing right now."""
    name = f"{PACKAGE}.{importer}"
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__") == name:
            return frame.f_lineno
        frame = frame.f_back
    return None


def _current_line(thread_id: int, path: str) -> int | None:
    """Where thread ``thread_id`` runs in ``path`` (see
    :func:`~engine.scheduler.watchdog.innermost_loop`); None if it is not in ``path``."""
    found = innermost_loop(sys._current_frames().get(thread_id), lambda name: name == path)
    return found[1] if found is not None else None


def _fail_with_dependencies(batch: _Batch) -> None:
    """A module that got a batch module which then failed fails with it (it holds a
    reference to a module that will never go live)."""
    changed = True
    while changed:
        changed = False
        for importer, used in batch.uses.items():
            if importer in batch.errors or importer not in batch.prepared:
                continue
            failed = [d for d in used if d in batch.errors]
            if failed:
                dep = failed[0]
                batch.errors[importer] = LoadError(
                    importer,
                    str(batch.prepared.pop(importer).path),
                    used[dep],
                    f"ImportError: {PACKAGE}.{dep} failed to load: {batch.errors[dep]}",
                )
                changed = True

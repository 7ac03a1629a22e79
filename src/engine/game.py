"""The game process's composition root: world + loader + scheduler, one frame at a time.

Reads like a table of contents::

    Engine(project)
      world      — every entity and component (esper), checkpointed
      history    — every version of every module, on disk in .engine/history
      scheduler  — runs systems in order, timed, under the watchdog
      loader     — prepares new module versions off the frame, swaps them between frames
      watcher    — tells the loader (and the shader library) what changed on disk

A frame (``step``): apply prepared swaps → sample the pose → run systems (the scheduler
reports each fault to the failure policy, ``engine.policy``, and carries out its decision;
a roll-back it asks of the loader through :class:`LoaderVersions`) → promote versions that
passed probation.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.contracts.control import (
    CONTROL_SOCKET,
    ControlServer,
    ControlUnavailable,
    request,
    socket_path,
)
from engine.contracts.handoff import Phase, RunningNow
from engine.loader.history import ProjectHistory, VersionHistory
from engine.loader.loader import Loader, Source, SwapLog
from engine.loader.watcher import SHADER_SUFFIXES, ProjectWatcher
from engine.pose.base import PoseSample, PoseSource
from engine.scheduler.pacing import Clock, FixedRatePacer, MonotonicClock
from engine.scheduler.scheduler import SchedulePolicy, Scheduler, SystemFault
from engine.scheduler.stats import FrameRecorder
from engine.world.world import World

if TYPE_CHECKING:
    from engine.render.stage import RenderSettings, RenderStage
    from engine.world.ring import CheckpointRing

RUN_FILE = Path(".engine") / "run.json"
#: How long a command that must run between frames waits for the game to run one.
COMMAND_FRAME_TIMEOUT_S = 5.0


class Pacer(Protocol):
    """What the frame loop waits on: ``wait()`` returns when the next frame may start."""

    period_ns: int

    def wait(self) -> int: ...


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """The current frame, as systems see it: ``world.resources[FrameInfo]``."""

    frame: int
    dt: float
    time_ns: int
    pose: PoseSample | None


@dataclass(frozen=True)
class Command:
    """A runtime command: ``engine OP PROJECT …`` reaches a running game as a request
    ``{"op": OP, …}`` on its control socket (see :mod:`engine.contracts.control`).

    A game adds one with ``engine.commands["op"] = Command(run, args={"seconds": float})``
    (``engine`` an :class:`Engine`).

    Attributes:
        run: ``run(args) -> reply`` (``{"ok": True, …}``); raise ``LookupError`` or
            ``ValueError`` to refuse with that message.
        args: each argument's name and accepted type(s), checked before ``run``.
        between_frames: run on the main thread between frames (anything that touches the
            world, the scheduler or GL); a game that runs no frame within
            :data:`COMMAND_FRAME_TIMEOUT_S` has the command withdrawn, so it never runs
            later behind the caller's back. Otherwise ``run`` runs on the connection's own
            thread.
    """

    run: Callable[[dict[str, Any]], dict[str, Any]]
    args: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    between_frames: bool = True


def builtin_systems_dir() -> Path | None:
    """The engine's own system modules: packaged, or ``systems/`` of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "builtin_systems", here.parent.parent / "systems"):
        if candidate.is_dir():
            return candidate
    return None


def bundled_example(name: str = "spinning_cubes") -> Path:
    """A bundled example project (packaged, or ``examples/`` of a source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "examples" / name, here.parent.parent / "examples" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled example {name!r} not found")


def user_copy_of_example(name: str = "spinning_cubes") -> Path:
    """A copy of a bundled example in the user's data folder, made on first use.

    The engine writes its history into a project, and a user edits its systems, so the
    demo runs from a copy (``$XDG_DATA_HOME/all-source-engine/examples/<name>``), never
    from the installed package.
    """
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    target = base / "all-source-engine" / "examples" / name
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(
            bundled_example(name), target, ignore=shutil.ignore_patterns(".engine", "__pycache__")
        )
    return target


class LoaderVersions:
    """The scheduler's questions about versions, answered by the loader (the one place
    the two meet): whether a module is on probation, whether it has a good version to go
    back to, and rolling it back when the failure policy says so."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def on_probation(self, module: str) -> bool:
        return self.loader.on_probation(module)

    def has_good_version(self, module: str) -> bool:
        loaded = self.loader.active.get(module)
        if loaded is None or loaded.version is None:
            return False
        good = self.loader.unit(module).last_good()
        return good is not None and good.number != loaded.version

    def roll_back(self, module: str, why: str) -> bool:
        return self.loader.rollback(module, why) is not None


class Engine:
    """A running game: a project folder's systems acting on one world.

    Example:
        >>> import pathlib, tempfile
        >>> project = pathlib.Path(tempfile.mkdtemp())
        >>> (project / "systems").mkdir()
        >>> _ = (project / "systems" / "pulse.py").write_text(
        ...     "import engine\\n\\n@engine.system\\ndef pulse(world, dt):\\n    pass\\n")
        >>> eng = Engine(project, report=lambda line: None)
        >>> eng.run(frames=3, watch=False)
        >>> eng.frame, eng.history("pulse").active.number, str(eng.history("pulse").active.status)
        (3, 1, 'probation')
        >>> eng.close()

    Args:
        project_dir: a folder with ``systems/*.py`` and optionally ``game.py``.
        world: start from this world instead of a new one (``game.setup`` is skipped).
        policy: budgets and failure policy.
        clock: frame pacing clock (inject :class:`~engine.scheduler.pacing.ManualClock`
            in tests).
        pose_source: where head poses come from (None: no pose in ``FrameInfo``).
        fixed_dt: hand systems this ``dt`` every frame instead of measured time.
        pacer: what each frame waits on (default: a fixed 90 Hz rate on ``clock``; under
            the compositor, its pose handoff). Needs ``wait() -> int`` and ``period_ns``.
        running: where the engine says what runs now (the game's heartbeat block, so the
            supervisor can blame exactly that when the process dies or hangs); default: a
            private one.
        render: draw both eyes every frame (headless GL) into a layer; with no
            ``pose_source`` a simulated headset moves the head.
        layer_fd: the layer block to publish into (made by the compositor); default: the
            render stage makes its own.
        render_stage: a render stage made ahead with ``attach=False`` (a warm standby
            game process's): this engine attaches and draws with it (``render`` and
            ``layer_fd`` are then ignored).
        state_dir: where the history, the control socket and the run file are (default
            ``PROJECT/.engine``; a preview game keeps its own).
        hold: ``hold(name)`` is true for a module (or shader file, ``"basic.frag"``)
            whose version is held while edits to it are vetted elsewhere: it starts with
            its active version whatever the file holds, and saves do not reach it (see
            :mod:`engine.launcher.vetting`). Default: nothing is held.
        report: console output for swaps and errors.
        start_notices: say which modules start with a version other than their file's
            (after an undo or a leave-out); off for a restarted game, told at its first start.
    """

    def __init__(
        self,
        project_dir: str | Path,
        *,
        world: World | None = None,
        policy: SchedulePolicy | None = None,
        clock: Clock | None = None,
        pose_source: PoseSource | None = None,
        fixed_dt: float | None = None,
        rate_hz: float = 90.0,
        report: Callable[[str], None] = print,
        load_limit_s: float = 2.0,
        pacer: Pacer | None = None,
        running: RunningNow | None = None,
        render: RenderSettings | None = None,
        layer_fd: int | None = None,
        render_stage: RenderStage | None = None,
        state_dir: Path | None = None,
        hold: Callable[[str], bool] | None = None,
        start_notices: bool = True,
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        if not self.project_dir.is_dir():
            raise FileNotFoundError(f"project folder {self.project_dir} does not exist")
        self.state_dir = Path(state_dir) if state_dir else self.project_dir / ".engine"
        self.hold = hold
        self.report = report
        self.clock: Clock = clock or MonotonicClock()
        self.pacer: Pacer = pacer or FixedRatePacer(self.clock, rate_hz)
        self.pose_source = pose_source
        self.fixed_dt = fixed_dt
        self.history_store = ProjectHistory(
            self.project_dir, report=report, root=self.state_dir / "history"
        )
        self.running = running or RunningNow()
        self.running.user_dir = str(self.project_dir / "systems")
        self.scheduler = Scheduler(policy, on_hung=self._on_hung, report=report)
        self.scheduler.running_now = self.running.main
        self.policy = self.scheduler.policy
        is_new_world = world is None
        self.world = world or World()
        builtin = builtin_systems_dir()
        self.loader = Loader(
            self.project_dir,
            self.history_store,
            self.scheduler,
            self.world,
            builtin_dirs=[builtin] if builtin else [],
            load_limit_s=load_limit_s,
            report=report,
            failure_policy=self.scheduler.failure_policy,  # one policy for the whole game
        )
        self.loader.running = self.running
        self.loader.hold = hold
        self.loader.start_notices = start_notices
        self.scheduler.versions = LoaderVersions(self.loader)
        self.scheduler.root = str(self.project_dir)
        self.failure_policy = self.scheduler.failure_policy
        self.frame = 0
        self.hung_reason: str | None = None
        self._hung_reported = False
        self.setup_error: str | None = None
        #: Set to a ``FrameRecorder`` to keep every frame's per-system times (for plots).
        self.recorder: FrameRecorder | None = None
        self.watcher: ProjectWatcher | None = None
        self.control: ControlServer | None = None
        #: What ``engine undo|redo|enable …`` can ask of this game while it runs.
        self.commands: dict[str, Command] = self._builtin_commands()
        self._main_calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._last_ns: int | None = None
        #: Called after every frame with the engine (the supervisor hooks heartbeats here).
        self.after_frame: list[Callable[[Engine], None]] = []
        #: Called with ``(path, event_ns)`` when a shader file changes (render hooks in).
        self.shader_listeners: list[Callable[[Path, int], None]] = []
        #: Called between frames on the main thread, before systems run (shader swaps).
        self.before_frame: list[Callable[[Engine], None]] = []
        #: Shader swaps: the newest ones and counts of all (bounded, as ``swaps``).
        self.shader_swaps = SwapLog()
        #: The checkpoints :meth:`rewind` can go back to; set by whoever takes them (the
        #: game process's checkpointer). None: this engine keeps none.
        self.checkpoint_ring: CheckpointRing | None = None
        self.render_stage: RenderStage | None = None
        self.scheduler.watchdog.install()
        try:  # whatever fails from here on, SIGALRM and GL are given back
            if render is not None or render_stage is not None:
                self._start_rendering(render, layer_fd, render_stage)
            self.running.phase(Phase.LOAD)
            self.loader.load_all(frame=0)
            if self.render_stage is not None:
                self.loader.require("render")
            if is_new_world:
                self.running.phase(Phase.SETUP)
                self._run_setup()
            if self.render_stage is not None:
                self.running.phase(Phase.SHADER)
                self.render_stage.warm_up(self.world)
            self.running.phase(Phase.FRAME)
        except BaseException:
            self.close(delete_world=is_new_world)
            raise

    # -- set-up --------------------------------------------------------------------------
    def _start_rendering(
        self,
        settings: RenderSettings | None,
        layer_fd: int | None,
        prepared: RenderStage | None = None,
    ) -> None:
        from engine.render.stage import RenderStage

        if prepared is not None:
            prepared.attach(self.history_store, self.report, running=self.running)
            stage, settings = prepared, prepared.settings
        else:
            assert settings is not None
            stage = RenderStage(
                settings,
                self.project_dir,
                self.history_store,
                layer_fd,
                report=self.report,
                running=self.running,  # a shader that hangs the GPU is named, not render.render
            )
        self.render_stage = stage
        self.world.resources[RenderStage] = stage
        if self.pose_source is None:
            from engine.pose.simulated import SimulatedHeadset

            self.pose_source = SimulatedHeadset(fov=settings.view_fov)
        self.shader_listeners.append(stage.shaders.queue_change)
        self.shader_listeners.append(stage.renderer.queue_asset_change)  # OBJ, PNG
        self.before_frame.append(lambda eng: self._apply_shader_swaps(stage))

    def _apply_shader_swaps(self, stage: RenderStage) -> None:
        # Between frames, outside any system: a lost GL context is remade here, where the
        # watchdog cannot interrupt it half-way.
        stage.check_context()
        for swap in stage.shaders.apply_pending():
            self.shader_swaps.append(swap)

    def _run_setup(self) -> None:
        """Call ``game.py``'s ``setup(world)`` once, for a new world.

        A broken ``game.py`` (syntax error, a raise in ``setup``) is reported with its file
        and line and the game starts anyway, with whatever ``setup`` made before failing:
        the systems still load and can be fixed live.
        """
        path = self.project_dir / "game.py"
        if not path.is_file():
            return
        from engine.loader.modules import error_from_exception, make_builtins

        namespace: dict[str, Any] = {"__name__": "game", "__file__": str(path)}
        namespace["__builtins__"] = make_builtins(self.loader, "game")
        try:
            code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
            exec(code, namespace)
            setup = namespace.get("setup")
            if callable(setup):
                setup(self.world)
        except Exception as exc:
            self.setup_error = str(error_from_exception("game", path, exc))
            self.report(f"engine: game.py setup failed; starting anyway\n  {self.setup_error}")

    # -- the frame -----------------------------------------------------------------------
    def step(self) -> list[SystemFault]:
        """Run one frame now (no pacing). Returns the frame's faults, each with the
        failure policy's decision, already carried out and reported."""
        self.frame += 1
        frame = self.frame
        while not self._main_calls.empty():
            self._main_calls.get_nowait()()
        self.loader.apply_pending(frame)
        if self.before_frame:
            self.running.phase(Phase.SHADER)
            for hook in self.before_frame:
                hook(self)
            self.running.phase(Phase.FRAME)
        self.running.name_handles(self.scheduler)
        now = self.clock.now_ns()
        if self.fixed_dt is not None:
            dt = self.fixed_dt
        elif self._last_ns is None:
            dt = self.pacer.period_ns / 1e9
        else:
            dt = min((now - self._last_ns) / 1e9, self.policy.max_dt_s)
        self._last_ns = now
        pose = (
            self.pose_source.sample(frame, now + self.pacer.period_ns)
            if self.pose_source is not None
            else None
        )
        self.world.resources[FrameInfo] = FrameInfo(frame, dt, now, pose)
        faults = self.scheduler.run_frame(self.world, dt, frame)
        if self.recorder is not None:
            self.recorder.record(self.scheduler.last_frame_times())
        if self.hung_reason is not None and not self._hung_reported:
            self._hung_reported = True  # recorded by the watchdog's handler, said here
            self.report(
                f"engine: process declared hung: {self.hung_reason}; a call that keeps doing "
                "this must be stopped from outside (the supervisor kills and restarts it)"
            )
        self.loader.tick(frame)
        for hook in self.after_frame:
            hook(self)
        return faults

    def run(self, frames: int | None = None, *, watch: bool = True) -> None:
        """Run paced frames until ``frames`` have run or :meth:`stop` is called.

        With ``watch``, edits to the project are picked up while it runs.
        """
        if watch:
            self.start_watching()
        self.start_control()
        self._write_run_file()
        gate = self.loader.frame_gate
        try:
            target = None if frames is None else self.frame + frames
            while not self._stop.is_set() and (target is None or self.frame < target):
                self.running.phase(Phase.IDLE)
                self.pacer.wait()
                self.running.phase(Phase.FRAME)
                with gate.frame():  # module code being loaded waits while a frame runs
                    self.step()
        finally:
            self._remove_run_file()
            self.stop_control()
            if watch:
                self.stop_watching()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current frame (any thread)."""
        self._stop.set()

    def _on_hung(self, key: str) -> None:
        # Called from the watchdog's signal handler (or its thread): record, never report.
        self.hung_reason = f"{key} swallowed {self.policy.watchdog_max_interrupts} interrupts"

    # -- watching ------------------------------------------------------------------------
    def start_watching(self) -> None:
        if self.watcher is not None:
            return
        self.watcher = ProjectWatcher(
            self.project_dir,
            on_systems=self._on_systems_changed,
            on_shader=self._on_shader_changed,
            report=self.report,
        )
        try:
            self.watcher.start()
        except RuntimeError as exc:
            # A starved or slow machine: the game runs on; the watch thread keeps trying,
            # and edits are taken once it sees events.
            self.report(f"engine: {exc}; saves are taken once it runs")

    def stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def _on_systems_changed(self, changes: dict[str, Source], event_ns: int) -> None:
        if self.hold is not None:
            held = sorted(name for name in changes if self.hold(name))
            for name in held:
                self.report(f"engine: systems/{name}.py saved; it runs here once vetted")
            changes = {n: src for n, src in changes.items() if n not in held}
            if not changes:
                return
        self.loader.prepare_later(changes, kind="edit", event_ns=event_ns)

    def _on_shader_changed(self, path: Path, event_ns: int) -> None:
        hold = self.hold if Path(path).suffix in SHADER_SUFFIXES else None  # never assets
        if hold is not None and hold(Path(path).name):
            self.report(f"engine: shaders/{Path(path).name} saved; it runs here once vetted")
            return
        for listener in self.shader_listeners:
            listener(path, event_ns)

    # -- runtime commands (the control socket) ---------------------------------------------
    def start_control(self) -> None:
        """Listen for runtime commands on ``.engine/control.sock`` (``run`` does this).

        A socket that cannot be made is reported; the game runs on without one."""
        if self.control is not None:
            return
        server = ControlServer(self.state_dir / "control.sock", self.serve, report=self.report)
        try:
            server.start()
        except OSError as exc:
            self.report(
                f"engine: no control socket ({exc}); engine undo/redo/enable act on "
                "the history only"
            )
            return
        self.control = server

    def stop_control(self) -> None:
        if self.control is not None:
            self.control.stop()
            self.control = None

    def serve(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request (any thread): ``{"ok": …}``, never raises for a
        request that is wrong (unknown op, missing or mistyped arguments)."""
        op = request.get("op")
        command = self.commands.get(op) if isinstance(op, str) else None
        if command is None:
            known = ", ".join(sorted(self.commands))
            return {"ok": False, "error": f"unknown command {op!r} (known: {known})"}
        args: dict[str, Any] = {}
        for name, kinds in command.args.items():
            value = request.get(name)
            if not isinstance(value, kinds) or isinstance(value, bool):
                names = " or ".join(
                    k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,))
                )
                return {"ok": False, "error": f"{op} needs {name!r} ({names})"}
            args[name] = value
        try:
            if command.between_frames:
                return self._between_frames(lambda: command.run(args))
            return command.run(args)
        except (LookupError, ValueError) as exc:
            return {"ok": False, "error": exc.args[0] if exc.args else str(exc)}

    def _between_frames(self, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn`` on the main thread at the next frame boundary and return its reply;
        withdrawn if no frame starts within :data:`COMMAND_FRAME_TIMEOUT_S`."""
        future: Future = Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return  # withdrawn
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting connection
                future.set_exception(exc)

        self._main_calls.put(call)
        try:
            return future.result(timeout=COMMAND_FRAME_TIMEOUT_S)
        except FutureTimeout:
            if future.cancel():
                return {
                    "ok": False,
                    "error": f"the game ran no frame within {COMMAND_FRAME_TIMEOUT_S:g} s; "
                    "the command was withdrawn",
                }
            return future.result()  # it started meanwhile: its answer comes

    def _builtin_commands(self) -> dict[str, Command]:
        def move(direction: str) -> Command:
            def run(args: dict[str, Any]) -> dict[str, Any]:
                name = args["module"]
                if name.endswith(SHADER_SUFFIXES):  # GL work: on the main thread
                    return self._between_frames(
                        lambda: {"ok": True, "version": self._move(name, direction)}
                    )
                return {"ok": True, "version": self.loader.move(name, direction)}

            return Command(run, {"module": str}, between_frames=False)

        def enable(args: dict[str, Any]) -> dict[str, Any]:
            handle = self.scheduler.find(args["system"])
            return {"ok": True, "system": self.scheduler.enable(handle.key).key}

        def ping(args: dict[str, Any]) -> dict[str, Any]:
            return {"ok": True, "pid": os.getpid(), "frame": self.frame}

        def rewind(args: dict[str, Any]) -> dict[str, Any]:
            # "SECONDS ago" counts from when it was asked, not from when it got here.
            return {"ok": True, **self.rewind(float(args["seconds"]), args["asked_ns"])}

        return {
            "undo": move("undo"),
            "redo": move("redo"),
            "enable": Command(enable, {"system": str}),
            "rewind": Command(rewind, {"seconds": (int, float), "asked_ns": int}),
            "ping": Command(ping, between_frames=False),
        }

    # -- history and control -------------------------------------------------------------
    def history(self, module: str) -> VersionHistory:
        """The version history of a system module."""
        return self.loader.unit(module)

    def undo(self, module: str) -> int:
        """Go back to the previous runnable version of a module or shader file.

        ``module`` is a system module name (``"physics"``; live at the next frame) or a
        shader file name (``"basic.frag"``; swapped now, on the GL thread). Returns the
        version now active; raises ``LookupError`` when there is nothing to undo to.
        """
        return self._move(module, "undo")

    def redo(self, module: str) -> int:
        """Go forward to the next runnable version (see :meth:`undo`)."""
        return self._move(module, "redo")

    def _move(self, name: str, direction: str) -> int:
        if not name.endswith(SHADER_SUFFIXES):
            return self.loader.move(name, direction)
        if self.render_stage is None:
            raise LookupError(f"{name}: rendering is off, so there are no shaders to {direction}")
        shaders = self.render_stage.shaders
        swap = shaders.undo(name) if direction == "undo" else shaders.redo(name)
        if swap is None:
            raise LookupError(f"{name}: nothing to {direction}")
        self.shader_swaps.append(swap)
        if not swap.ok:
            raise LookupError(f"{name}: {swap.error}")
        return swap.versions[name]

    def enable(self, system: str) -> None:
        """Re-enable a disabled system by hand (on probation)."""
        self.scheduler.enable(self.scheduler.find(system).key)

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint(self) -> bytes:
        return self.world.checkpoint()

    def restore(self, data: bytes) -> None:
        """Replace the world's entities with a checkpoint's (classes resolved as loaded now)."""
        self.world.restore_into(data, self.loader.resolve_component)

    def rewind(self, seconds: float, asked_ns: int | None = None) -> dict[str, Any]:
        """Put back the world as it was ``seconds`` before ``asked_ns`` (default: now).

        ``asked_ns`` is a ``time.monotonic_ns()`` reading (``engine rewind`` sends when it
        was started). Call on the main thread between frames (``engine rewind`` sends it
        there). The entities, with their ids, are those of the newest checkpoint taken at
        or before that moment, built with the component classes loaded now; resources and
        code are not touched. Returns ``{"seconds": how far back it went, "frame": the
        checkpoint's frame, "entities": how many}``. Raises ``LookupError`` when no
        checkpoint is that old (or none is kept), ``ValueError`` for a negative
        ``seconds``, ``OSError`` or :class:`~engine.world.CheckpointError` for a checkpoint
        that cannot be read (the world is then left as it was).
        """
        ring = self.checkpoint_ring
        if ring is None:
            raise LookupError(
                "this game keeps no checkpoints to rewind to (they are kept by `engine run`)"
            )
        entry = ring.find(seconds, asked_ns)
        age = ring.age_s(entry, asked_ns)
        self.restore(ring.read(entry))
        entities = self.world.entity_count()
        self.report(
            f"engine: world rewound {age:.1f} s, to frame {entry.frame} ({entities} entities)"
        )
        return {"seconds": round(age, 3), "frame": entry.frame, "entities": entities}

    # -- reporting -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Everything ``engine run --stats-json`` writes."""
        snap = self.scheduler.snapshot()
        return {
            "frames": self.frame,
            "systems": snap["systems"],
            "esper_cache": snap["esper_cache"],
            "frame_ms_p50": snap["frame_ms_p50"],
            "frame_ms_p99": snap["frame_ms_p99"],
            "frames_over_budget": snap["frames_over_budget"],
            "paced_frames_skipped": self.pacer.skipped,
            "swaps": [s.to_json() for s in self.loader.swaps],
            "swap_counts": self.loader.swaps.counts(),
            "shader_swap_counts": self.shader_swaps.counts(),
            "world": {"entities": self.world.entity_count()},
            "hung": self.hung_reason,
        }

    @property
    def swaps(self) -> SwapLog:
        """Module swaps: the newest records (``swaps[-1]``) and counts of all (``total``)."""
        return self.loader.swaps

    # -- the run file (lets `engine undo` find a running game) ---------------------------
    def _write_run_file(self) -> None:
        path = self.state_dir / RUN_FILE.name
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "started": time.time(), "control": str(CONTROL_SOCKET)}
        path.write_text(json.dumps(info))

    def _remove_run_file(self) -> None:
        (self.state_dir / RUN_FILE.name).unlink(missing_ok=True)

    def close(self, delete_world: bool = True) -> None:
        """Stop watching and serving commands, stop the loader thread, give back SIGALRM and
        GL, and free the world's esper context
        (unless ``delete_world`` is false: a world the caller passed in stays theirs)."""
        self.stop_watching()
        self.stop_control()
        self.loader.close()
        if self.render_stage is not None:
            self.render_stage.close()
            self.render_stage = None
        self.scheduler.watchdog.uninstall()
        if delete_world:
            self.world.delete()


def running_pid(project_dir: Path) -> int | None:
    """The pid of a game running on ``project_dir``, if one is alive."""
    try:
        info = json.loads((Path(project_dir) / RUN_FILE).read_text())
        pid = int(info["pid"])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, KeyError):
        return None


def send_command(project_dir: Path, op: str, timeout_s: float = 10.0, **args: Any) -> dict:
    """Send a command to the game running on ``project_dir`` and return its reply.

    The reply is ``{"ok": True, …}`` or ``{"ok": False, "error": …}`` — also when no game
    listens, or none answers within ``timeout_s`` (a command the game already started may
    still take effect; the error says so).
    """
    try:
        return request(socket_path(project_dir), {"op": op, **args}, timeout_s)
    except ControlUnavailable as exc:
        return {"ok": False, "error": f"no running game answered: {exc}"}
    except TimeoutError as exc:
        return {"ok": False, "error": f"{exc}; it may still carry the command out"}


def install_stop_signals(engine: Engine) -> None:
    """SIGTERM/SIGINT stop the run loop cleanly (stats still get written)."""

    def handler(signum: int, frame: Any) -> None:
        engine.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

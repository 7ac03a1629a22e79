"""The supervisor: starts the compositor and the game, and restarts the game when it fails.

Process tree (every child started with the ``spawn`` context, never ``fork``)::

    supervisor (this process; a child subreaper)
    ├── compositor   engine.compositor.process.compositor_main — never runs user code
    ├── game         engine.launcher.game_process.game_main    — its own session; may die
    │                or hang any time; everything it starts is in its session
    └── warden       engine.launcher.containment.Warden         — kills the game's session
                     if this process dies without doing it (SIGKILL)

A game is *failed* when

* its process has exited without being asked (an exit code, ``os._exit``, a signal such as
  SIGSEGV, an outside ``kill -9``);
* it is hung: no heartbeat for ``heartbeat_timeout_s`` (a C call that never returns, code
  that swallows the watchdog's interrupts) — in the first frame, one of the project's
  systems running that long —, no first frame within ``start_timeout_s``, or other user
  code on the main thread (a hook, ``setup``) running ``code_timeout_s`` without a change
  before the first frame (a module's import runs on the loader's thread, under the
  loader's own limit);
* it stopped publishing its layer for ``publish_timeout_s`` while still beating.

**Blame.** The game writes into its heartbeat block, from its first line, which system
(module and version), hook, module import or engine phase each thread runs now. When it
fails, the supervisor reads that (and, for a crash or a hang, the Python stack faulthandler
wrote into the crash block: the file and line), describes the failure as a
:class:`~engine.policy.Fault` and asks the one failure policy (:mod:`engine.policy`) what
follows. For :attr:`~engine.policy.Action.RESTART_WITHOUT` the version named is marked
bad in the history (:func:`engine.loader.loader.leave_out`) before the next game starts,
which then runs the version before it or leaves the module out — also for versions loaded
at start-up and for faults before the first frame. The policy's crash-loop rule backs off
a fault that keeps coming back. A SIGKILL the game did not send itself (an outside
``kill -9``) blames nothing.

**Containment.** At every game end the supervisor kills the game's session and any process
re-parented to it (:mod:`engine.launcher.containment`); the children die with it if it
dies. SIGTERM, SIGINT and SIGHUP stop :meth:`Supervisor.run` cleanly, stats written.

The compositor keeps presenting through all of it; the game's layer is reprojected, then
excluded, and back as soon as the new game publishes.

Liveness is judged on the supervisor's own clock (:class:`GameWatch`), and the policy takes
time as an argument, so both are tested without sleeping.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.compositor.process import SPAWN, CompositorConfig, CompositorHandle
from engine.contracts.control import ControlServer, ControlUnavailable, request
from engine.contracts.handoff import (
    EXIT_UNSTOPPABLE,
    FIRST_NAME_ID,
    Heartbeat,
    HeartbeatReader,
    Phase,
    PoseHandoffReader,
    Running,
    RunningReport,
    create_heartbeat_fd,
)
from engine.contracts.layer import create_layer_fd
from engine.contracts.shm import PassedFd, create_block_fd, read_only_fd
from engine.launcher import containment
from engine.launcher.console import priority_words
from engine.launcher.game_process import (
    DEFAULT_RENDER,
    DUMP_SIGNAL,
    GameConfig,
    game_main,
)
from engine.launcher.vetting import DEFAULT_VET_FRAMES, Candidate, decide
from engine.loader.history import ProjectHistory, VersionHistory
from engine.loader.loader import KIND, leave_out
from engine.loader.watcher import SHADER_SUFFIXES
from engine.policy import Action, Decision, FailurePolicy, Fault, FaultKind
from engine.scheduler.watchdog import loop_line_in_file

S = 1_000_000_000  # nanoseconds per second
#: How long a preview waits for the live game's fresh checkpoint before it takes the newest.
PREVIEW_SNAPSHOT_WAIT_S = 2.0
#: How long a hung game is given to write its stacks (DUMP_SIGNAL) before SIGKILL.
DUMP_WAIT_S = 0.25


def describe_exit(exitcode: int) -> str:
    """``"exit 3"`` or ``"signal SIGSEGV"`` for a ``multiprocessing`` exit code."""
    if exitcode == EXIT_UNSTOPPABLE:
        return f"exit {exitcode}: it ended itself, a thread of its code would not stop"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit {exitcode}"


class GameWatch:
    """Whether one game process is alive and producing, judged from its heartbeat.

    ``observe(beat, now_ns, running_id)`` returns a fault description (``"hung: ..."`` or
    ``"not publishing: ..."``), or ``None`` while all is well. Times are the supervisor's:
    when a new frame number (or running-now id) was first seen, not what the game wrote,
    so a game with a broken clock cannot look alive.

    Before the first frame, the game may take ``start_timeout_ns`` in all; but user code
    (an id naming code, or ``setup``) that keeps running for ``code_timeout_ns`` without
    the running-now word changing is a hang of its own, blamed on that code. A project's
    *system* (``describe`` says so) is running a frame — the first one — not loading: the
    same system stuck for ``heartbeat_timeout_ns`` is hung, as it would be after the first
    frame (interrupts swallowed in frame 1 are noticed in half a second, not 30). A game that
    is stopping (:attr:`Phase.STOP`: its final checkpoint and stats, after a SIGTERM it
    sent itself) has ``stop_timeout_ns`` to exit before it counts as hung.
    """

    def __init__(
        self,
        started_ns: int,
        *,
        start_timeout_ns: int,
        heartbeat_timeout_ns: int,
        publish_timeout_ns: int,
        code_timeout_ns: int | None = None,
        stop_timeout_ns: int = 5 * S,
    ) -> None:
        self.started_ns = started_ns
        self.stop_timeout_ns = stop_timeout_ns
        self.start_timeout_ns = start_timeout_ns
        self.heartbeat_timeout_ns = heartbeat_timeout_ns
        self.publish_timeout_ns = publish_timeout_ns
        self.code_timeout_ns = code_timeout_ns
        self.last: Heartbeat | None = None
        self.beat_seen_ns = started_ns
        self.published_seen_ns = started_ns
        self.first_frame_ns: int | None = None
        self.running_id = 0
        self.running_since_ns = started_ns
        self.running_system = False  # the running-now word names a system (a frame runs)

    def observe(
        self,
        beat: Heartbeat | None,
        now_ns: int,
        running_id: int | None = None,
        describe: Callable[[int], Running | None] | None = None,
    ) -> str | None:
        """A fault description, or ``None``. ``running_id`` is the main thread's
        running-now word; ``describe`` (the heartbeat reader's) says what an id names,
        looked up only when the word changes."""
        if beat is not None and (self.last is None or beat.frame != self.last.frame):
            if self.first_frame_ns is None:
                self.first_frame_ns = now_ns
                self.published_seen_ns = now_ns
            self.beat_seen_ns = now_ns
            if self.last is None or beat.published_frame != self.last.published_frame:
                self.published_seen_ns = now_ns
            self.last = beat
        if running_id is not None and running_id != self.running_id:
            self.running_id, self.running_since_ns = running_id, now_ns
            named = describe(running_id) if describe and running_id >= FIRST_NAME_ID else None
            # The engine's own systems (render) keep the code timeout: a first draw may
            # take a while on a software renderer.
            self.running_system = named is not None and named.phase == "system" and named.user
        if self.first_frame_ns is None:
            if now_ns - self.started_ns > self.start_timeout_ns:
                return f"hung: no first frame within {self.start_timeout_ns / S:g} s"
            names_code = self.running_id >= FIRST_NAME_ID or self.running_id == Phase.SETUP
            stuck = now_ns - self.running_since_ns
            if self.running_system and stuck > self.heartbeat_timeout_ns:
                return f"hung: ran {stuck / 1e6:.0f} ms in the first frame, no heartbeat"
            if names_code and self.code_timeout_ns is not None and stuck > self.code_timeout_ns:
                return f"hung: ran {stuck / S:.1f} s before the first frame"
            return None
        silent = now_ns - self.beat_seen_ns
        if self.running_id == Phase.STOP:
            if now_ns - self.running_since_ns > self.stop_timeout_ns:
                return f"hung: stopping for {self.stop_timeout_ns / S:g} s"
            return None
        if silent > self.heartbeat_timeout_ns:
            return f"hung: no heartbeat for {silent / 1e6:.0f} ms"
        if now_ns - self.published_seen_ns > self.publish_timeout_ns:
            return f"not publishing: no layer image for {self.publish_timeout_ns / S:g} s"
        return None


# --- blame ------------------------------------------------------------------------------

_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-f]+) \(most recent call first\):")
_FRAME = re.compile(r'^  File "(.*)", line (\d+) in ')


def parse_dump(text: str) -> dict[int, list[tuple[str, int]]]:
    """faulthandler's output as ``{thread ident: [(file, line), innermost first]}``; the
    thread that crashed or took the dump signal is also under key 0."""
    threads: dict[int, list[tuple[str, int]]] = {}
    frames: list[tuple[str, int]] | None = None
    for line in text.splitlines():
        m = _THREAD.match(line)
        if m:
            frames = []
            threads[int(m.group(2), 16)] = frames
            if m.group(1) == "Current thread":
                threads[0] = frames
            continue
        m = _FRAME.match(line)
        if m and frames is not None:
            frames.append((m.group(1), int(m.group(2))))
    return threads


def blame(
    project_dir: Path,
    kind: FaultKind,
    detail: str,
    report: RunningReport,
    dump: str,
    exitcode: int | None,
    game_source: str | None = None,
) -> Fault:
    """Describe a failed game as a :class:`Fault`: what ran (from the heartbeat block's
    running-now words) and where (file and line from faulthandler's ``dump``, else where
    that code is defined). ``game_source``: ``game.py``'s text as the game started.

    * A death by a signal the game sent itself, or an end it asked for (a self-sent
      SIGTERM, an exception escaping the frame loop), is blamed on what ran *then*.
    * Another SIGKILL came from outside (``kill -9``): nothing is blamed.
    * A crash is blamed on the thread that crashed (faulthandler names it): the main
      thread's word, or the loader thread's.
    * A hang is blamed on the main thread's word. A shader stage the GPU was running
      (a hang inside the driver) is placed at its file and first loop, not at the engine
      line that waited for the GPU.
    """
    threads = parse_dump(dump)
    signum = -exitcode if exitcode is not None and exitcode < 0 else 0
    running = report.main
    stack = threads.get(report.main_thread, [])
    from_outside = False
    asked = report.exit_from is not None and (
        (signum and report.exit_signal == signum)
        or (not signum and report.exit_signal in (0, signal.SIGTERM))
    )
    stopping = kind is FaultKind.HUNG and running is not None and running.phase == "stop"
    if (kind is FaultKind.PROCESS_DIED and asked) or (stopping and report.exit_from):
        running, stack = report.exit_from, []
    elif kind is FaultKind.PROCESS_DIED and signum == signal.SIGKILL:
        from_outside = True
    elif kind is FaultKind.PROCESS_DIED and signum and 0 in threads:
        stack = threads[0]
        crashed = next((i for i, f in threads.items() if i and f is stack), 0)
        if crashed and crashed == report.other_thread and report.other is not None:
            running = report.other
    running = running or Running(Phase.IMPORT.text)
    hung = kind is FaultKind.HUNG
    ran = _sources_that_ran(project_dir, running, game_source) if hung else None
    location = _location(project_dir, stack, hung, ran) or _defined_at(project_dir, running)
    if running.phase == "shader":
        location = _defined_at(project_dir, running) or location
        if running.line:
            detail += ", the GPU drawing with this shader (the line is its first loop)"
    if from_outside:
        detail += ", sent from outside the game: not blamed"
    user = running.user and not from_outside
    phase = "system" if running.phase == "system" else running.phase
    if from_outside and phase == Phase.SETUP.text:
        phase = "process"  # setup did nothing wrong: it is not waited on (policy)
    system = running.system if running.phase != "load" else None
    return Fault(
        kind,
        detail,
        module=running.module if user else None,
        version=running.version if user else None,
        system=system,
        phase=phase,
        location=location,
    )


def blamed_unit(project_dir: Path, fault: Fault, root: Path | None = None) -> VersionHistory:
    """The history unit of the code ``fault`` names (``fault.module`` set): a shader
    file's for a shader, else a system module's; in the history at ``root`` (default
    the project's; a preview's is a copy of its own)."""
    history = ProjectHistory(project_dir, root=root)
    assert fault.module is not None
    if fault.phase == "shader":
        return history.unit("shaders", fault.module, suffix=Path(fault.module).suffix)
    return history.unit(KIND, fault.module)


def _signature(path: Path) -> tuple[int, int] | None:
    """What tells a saved file from the one before: its modification time and size."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _relative(project_dir: Path, file: str) -> str:
    try:
        return str(Path(file).relative_to(project_dir))
    except ValueError:
        return file


def _location(
    project_dir: Path,
    stack: list[tuple[str, int]],
    hung: bool = False,
    sources: dict[str, str] | None = None,
) -> str | None:
    """The innermost frame in the project's files, else the innermost frame.

    For a hang whose innermost frame is the project's own code, in a loop: the loop's
    header (:func:`~engine.scheduler.watchdog.loop_line_in_file`). The dump catches
    whichever line of the loop ran at that instant; the loop is what never ended. The
    header is read from the text that ran where ``sources`` (path -> text) has it: the
    user may have saved the fix by the time the hang is declared."""
    if not stack:
        return None
    root = str(project_dir) + os.sep
    file, line = next(((f, n) for f, n in stack if f.startswith(root)), stack[0])
    if hung and (file, line) == stack[0] and file.startswith(root):
        line = loop_line_in_file(file, line, (sources or {}).get(file)) or line
    return f"{_relative(project_dir, file)}:{line}"


def _sources_that_ran(
    project_dir: Path, running: Running, game_source: str | None
) -> dict[str, str]:
    """The texts that ran, by path, as far as they are known: ``game.py`` as the game
    started, and the version of the system module the running-now word names (from the
    history: every version's text is kept)."""
    sources = {}
    if game_source is not None:
        sources[str(project_dir / "game.py")] = game_source
    r = running
    if r.user and r.module and r.file and r.version is not None and r.phase != "shader":
        try:
            sources[r.file] = ProjectHistory(project_dir).unit(KIND, r.module).source(r.version)
        except (LookupError, OSError, ValueError):
            pass  # not in the history: the file as it is now
    return sources


def _defined_at(project_dir: Path, running: Running) -> str | None:
    if running.file:
        return f"{_relative(project_dir, running.file)}:{running.line}"
    if running.phase == Phase.SETUP.text:
        return "game.py"
    return None


# --- records ----------------------------------------------------------------------------


@dataclass
class RestartRecord:
    """One game failure and what the supervisor did about it (times in ms)."""

    cause: str
    at_s: float  # since the supervisor started
    pid: int | None
    frames_before: int
    kind: str = ""  # the fault's kind (engine.policy.FaultKind)
    action: str = ""  # what the policy decided (engine.policy.Action)
    blamed: str | None = None  # "module vN" marked bad, if any
    location: str | None = None  # file:line, where known
    message: str = ""  # the one line reported
    backoff_ms: float = 0.0
    first_frame_ms: float | None = None  # from detection to the new game's first frame
    new_pid: int | None = None
    from_standby: bool = False  # the new game was the warm standby (else started cold)


@dataclass
class _Game:
    """One game process the supervisor started: the live game, or a warm standby waiting
    on ``go_fd`` (the write end of its go pipe; ``None`` once told to go)."""

    process: Any
    heartbeat_fd: int
    heartbeat: HeartbeatReader
    crash_fd: int
    watch: GameWatch
    role: str = "live"
    go_fd: int | None = None
    spawned_ns: int = 0
    ready_ns: int | None = None  # when its heartbeat first said STANDBY


@dataclass
class StandbyStats:
    """The warm standby game process: how often it was made, used and lost (times in ms)."""

    enabled: bool = True
    spawned: int = 0
    promoted: int = 0  # restarts that took the standby instead of starting a game
    failures: int = 0  # standbys that died or hung before they were needed
    given_up: str | None = None  # why no standby is kept any more
    ready_ms: list[float] = field(default_factory=list)  # spawn -> ready, each standby


class Supervisor:
    """Runs a project under the compositor and keeps its game process alive.

    Example:
        >>> stats = Supervisor("examples/spinning_cubes").run(seconds=5)   # doctest: +SKIP
        >>> stats["compositor"]["missed"], stats["restarts"]               # doctest: +SKIP

    Args:
        project_dir: a folder with ``systems/*.py`` (and optionally ``game.py``).
        state_dir: where the checkpoint lives (default ``PROJECT/.engine``).
        resume: start from an existing checkpoint (default: a fresh world; the old
            checkpoint is removed).
        render: the game's render factory, ``"module:attribute"`` (see ``game_process``).
        compositor: display rate, sizes, deadline, grace, capture, window, priority.
        heartbeat_timeout_s / start_timeout_s / publish_timeout_s / code_timeout_s: when a
            game is failed (see :class:`GameWatch`).
        compositor_hang_s: a compositor alive but presenting no frame this long is hung:
            it is killed and restarted like one that died (the policy's
            ``compositor-hung``).
        checkpoint_interval_s: how often the game checkpoints (at least).
        probation_frames: the scheduler's probation length in the game (``None``: default).
        memory_limit: the most private memory the game may commit, in bytes; ``None``:
            half of this machine's (or its cgroup's) memory; 0: no limit.
        watch: the game watches the project for edits. console: the game shows its live
            systems table. plot_path: the game plots per-system frame times when it stops.
        standby: keep a warm standby game process (interpreter, imports, GL context, layer
            mapping and shader programs made; see ``game_process.game_main``), so that a
            restart is: tell it to go, it restores the checkpoint and loads the modules.
            A new standby is started ``standby_delay_s`` after each game's first frame
            (not during a start, when the CPU is busiest). ``False``: restarts start cold.
        vet: ``None``: saves go straight into the live game (on probation). ``"manual"``:
            they go into a preview game on a copy of the world instead, until
            :meth:`promote` (or :meth:`discard`); ``"auto"``: the supervisor promotes a
            candidate that ran ``vet_frames`` frames clean and rejects one that faulted
            or was late (see :mod:`engine.launcher.vetting`). A preview can be started
            without ``vet`` too (:meth:`start_preview`).
        policy: the failure policy (its crash-loop settings). report: where messages go.
        clock: ``now_ns``.

    Raises ``FileNotFoundError`` for a missing project folder.
    """

    def __init__(
        self,
        project_dir: str | Path,
        *,
        state_dir: str | Path | None = None,
        resume: bool = False,
        render: str = DEFAULT_RENDER,
        compositor: CompositorConfig | None = None,
        heartbeat_timeout_s: float = 0.5,
        start_timeout_s: float = 30.0,
        publish_timeout_s: float = 0.5,
        code_timeout_s: float = 10.0,
        compositor_hang_s: float = 3.0,
        checkpoint_interval_s: float = 1.0,
        probation_frames: int | None = None,
        memory_limit: int | None = None,
        watch: bool = True,
        console: bool = False,
        plot_path: str | Path | None = None,
        standby: bool = True,
        standby_delay_s: float = 1.0,
        vet: str | None = None,
        vet_frames: int = DEFAULT_VET_FRAMES,
        policy: FailurePolicy | None = None,
        report: Callable[[str], None] = print,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        if not self.project_dir.is_dir():
            raise FileNotFoundError(f"project folder {self.project_dir} does not exist")
        self.state_dir = Path(state_dir) if state_dir else self.project_dir / ".engine"
        self.checkpoint_path = self.state_dir / "checkpoint.bin"
        self.game_stats_path = self.state_dir / "game-stats.json"
        self.crash_path = self.state_dir / "last-crash.txt"
        self.resume = resume
        self.compositor_config = compositor or CompositorConfig()
        if memory_limit is None:
            memory_limit = containment.default_memory_limit()
        if vet not in (None, "manual", "auto"):
            raise ValueError(f"vet must be None, 'manual' or 'auto', not {vet!r}")
        self.vet = vet
        self.vet_frames = vet_frames
        self.game_config = GameConfig(
            vet=vet is not None,
            project_dir=str(self.project_dir),
            checkpoint_path=str(self.checkpoint_path),
            render=render,
            checkpoint_interval_s=checkpoint_interval_s,
            probation_frames=probation_frames,
            memory_limit=memory_limit or None,
            watch=watch,
            stats_path=str(self.game_stats_path),
            console=console,
            plot_path=str(plot_path) if plot_path else None,
        )
        self.heartbeat_timeout_ns = round(heartbeat_timeout_s * S)
        self.start_timeout_ns = round(start_timeout_s * S)
        self.publish_timeout_ns = round(publish_timeout_s * S)
        self.code_timeout_ns = round(code_timeout_s * S)
        self.compositor_hang_ns = round(compositor_hang_s * S)
        self._game_file = self.project_dir / "game.py"
        self._game_file_seen: tuple[int, int] | None = None  # as the live game started
        self._game_source: str | None = None  # game.py's text then (see blame)
        #: No game until game.py differs from what the failed one started with (the
        #: policy's wait-for-edit).
        self._waiting_for_edit = False
        self._compositor_seen = (-1, 0)  # (frame, when it was first seen)
        self.policy = policy or FailurePolicy()
        self.report = report
        self.clock = clock
        self.restarts: list[RestartRecord] = []
        self.crash_loop: str | None = None
        self.compositor: CompositorHandle | None = None
        self.compositor_stats: dict[str, Any] = {}
        self.compositor_failure: str | None = None
        self.compositor_restarts: list[dict[str, Any]] = []
        self._compositor_frames_before = 0  # frames presented by compositors that died
        self._compositor_frame_now = 0  # the running compositor's newest frame
        self._compositor_policy = FailurePolicy(self.policy.settings)
        self.game_engine_stats: dict[str, Any] | None = None  # the last game's Engine.stats()
        self.game: _Game | None = None
        self.standby: _Game | None = None
        self.standby_stats = StandbyStats(enabled=standby)
        self.standby_delay_ns = round(standby_delay_s * S)
        self._standby_failures_in_a_row = 0
        self._stopping = False
        self.preview: _Game | None = None
        self.preview_dir = self.state_dir / "preview"
        self.preview_stats: dict[str, Any] = {
            "started": 0,
            "faults": [],
            "verdicts": [],
            "promoted": {},
            "diff": None,
        }
        self._requests: ThreadPoolExecutor | None = None  # control requests, off the loop
        self._vet_future: Future | None = None
        # A preview asked for, waiting for the live game's fresh checkpoint:
        # (modules, when asked, the request's future).
        self._preview_wanted: tuple[list[str] | None, int, Future] | None = None
        self._vet_asked_ns = 0
        self._preview_diffed = False
        self._decided: set[tuple[str, str]] = set()  # (module, sha256) judged already
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._control: ControlServer | None = None
        self._watcher: Any = None
        self._candidates_saved = False
        self._private_layers: list[int] = []
        self._loop_thread = threading.get_ident()  # the supervising thread (start() sets it)
        self.game_frames = 0  # frames of finished game processes, plus the current one's
        self._frames_before = 0
        self.game_checkpoints = 0  # likewise, checkpoints taken
        self._checkpoints_before = 0
        self._checkpoint_bytes = 0
        self._restart_at: int | None = None
        self._detected_ns = 0  # when the newest failure was detected
        self._pose_fd: int | None = None
        self._pose_reader: PoseHandoffReader | None = None
        self._input_fd: int | None = None  # the input block: compositor writes, game reads
        self._status_fd: int | None = None  # the status block: the live game writes
        self._started_ns = 0
        self._checkpoint_ms_max = 0.0
        self._warden: containment.Warden | None = None
        self._subreaper = False
        self._stop_requested = False
        #: Processes killed because a game started them and they outlived it.
        self.leftovers_killed = 0

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the compositor, then the game. Raises ``RuntimeError`` if the compositor
        cannot start."""
        self._started_ns = self.clock()
        self._stopping = False
        self._loop_thread = threading.get_ident()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.game_stats_path.unlink(missing_ok=True)
        if not self.resume:
            self.checkpoint_path.unlink(missing_ok=True)
        self._subreaper = containment.become_subreaper()
        self._warden = containment.Warden()
        try:
            self._start_compositor()
            self._start_game(restarted=False)
            self._start_commands()
        except BaseException:
            self.stop()
            raise

    def _start_commands(self) -> None:
        """The supervisor's socket (``engine preview|promote|discard``) and, under ``vet``,
        a watcher that starts a preview when a module or shader is saved."""
        server = ControlServer(self.state_dir / "supervisor.sock", self._serve, report=self.report)
        try:
            server.start()
            self._control = server
        except OSError as exc:
            self.report(f"supervisor: no command socket ({exc}); engine preview is unavailable")
        if self.vet is not None:
            from engine.loader.watcher import ProjectWatcher

            self._watcher = ProjectWatcher(
                self.project_dir, on_systems=self._on_saved, on_shader=self._on_saved,
                report=self.report,
            )  # fmt: skip
            self._watcher.start()

    def _start_compositor(self) -> None:
        self._compositor_seen = (-1, 0)  # its frames are watched from its first poll
        self._pose_fd = create_block_fd("pose-handoff")
        self._pose_reader = PoseHandoffReader(self._pose_fd)
        self._input_fd = create_block_fd("input")
        self._status_fd = create_block_fd("status")  # the live game's systems, for the HUD
        status_for_compositor = read_only_fd(self._status_fd)
        try:
            self.compositor = CompositorHandle.start(
                self.compositor_config,
                self._pose_fd,
                input_fd=self._input_fd,
                status_fd=status_for_compositor,
            )
        finally:
            os.close(status_for_compositor)
        self.report(
            "supervisor: compositor up, priority "
            f"{priority_words(self.compositor.ready['priority'])}, "
            f"{self.compositor.ready['gl']}; layer images "
            f"in {', '.join(self.compositor.ready.get('layer_images', [])) or 'shared memory'}"
        )

    def _close_compositor(self) -> None:
        """Release a compositor that is gone (or stop one that is not) and its pose block."""
        if self.compositor is not None:
            if self.compositor.alive():
                self.compositor_stats = self.compositor.stop()
            else:
                self.compositor.kill()
            self.compositor = None
        if self._pose_reader is not None:
            self._pose_reader.close()
            self._pose_reader = None
        if self._pose_fd is not None:
            os.close(self._pose_fd)
            self._pose_fd = None
        if self._input_fd is not None:
            os.close(self._input_fd)
            self._input_fd = None
        if self._status_fd is not None:
            os.close(self._status_fd)
            self._status_fd = None

    def _compositor_hung(self, now: int) -> str | None:
        """Why the compositor counts as hung (alive, but no new frame for
        ``compositor_hang_s``), or None. Frames are read from its pose block, so a
        supervisor that was itself held up sees the frames it missed, not a hang."""
        frame = self.compositor_frame
        seen, since = self._compositor_seen
        if frame != seen:
            self._compositor_seen = (frame, now)
            return None
        if now - since < self.compositor_hang_ns:
            return None
        return f"no frame presented for {(now - since) / S:.1f} s, at frame {frame}"

    def _on_compositor_death(self, now: int, hung: str | None = None) -> None:
        """The compositor must never die; if it does anyway, bring the tree back.

        The game is stopped cleanly (it writes a final checkpoint: it did nothing wrong, so
        nothing is blamed), a new compositor starts with new layer and pose blocks, and the
        game starts again from that checkpoint. A compositor that keeps dying (the policy's
        crash-loop rule) is given up on: ``compositor_failure`` says why. ``hung``: it is
        alive but presents nothing (why); it is killed first.
        """
        if hung is not None:
            if self.compositor is not None:
                self.compositor.kill()
            cause = f"compositor hung ({hung})"
        else:
            code = self.compositor.process.exitcode if self.compositor else None
            cause = f"compositor died ({describe_exit(code) if code is not None else 'unknown'})"
        self.compositor_restarts.append({"cause": cause, "at_s": (now - self._started_ns) / S})
        self._compositor_frames_before = self.compositor_frame
        self._compositor_frame_now = 0
        self._dismiss_standby()  # its blocks are the old compositor's
        self.end_preview("the compositor restarted")
        if self.game is not None:
            self._end_game(self.game)
        self._close_compositor()
        kind = FaultKind.COMPOSITOR_HUNG if hung is not None else FaultKind.COMPOSITOR_DIED
        fault = Fault(kind, hung or cause.removeprefix("compositor died "))
        decision = self._compositor_policy.decide(fault, now)
        if decision.action is Action.BACK_OFF:
            self.compositor_failure = f"{cause}; it keeps dying, giving up ({decision.message})"
            self.report(f"supervisor: {self.compositor_failure}")
            return
        self.report(f"supervisor: {cause}; restarting it and the game from its checkpoint")
        self._start_compositor()
        self._start_game(restarted=False)

    def _start_game(self, restarted: bool) -> None:
        """Make the live game: the warm standby if there is one (told to go), else a new
        process started cold."""
        assert self.compositor is not None
        # Counts go on across games (a failure, a compositor restart): a new game's
        # heartbeat starts again from frame 0.
        self._frames_before = self.game_frames
        self._checkpoints_before = self.game_checkpoints
        self.game_stats_path.unlink(missing_ok=True)  # what stop() reads is this game's
        self._game_file_seen = _signature(self._game_file)
        try:  # what a hang's location is read from (it may be saved again meanwhile)
            self._game_source = self._game_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            self._game_source = None
        game = self._take_standby(restarted)
        from_standby = game is not None
        if game is None:
            config = GameConfig(**{**asdict(self.game_config), "restarted": restarted})
            game = self._spawn(config, role="live")
        self.game = game
        self._restart_at = None
        if self.restarts:
            self.restarts[-1].new_pid = game.process.pid
            self.restarts[-1].from_standby = from_standby

    def _spawn(self, config: GameConfig, role: str) -> _Game:
        """Start a game process for ``role``: ``"live"`` runs at once, ``"standby"`` warms
        up and waits for its go (see :meth:`_take_standby`)."""
        assert self.compositor is not None and self._pose_fd is not None
        assert self._input_fd is not None
        config = replace(config, protect=self._protected(role))
        heartbeat_fd = create_heartbeat_fd()
        crash_fd = os.memfd_create("crash", os.MFD_CLOEXEC)  # faulthandler appends here
        game_pose_fd = read_only_fd(self._pose_fd)  # a game can never write the poses
        game_input_fd = read_only_fd(self._input_fd)  # nor the input
        layer_fd, spec, gpu_images = self._layer_for(role)
        kwargs: dict[str, Any] = {"input_fd": PassedFd(game_input_fd)}
        if role != "preview" and self._status_fd is not None:
            kwargs["status_fd"] = PassedFd(self._status_fd)  # the HUD shows the live game's
        go_read = go_write = None
        if role == "standby":
            go_read, go_write = os.pipe2(os.O_CLOEXEC)
            kwargs["go_fd"] = PassedFd(go_read)
        process = SPAWN.Process(
            target=game_main,
            args=(
                config,
                PassedFd(game_pose_fd),
                PassedFd(heartbeat_fd),
                PassedFd(layer_fd),
                PassedFd(crash_fd),
                spec,
                gpu_images,
            ),
            kwargs=kwargs,
            name=f"engine-game-{role}",
            daemon=True,
        )
        try:
            process.start()
        finally:
            os.close(game_pose_fd)
            os.close(game_input_fd)
            if go_read is not None:
                os.close(go_read)
        if self._warden is not None:
            self._warden.watch(process.pid)  # its session, once it has called setsid
        now = self.clock()
        return _Game(
            process,
            heartbeat_fd,
            HeartbeatReader(heartbeat_fd),
            crash_fd,
            self._new_watch(now),
            role=role,
            go_fd=go_write,
            spawned_ns=now,
        )

    def _protected(self, role: str) -> tuple[int, ...]:
        """The processes a game of ``role`` must not reach (besides this one, its parent):
        the compositor and the warden; for a standby, the live game it stands by for; for
        a preview, the live game and the standby (which becomes the live game if the live
        one fails while the preview runs). A process started later is not in the list:
        the fence is fixed when the game starts."""
        pids = [self.compositor.process.pid] if self.compositor is not None else []
        if self._warden is not None:
            pids.append(self._warden.pid)
        if role in ("preview", "standby") and self.game is not None:
            pids.append(self.game.process.pid)
        if role == "preview" and self.standby is not None:
            pids.append(self.standby.process.pid)
        return tuple(pids)

    def _layer_for(self, role: str) -> tuple[int, Any, Any]:
        """The layer a game of ``role`` publishes into: ``(fd, spec, GPU images offer)``.

        The live game and the standby share the game layer (the same GPU images for every
        game: a restarted one imports them again); a preview gets the compositor's
        preview layer, shown beside the live scene, or (a compositor without one) a
        private block of its own that nothing shows."""
        assert self.compositor is not None
        if role != "preview":
            fd, spec = self.compositor.layers[0]
            return fd, spec, self.compositor.gpu_images_for_child(0)
        if self.compositor.preview_layer is not None:
            fd, spec = self.compositor.preview_layer
            return fd, spec, self.compositor.gpu_images_for_child(self.compositor.preview_index)
        spec = self.compositor.layers[0][1]
        fd = create_layer_fd(spec, "preview")
        self._private_layers.append(fd)
        return fd, spec, None

    def _new_watch(self, now: int) -> GameWatch:
        return GameWatch(
            now,
            start_timeout_ns=self.start_timeout_ns,
            heartbeat_timeout_ns=self.heartbeat_timeout_ns,
            publish_timeout_ns=self.publish_timeout_ns,
            code_timeout_ns=self.code_timeout_ns,
        )

    # -- the warm standby ----------------------------------------------------------------
    def _take_standby(self, restarted: bool) -> _Game | None:
        """The standby, told to go and watched as a starting game from now; ``None`` if
        there is none alive. One still warming up is taken too: it reads its go when ready,
        which is still sooner than a process started now."""
        standby, self.standby = self.standby, None
        if standby is None:
            return None
        if standby.process.exitcode is not None or standby.go_fd is None:
            self._end_standby(standby, failed=True)
            return None
        order = (json.dumps({"restarted": restarted}) + "\n").encode()
        try:
            os.write(standby.go_fd, order)
        except OSError:
            self._end_standby(standby, failed=True)
            return None
        os.close(standby.go_fd)
        standby.go_fd = None
        standby.role = "live"
        standby.watch = self._new_watch(self.clock())
        self.standby_stats.promoted += 1
        return standby

    def _keep_standby(self, now: int) -> None:
        """Start a standby when due (the live game has run ``standby_delay_s`` past its
        first frame), and replace one that died or hung while it waited."""
        stats = self.standby_stats
        if not stats.enabled or stats.given_up is not None or self.compositor is None:
            return
        if self._stopping or self._stop_requested:
            return
        standby = self.standby
        if standby is None:
            game = self.game
            first = game.watch.first_frame_ns if game is not None else None
            if first is not None and now - first >= self.standby_delay_ns:
                config = GameConfig(**{**asdict(self.game_config), "restarted": True})
                self.standby = self._spawn(config, role="standby")
                stats.spawned += 1
            return
        if standby.ready_ns is None:
            if standby.heartbeat.running_main_id() == Phase.STANDBY:
                standby.ready_ns = now
                stats.ready_ms.append((now - standby.spawned_ns) / 1e6)
                self._standby_failures_in_a_row = 0
            elif now - standby.spawned_ns > self.start_timeout_ns:
                self._standby_failed(standby, f"not ready within {self.start_timeout_ns / S:g} s")
                return
        if standby.process.exitcode is not None:
            self._standby_failed(standby, describe_exit(standby.process.exitcode))

    def _standby_failed(self, standby: _Game, why: str) -> None:
        self.standby = None
        self._end_standby(standby, failed=True)
        self._standby_failures_in_a_row += 1
        if self._standby_failures_in_a_row >= 3:
            self.standby_stats.given_up = f"the standby game failed 3 times in a row ({why})"
            self.report(f"supervisor: {self.standby_stats.given_up}; restarts start cold")

    def _games(self) -> list[_Game]:
        """Every game process running now, whatever its role."""
        return [g for g in (self.game, self.standby, self.preview) if g is not None]

    def _dismiss_standby(self) -> None:
        standby, self.standby = self.standby, None
        if standby is not None:
            self._end_standby(standby)

    def _end_standby(self, standby: _Game, failed: bool = False) -> None:
        """Dismiss a standby (end of file on its go pipe ends it quietly), then make sure."""
        if failed:
            self.standby_stats.failures += 1
        if standby.go_fd is not None:
            os.close(standby.go_fd)
            standby.go_fd = None
        self._stop(standby, wait_s=0.5, terminate=False)

    def poll(self) -> None:
        """One supervision step: check the compositor and the game, restart if due."""
        now = self.clock()
        if self.compositor is not None and not self.compositor.alive():
            self._on_compositor_death(now)
            return
        hung = self._compositor_hung(now) if self.compositor is not None else None
        if hung is not None:
            self._on_compositor_death(now, hung)
            return
        self._keep_standby(now)
        self._serve_calls()
        self._watch_preview(now)
        game = self.game
        if game is None:
            if self._waiting_for_edit:
                if _signature(self._game_file) != self._game_file_seen:  # saved
                    self._waiting_for_edit = False
                    self.report("supervisor: game.py saved; starting the game again")
                    self._start_game(restarted=True)
            elif self._restart_at is not None and now >= self._restart_at:
                self._start_game(restarted=True)
            return
        beat = game.heartbeat.read()
        if beat is not None and beat.pid == game.process.pid:
            self.game_frames = self._frames_before + beat.frame
            self._checkpoint_ms_max = max(self._checkpoint_ms_max, beat.checkpoint_ns / 1e6)
            self._checkpoint_bytes = max(self._checkpoint_bytes, beat.checkpoint_bytes)
            self.game_checkpoints = self._checkpoints_before + beat.checkpoints
        else:
            beat = None
        kind, cause = self._observe(game, beat, now)
        record = self.restarts[-1] if self.restarts else None
        if record and record.first_frame_ms is None and game.watch.first_frame_ns is not None:
            record.first_frame_ms = (game.watch.first_frame_ns - self._detected_ns) / 1e6
            self.report(
                f"supervisor: game back (pid {game.process.pid}"
                f"{', the warm standby' if record.from_standby else ''}), first frame "
                f"{record.first_frame_ms:.0f} ms after the failure was detected"
            )
        if kind is not None and cause is not None:
            self._on_failure(kind, cause, now)

    def _on_failure(self, kind: FaultKind, cause: str, now: int) -> None:
        """Stop the failed game, blame what it ran, and restart as the policy decides."""
        game = self.game
        assert game is not None
        pid = game.process.pid
        fault, dump = self._post_mortem(game, kind, cause)
        self.game = None
        if dump:
            try:
                self.crash_path.write_text(dump)
            except OSError:
                pass
        self._frames_before = self.game_frames
        self._checkpoints_before = self.game_checkpoints
        self._detected_ns = now
        decision = self.policy.decide(fault, now)
        record = RestartRecord(
            cause,
            (now - self._started_ns) / S,
            pid,
            self.game_frames,
            kind=str(kind),
            action=str(decision.action),
            location=fault.location,
            message=decision.message,
        )
        if decision.rule.action is Action.RESTART_WITHOUT and fault.module is not None:
            record.blamed = self._leave_out(fault, decision)
        self.restarts.append(record)
        self.report(f"supervisor: {decision.message}")
        if self.compositor is not None:  # the mirror's HUD says so
            waits = decision.action is Action.WAIT_FOR_EDIT
            self.compositor.tell_game_state("waiting for an edit" if waits else "restarting")
        if decision.action is Action.BACK_OFF:
            assert decision.retry_at_ns is not None
            record.backoff_ms = (decision.retry_at_ns - now) / 1e6
            self.crash_loop = decision.message
            self._restart_at = decision.retry_at_ns
        elif decision.action is Action.WAIT_FOR_EDIT:
            # Against game.py as the failed game found it: a save made while it was
            # failing (before the supervisor noticed) starts the next game at once.
            self._waiting_for_edit = True
        else:
            self._start_game(restarted=True)

    def _post_mortem(self, game: _Game, kind: FaultKind, cause: str) -> tuple[Fault, str]:
        """Kill a failed game process (a hung one first writes its stacks) and describe
        the failure: the :class:`Fault` blamed, and the crash block's text."""
        running = game.heartbeat.running()  # before the dump signal: it may interrupt a call
        if game.process.exitcode is None and kind is not FaultKind.PROCESS_DIED:
            self._dump_stacks(game)
        self._stop(game, wait_s=0.0, terminate=False, close=False)  # blocks: read below
        if kind is FaultKind.PROCESS_DIED:
            running = game.heartbeat.running()  # it is dead: this is the last word
        dump = _read_all(game.crash_fd)
        fault = blame(
            self.project_dir,
            kind,
            cause,
            running,
            dump,
            game.process.exitcode,
            self._game_source,
        )
        self._close_blocks(game)
        return fault, dump

    def _leave_out(self, fault: Fault, decision: Decision) -> str | None:
        """Mark the version ``fault`` names bad, so the next game runs without it."""
        assert fault.module is not None
        if fault.version is None:
            return None
        unit = blamed_unit(self.project_dir, fault)
        try:
            leave_out(unit, fault.version, decision.message)
        except KeyError:  # not in the history (a version number the game made up)
            return None
        return f"{fault.module} v{fault.version}"

    def _dump_stacks(self, game: _Game) -> None:
        """Ask a hung game's faulthandler where each thread is, and wait a moment for it."""
        before = os.fstat(game.crash_fd).st_size
        try:
            os.kill(game.process.pid, DUMP_SIGNAL)
        except OSError:
            return
        deadline = time.monotonic() + DUMP_WAIT_S
        while time.monotonic() < deadline and game.process.exitcode is None:
            size = os.fstat(game.crash_fd).st_size
            if size > before:
                time.sleep(0.01)  # let it finish the other threads
                if os.fstat(game.crash_fd).st_size == size:
                    return
            time.sleep(0.005)

    def _end_game(self, game: _Game) -> None:
        """Stop the live ``game`` (SIGTERM: it writes its final checkpoint and stats; then
        SIGKILL after 5 s) and what it started."""
        self._stop(game, wait_s=5.0, terminate=True)
        self.game = None

    def _stop(self, game: _Game, wait_s: float, terminate: bool, close: bool = True) -> None:
        """End any game process: SIGTERM first if ``terminate``, ``wait_s`` for it to end by
        itself, then SIGKILL; then what it started, and (``close``) its blocks."""
        process = game.process
        if process.exitcode is None:
            if terminate:
                process.terminate()
            if wait_s:
                process.join(wait_s)
            if process.exitcode is None:
                process.kill()
                process.join(2.0)
        self._kill_leftovers(process.pid)
        if close:
            self._close_blocks(game)

    def _observe(self, game: _Game, beat: Heartbeat | None, now: int) -> tuple[Any, str | None]:
        """Whether ``game`` failed: ``(FaultKind, cause)``, or ``(None, None)``."""
        if game.process.exitcode is not None:
            return FaultKind.PROCESS_DIED, describe_exit(game.process.exitcode)
        running_id = game.heartbeat.running_main_id()
        cause = game.watch.observe(beat, now, running_id, game.heartbeat.describe)
        if cause is None:
            return None, None
        return (FaultKind.HUNG if cause.startswith("hung") else FaultKind.NOT_PUBLISHING), cause

    def _kill_leftovers(self, session: int) -> None:
        """Kill what a game started: its session, and orphans re-parented to us."""
        killed = containment.kill_session(session)
        keep = {self._warden.pid} if self._warden is not None else set()
        # The other game processes (the live game, the standby) are ours, not orphans.
        keep |= {g.process.pid for g in self._games() if g.process.pid != session}
        killed += containment.kill_orphans(keep)
        if self._warden is not None:
            self._warden.release(session)
        if killed:
            self.leftovers_killed += len(killed)
            self.report(
                f"supervisor: killed {len(killed)} process(es) the game had started "
                f"(pids {', '.join(map(str, killed[:8]))})"
            )

    def _close_blocks(self, game: _Game) -> None:
        game.heartbeat.close()
        for fd in (game.heartbeat_fd, game.crash_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        game.crash_fd = game.heartbeat_fd = -1

    # -- the preview: vetting candidates on a copy of the world ----------------------------
    def start_preview(self, modules: list[str] | None = None) -> None:
        """Start a preview game on a fresh copy of the live world and of the history.

        The live game is asked for a checkpoint at its next frame boundary (a forked child
        writes it: it costs the live game no frame); the preview starts from it as soon as
        it is written (:attr:`preview` is set then), or from the newest checkpoint there is
        after ``PREVIEW_SNAPSHOT_WAIT_S``. The preview runs what is on disk now (with
        ``modules``, only those; the rest at their live versions), follows later saves,
        draws into the preview layer and runs at a lower priority. A running preview is
        replaced. Raises ``RuntimeError`` before the compositor runs or before the first
        checkpoint.
        """
        if self.compositor is None or self._stopping:
            raise RuntimeError("the engine is not running")
        if not self.checkpoint_path.is_file():
            raise RuntimeError("the live game has no checkpoint yet; try again in a second")
        self.end_preview("replaced by a new one")
        ask = self._request(self.state_dir / "control.sock", {"op": "checkpoint_now"}, 2.0)
        self._preview_wanted = (modules, self.clock(), ask)

    def _start_preview_when_fresh(self, now: int) -> None:
        """Start the preview asked for once the live game's fresh checkpoint is written."""
        assert self._preview_wanted is not None
        modules, asked_ns, ask = self._preview_wanted
        fresh = False
        if ask.done():
            reply = ask.result()
            beat = self.game.heartbeat.read() if self.game is not None else None
            taken = reply.get("taken") if reply.get("ok") else None
            fresh = beat is not None and isinstance(taken, int) and beat.checkpoints > taken
            if not reply.get("ok"):
                fresh = True  # the live game cannot say: the newest checkpoint it is
        if not fresh and now - asked_ns < PREVIEW_SNAPSHOT_WAIT_S * S:
            return
        self._preview_wanted = None
        self._spawn_preview(modules)

    def _spawn_preview(self, modules: list[str] | None) -> int:
        shutil.rmtree(self.preview_dir, ignore_errors=True)
        self.preview_dir.mkdir(parents=True)
        checkpoint = self.preview_dir / "checkpoint.bin"
        shutil.copyfile(self.checkpoint_path, checkpoint)
        history = self.state_dir / "history"
        if history.is_dir():
            shutil.copytree(history, self.preview_dir / "history")
        changes = {
            "role": "preview",
            "state_dir": str(self.preview_dir),
            "checkpoint_path": str(checkpoint),
            "stats_path": str(self.preview_dir / "game-stats.json"),
            "restarted": True,
            "vet": False,
            "preview_modules": tuple(modules) if modules else None,
            "watch": True,
            "console": False,
            "plot_path": None,
            "rewind_s": 2 * self.game_config.checkpoint_interval_s,
        }
        config = GameConfig(**{**asdict(self.game_config), **changes})
        self.preview = self._spawn(config, role="preview")
        # It runs on what the live game leaves over: a starved preview is slow, not hung.
        self.preview.watch.heartbeat_timeout_ns = max(self.heartbeat_timeout_ns, 5 * S)
        self.preview.watch.publish_timeout_ns = max(self.publish_timeout_ns, 5 * S)
        self.preview_stats["started"] += 1
        self._preview_diffed = False
        self._vet_future = None
        self.report(
            f"supervisor: preview started (pid {self.preview.process.pid}) on a copy of the "
            f"live world{' with ' + ', '.join(modules) if modules else ''}"
        )
        return self.preview.process.pid

    def end_preview(self, why: str = "") -> None:
        """Stop the preview game, if one runs or is waiting to (the live game is not
        touched)."""
        self._preview_wanted = None
        preview, self.preview = self.preview, None
        if preview is None:
            return
        self._stop(preview, wait_s=2.0, terminate=True)
        self._vet_future = None
        if why:
            self.report(f"supervisor: preview ended ({why})")

    def _watch_preview(self, now: int) -> None:
        if self._preview_wanted is not None:
            self._start_preview_when_fresh(now)
        waiting = self._preview_wanted is not None
        if self._candidates_saved and self.preview is None and self.vet and not waiting:
            if self.checkpoint_path.is_file() and self.game is not None:
                self._candidates_saved = False
                self.start_preview()
        preview = self.preview
        if preview is None:
            return
        beat = preview.heartbeat.read()
        if beat is not None and beat.pid != preview.process.pid:
            beat = None
        kind, cause = self._observe(preview, beat, now)
        if kind is not None and cause is not None:
            self._on_preview_failure(preview, kind, cause)
            return
        # Once the preview has checkpointed its own world past vet_frames frames.
        if (
            beat is not None
            and beat.checkpoint_frame >= self.vet_frames
            and not self._preview_diffed
        ):
            self._preview_diffed = True
            self._diff_preview()
        self._ask_vet(now)

    def _on_preview_failure(self, preview: _Game, kind: FaultKind, cause: str) -> None:
        """A preview that dies or hangs is killed and reported; the candidate it ran is
        rejected (the live game never ran it) and marked bad in the preview's history."""
        self.preview = None
        fault, _ = self._post_mortem(preview, kind, cause)
        where = f" at {fault.location}" if fault.location else ""
        culprit = f"{fault.module} v{fault.version}" if fault.module else fault.phase
        message = f"preview {cause} in {culprit}{where}; the live game is untouched"
        self.preview_stats["faults"].append(
            {"cause": cause, "module": fault.module, "version": fault.version,
             "location": fault.location, "message": message}
        )  # fmt: skip
        if fault.module is not None and fault.version is not None:
            unit = blamed_unit(self.project_dir, fault, root=self.preview_dir / "history")
            try:
                leave_out(unit, fault.version, message)
                sha = unit.get(fault.version).sha256
            except KeyError:
                sha = ""
            self._decided.add((fault.module, sha))
            self.preview_stats["verdicts"].append(
                {"action": "reject", "module": fault.module, "version": fault.version,
                 "reason": message}
            )  # fmt: skip
        self.report(f"supervisor: {message}")
        self._vet_future = None

    def _ask_vet(self, now: int) -> None:
        """Ask the preview for its candidates (on the request thread), every 0.25 s, and
        act on the answer under ``vet="auto"``."""
        future = self._vet_future
        if future is not None and future.done():
            self._vet_future = None
            try:
                reply = future.result()
            except Exception:  # the preview is busy or going: ask again later
                reply = {}
            if reply.get("ok") and self.vet == "auto":
                candidates = [Candidate(**c) for c in reply.get("candidates", [])]
                self._judge(candidates)
        if self._vet_future is None and now - self._vet_asked_ns >= 250_000_000:
            self._vet_asked_ns = now
            self._vet_future = self._request(self.preview_dir / "control.sock", {"op": "vet"})

    def _judge(self, candidates: list[Candidate]) -> None:
        promote: dict[str, dict[str, Any]] = {}
        for verdict in decide(candidates, self.vet_frames):
            c = verdict.candidate
            key = (c.module, c.sha256)
            if verdict.action == "wait" or key in self._decided:
                continue
            self._decided.add(key)
            self.preview_stats["verdicts"].append(
                {"action": verdict.action, "module": c.module, "version": c.version,
                 "reason": verdict.reason}
            )  # fmt: skip
            if verdict.action == "promote":
                promote[c.module] = {**c.to_json(), "reason": verdict.reason}
            else:
                self.report(
                    f"supervisor: vetting rejected {c.module} (preview v{c.version}): "
                    f"{verdict.reason}; the live game keeps its version"
                )
                if not c.module.endswith(SHADER_SUFFIXES):
                    message = {
                        "op": "reject",
                        "module": c.module,
                        "candidate": {**c.to_json(), "reason": verdict.reason},
                    }
                    self._request(self.state_dir / "control.sock", message)
        if promote:
            self._promote_now(promote)

    def _promote_now(self, modules: dict[str, dict[str, Any]]) -> Future:
        """Ask the live game to load ``modules`` ({name: the candidate's fields: sha256,
        frames, worst_ms}); reported when it answers."""
        message = {"op": "promote", "modules": modules}
        future = self._request(self.state_dir / "control.sock", message)

        def said(done: Future) -> None:
            try:
                reply = done.result()
            except Exception as exc:
                reply = {"ok": False, "error": str(exc)}
            if reply.get("ok"):
                self.preview_stats["promoted"].update(reply.get("promoted", {}))
                names = ", ".join(f"{n} v{v}" for n, v in reply.get("promoted", {}).items())
                refused = "; ".join(f"{n}: {w}" for n, w in reply.get("refused", {}).items())
                self.report(
                    f"supervisor: promoted into the live game: {names or 'nothing'}"
                    + (f" (refused: {refused})" if refused else "")
                )
            else:
                self.report(f"supervisor: promote failed: {reply.get('error')}")

        future.add_done_callback(said)
        return future

    def _request(self, path: Path, message: dict[str, Any], timeout_s: float = 5.0) -> Future:
        if self._requests is None:
            self._requests = ThreadPoolExecutor(1, thread_name_prefix="supervisor-requests")

        def ask() -> dict[str, Any]:
            try:
                return request(path, message, timeout_s)
            except (ControlUnavailable, TimeoutError, OSError, ValueError) as exc:
                return {"ok": False, "error": str(exc)}

        return self._requests.submit(ask)

    def promote(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Swap the preview's candidates that run clean into the live game, then end the
        preview. Returns ``{"promoted": {module: live version}, "refused": {...},
        "rejected": {module: why}}``. Raises ``LookupError`` with no preview running."""
        if self.preview is None:
            raise LookupError("no preview is running (engine preview PROJECT starts one)")
        reply = self._request(self.preview_dir / "control.sock", {"op": "vet"}).result(timeout_s)
        if not reply.get("ok"):
            raise LookupError(f"the preview did not answer: {reply.get('error')}")
        candidates = [Candidate(**c) for c in reply.get("candidates", [])]
        rejected = {c.module: c.fault for c in candidates if c.fault is not None}
        clean = {
            c.module: {**c.to_json(), "reason": "promoted by hand"}
            for c in candidates
            if c.fault is None
        }
        result: dict[str, Any] = {"promoted": {}, "refused": {}, "rejected": rejected}
        if clean:
            answer = self._promote_now(clean).result(timeout_s)
            if not answer.get("ok"):
                raise LookupError(f"the live game did not take them: {answer.get('error')}")
            result["promoted"], result["refused"] = answer["promoted"], answer["refused"]
        self._on_loop(lambda: self.end_preview("its candidates were promoted"))
        return result

    def discard(self) -> None:
        """Drop the candidates: end the preview; the live game keeps its versions (the
        files keep their text, and a later save starts a new preview under ``vet``)."""
        if self.preview is None and self._preview_wanted is None:
            raise LookupError("no preview is running")
        self.end_preview("discarded")

    def _diff_preview(self) -> None:
        """Compare the live world with the preview's (their newest checkpoints)."""
        try:
            from engine.world.diff import diff_checkpoints
        except ImportError:
            return
        try:
            live = self.checkpoint_path.read_bytes()
            preview = (self.preview_dir / "checkpoint.bin").read_bytes()
            diff = diff_checkpoints(live, preview, labels=("live", "preview"))
        except Exception as exc:  # a diff is a report, never a reason to stop
            self.report(f"supervisor: no world diff: {exc}")
            return
        self.preview_stats["diff"] = diff.to_json()
        self.report("supervisor: preview against live:\n" + diff.summary())

    # -- the supervisor's own commands (engine preview | promote | discard) -----------------
    def _serve(self, message: dict[str, Any]) -> dict[str, Any]:
        """Answer a command on the supervisor's socket (a connection's thread)."""
        op = message.get("op")
        try:
            if op == "promote":
                return {"ok": True, **self.promote()}
            if op == "preview":
                modules = message.get("modules") or None
                if modules is not None and not (
                    isinstance(modules, list) and all(isinstance(m, str) for m in modules)
                ):
                    return {"ok": False, "error": "preview needs 'modules' (a list of names)"}
                self._on_loop(lambda: self.start_preview(modules))
                return {"ok": True}
            if op == "discard":
                self._on_loop(self.discard)
                return {"ok": True}
            if op == "status":
                return {"ok": True, "stats": self._on_loop(self.stats)}
        except (LookupError, RuntimeError, TimeoutError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown command {op!r} (known: preview, promote, discard)"}

    def _on_loop(self, fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Run ``fn`` on the supervising thread (at its next poll) and return its result;
        called on that thread, run it now."""
        if threading.get_ident() == self._loop_thread:
            return fn()
        future: Future = Future()
        self._calls.put((fn, future))
        return future.result(timeout_s)

    def _serve_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

    def _on_saved(self, *args: Any) -> None:
        """A module or shader was saved (the supervisor's watcher, under ``vet``)."""
        self._candidates_saved = True

    # -- running -------------------------------------------------------------------------
    @property
    def compositor_frame(self) -> int:
        """Frames presented so far (0 before the first), across compositor restarts."""
        record = self._pose_reader.read() if self._pose_reader else None
        if record is not None:  # None: the writer was mid-record; keep the last value seen
            self._compositor_frame_now = record.frame - 1  # it publishes frame + 1
        return self._compositor_frames_before + self._compositor_frame_now

    @property
    def game_pid(self) -> int | None:
        return self.game.process.pid if self.game else None

    @property
    def game_frame(self) -> int:
        """Frames the running game process has finished (0: none yet, or no game)."""
        return self.game_frames - self._frames_before if self.game is not None else 0

    def run_until(self, done: Callable[[], bool], timeout_s: float, poll_s: float = 0.005) -> bool:
        """Supervise until ``done()`` (True), ``timeout_s`` passes or a stop was asked for
        (SIGTERM/SIGINT/SIGHUP during :meth:`run`) (False)."""
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up and not self._stop_requested:
            self.poll()
            if done():
                return True
            if self.compositor_failure:
                return False
            time.sleep(poll_s)
        return False

    def run(
        self,
        seconds: float | None = None,
        frames: int | None = None,
        stats_json: str | Path | None = None,
    ) -> dict[str, Any]:
        """Start (if needed), supervise for ``seconds`` or ``frames`` compositor frames (or
        until SIGTERM, SIGINT or SIGHUP), stop, and return the stats (also written to
        ``stats_json``).

        A ``frames`` run also waits for the game's first frame (a loaded machine can take
        longer than N frames to start a game), unless the game is crash-looping or waits
        for an edit. The signal handlers are this method's only while it runs (main thread
        only).
        """
        previous = self._take_stop_signals()
        try:
            if self.compositor is None and not self._stop_requested:
                self.start()
            start = time.monotonic()

            def done() -> bool:
                if seconds is not None and time.monotonic() - start >= seconds:
                    return True
                if frames is None or self.compositor_frame < frames:
                    return False
                return (
                    self.game_frames > 0
                    or self.crash_loop is not None
                    or self._waiting_for_edit  # no game until an edit
                )

            try:
                self.run_until(done, float("inf") if seconds is None and frames is None else 1e9)
            except KeyboardInterrupt:  # a caller's own SIGINT handler raised it
                pass
            stats = self.stop()
            if stats_json:
                Path(stats_json).write_text(json.dumps(stats, indent=1))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return stats

    def _take_stop_signals(self) -> dict[int, Any]:
        """SIGTERM, SIGINT and SIGHUP ask :meth:`run` to stop (a flag: never an exception
        in the middle of stopping). Returns the handlers to put back."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            self._stop_requested = True

        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN:
                continue  # started in the background (`engine run &`): Ctrl-C is not ours
            previous[signum] = signal.signal(signum, handler)
        return previous

    def stop(self) -> dict[str, Any]:
        """Stop the game (SIGTERM, then SIGKILL), then the compositor, then everything the
        game started; return the stats."""
        self._stopping = True  # no new standby from here on
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._control is not None:
            self._control.stop()
            self._control = None
        self.end_preview()
        if self._requests is not None:
            self._requests.shutdown(wait=False, cancel_futures=True)
            self._requests = None
        for fd in self._private_layers:
            os.close(fd)
        self._private_layers.clear()
        self._dismiss_standby()
        if self.game is not None:
            self.poll()
            if self.game is not None:
                self._end_game(self.game)
        try:  # written by a game that stopped cleanly (SIGTERM): its systems table etc.
            self.game_engine_stats = json.loads(self.game_stats_path.read_text())
        except (OSError, ValueError):
            self.game_engine_stats = None
        last_game = (self.game_engine_stats or {}).get("frames")
        if isinstance(last_game, int):  # exact: it may have run past its last heartbeat
            self.game_frames = max(self.game_frames, self._frames_before + last_game)
        self._close_compositor()
        if self._warden is not None:
            self._warden.close()
            self._warden = None
        if self._subreaper:
            containment.kill_orphans(set())
            containment.become_subreaper(False)
            self._subreaper = False
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """Everything the supervisor knows, as plain JSON-able data."""
        return {
            "compositor": self.compositor_stats,
            "compositor_failure": self.compositor_failure,
            "compositor_restarts": self.compositor_restarts,
            "restarts": [asdict(r) for r in self.restarts],
            "crash_loop": self.crash_loop,
            "leftovers_killed": self.leftovers_killed,
            "standby": asdict(self.standby_stats),
            "vet": self.vet,
            "preview": self.preview_stats,
            "game": {
                "frames": self.game_frames,
                "checkpoints": self.game_checkpoints,
                "checkpoint_ms_max": self._checkpoint_ms_max,
                "checkpoint_bytes_max": self._checkpoint_bytes,
                "engine": self.game_engine_stats,
            },
        }

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.compositor is not None or self.game is not None or self._warden is not None:
            self.stop()


def _read_all(fd: int, most: int = 1 << 20) -> str:
    """What faulthandler wrote into a crash block (its last ``most`` bytes)."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(size, most), max(0, size - most))
    except OSError:
        return ""
    return data.decode("utf-8", "replace")

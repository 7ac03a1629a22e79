"""The supervisor: starts the compositor and the game, and restarts the game when it fails.

Process tree (every child started with the ``spawn`` context, never ``fork``)::

    supervisor (this process)
    ├── compositor   engine.compositor.process.compositor_main — never runs user code
    └── game         engine.launcher.game_process.game_main    — may die or hang any time

The restart policy lives here and only here (Erlang/OTP style). A game is *failed* when

* its process has exited (an exit code, ``os._exit``, a signal such as SIGSEGV or an
  outside ``kill -9``);
* it is hung: no heartbeat for ``heartbeat_timeout_s`` (a C call that never returns, code
  that swallows the watchdog's interrupts), or no first frame within ``start_timeout_s``;
* it stopped publishing its layer for ``publish_timeout_s`` while still beating.

A failed game is killed (SIGKILL) and started again at once with ``restarted=True``: the
engine blames the module version that was on probation, and the world comes back from
the newest checkpoint. The same fault three times within ten seconds is a *crash loop*:
the next start waits (2 s, doubling to 30 s) and the supervisor says so. The compositor
keeps presenting through all of it; the game's layer is reprojected, then excluded, and
back as soon as the new game publishes.

Liveness is judged on the supervisor's own clock (:class:`GameWatch`), and the restart
policy (:class:`RestartPolicy`) takes time as an argument, so both are tested without
sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.compositor.process import SPAWN, CompositorConfig, CompositorHandle
from engine.contracts.handoff import Heartbeat, HeartbeatReader, PoseHandoffReader
from engine.contracts.shm import PassedFd, create_block_fd, read_only_fd
from engine.launcher.game_process import DEFAULT_RENDER, GameConfig, game_main

S = 1_000_000_000  # nanoseconds per second


def describe_exit(exitcode: int) -> str:
    """``"exit 3"`` or ``"signal SIGSEGV"`` for a ``multiprocessing`` exit code."""
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit {exitcode}"


@dataclass
class RestartPolicy:
    """Restart at once, unless the same fault keeps coming back.

    ``on_fault(kind, now_ns)`` returns how long to wait before the next start. The same
    ``kind`` ``loop_faults`` times within ``loop_window_ns`` is a crash loop: the wait is
    ``backoff_ns``, doubled for each further repeat, at most ``max_backoff_ns``.

    Example:
        >>> p = RestartPolicy()
        >>> [p.on_fault("exit 3", t * S) for t in (0, 1, 2, 3)]
        [0, 0, 2000000000, 4000000000]
    """

    loop_faults: int = 3
    loop_window_ns: int = 10 * S
    backoff_ns: int = 2 * S
    max_backoff_ns: int = 30 * S
    history: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=64))
    streak: int = 0

    def on_fault(self, kind: str, now_ns: int) -> int:
        self.history.append((kind, now_ns))
        recent = [t for k, t in self.history if k == kind and now_ns - t <= self.loop_window_ns]
        if len(recent) < self.loop_faults:
            self.streak = 0
            return 0
        self.streak += 1
        return min(self.max_backoff_ns, self.backoff_ns << (self.streak - 1))


class GameWatch:
    """Whether one game process is alive and producing, judged from its heartbeat.

    ``observe(beat, now_ns)`` returns a fault description, or ``None`` while all is well.
    Times are the supervisor's: when a new frame number was first seen, not what the game
    wrote, so a game with a broken clock cannot look alive.
    """

    def __init__(
        self,
        started_ns: int,
        *,
        start_timeout_ns: int,
        heartbeat_timeout_ns: int,
        publish_timeout_ns: int,
    ) -> None:
        self.started_ns = started_ns
        self.start_timeout_ns = start_timeout_ns
        self.heartbeat_timeout_ns = heartbeat_timeout_ns
        self.publish_timeout_ns = publish_timeout_ns
        self.last: Heartbeat | None = None
        self.beat_seen_ns = started_ns
        self.published_seen_ns = started_ns
        self.first_frame_ns: int | None = None

    def observe(self, beat: Heartbeat | None, now_ns: int) -> str | None:
        if beat is not None and (self.last is None or beat.frame != self.last.frame):
            if self.first_frame_ns is None:
                self.first_frame_ns = now_ns
                self.published_seen_ns = now_ns
            self.beat_seen_ns = now_ns
            if self.last is None or beat.published_frame != self.last.published_frame:
                self.published_seen_ns = now_ns
            self.last = beat
        if self.first_frame_ns is None:
            if now_ns - self.started_ns > self.start_timeout_ns:
                return f"hung: no first frame within {self.start_timeout_ns / S:g} s"
            return None
        silent = now_ns - self.beat_seen_ns
        if silent > self.heartbeat_timeout_ns:
            return f"hung: no heartbeat for {silent / 1e6:.0f} ms"
        if now_ns - self.published_seen_ns > self.publish_timeout_ns:
            return f"not publishing: no layer image for {self.publish_timeout_ns / S:g} s"
        return None


def fault_kind(cause: str) -> str:
    """What makes two faults "the same" for crash-loop detection: the cause up to ':'."""
    return cause.split(":", 1)[0]


@dataclass
class RestartRecord:
    """One game failure and what the supervisor did about it (times in ms)."""

    cause: str
    at_s: float  # since the supervisor started
    pid: int | None
    frames_before: int
    backoff_ms: float = 0.0
    first_frame_ms: float | None = None  # from detection to the new game's first frame
    new_pid: int | None = None


@dataclass
class _Game:
    process: Any
    heartbeat_fd: int
    heartbeat: HeartbeatReader
    watch: GameWatch


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
        heartbeat_timeout_s / start_timeout_s / publish_timeout_s: when a game is failed.
        checkpoint_interval_s: how often the game checkpoints (at least).
        probation_frames: the scheduler's probation length in the game (``None``: default).
        watch: the game watches the project for edits. console: the game shows its live
            systems table. plot_path: the game plots per-system frame times when it stops.
        policy: the restart policy. report: where messages go. clock: ``now_ns``.
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
        checkpoint_interval_s: float = 1.0,
        probation_frames: int | None = None,
        watch: bool = True,
        console: bool = False,
        plot_path: str | Path | None = None,
        policy: RestartPolicy | None = None,
        report: Callable[[str], None] = print,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        if not self.project_dir.is_dir():
            raise FileNotFoundError(f"project folder {self.project_dir} does not exist")
        self.state_dir = Path(state_dir) if state_dir else self.project_dir / ".engine"
        self.checkpoint_path = self.state_dir / "checkpoint.bin"
        self.game_stats_path = self.state_dir / "game-stats.json"
        self.resume = resume
        self.compositor_config = compositor or CompositorConfig()
        self.game_config = GameConfig(
            project_dir=str(self.project_dir),
            checkpoint_path=str(self.checkpoint_path),
            render=render,
            checkpoint_interval_s=checkpoint_interval_s,
            probation_frames=probation_frames,
            watch=watch,
            stats_path=str(self.game_stats_path),
            console=console,
            plot_path=str(plot_path) if plot_path else None,
        )
        self.heartbeat_timeout_ns = round(heartbeat_timeout_s * S)
        self.start_timeout_ns = round(start_timeout_s * S)
        self.publish_timeout_ns = round(publish_timeout_s * S)
        self.policy = policy or RestartPolicy()
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
        self._compositor_policy = RestartPolicy()
        self.game_engine_stats: dict[str, Any] | None = None  # the last game's Engine.stats()
        self.game: _Game | None = None
        self.game_frames = 0  # frames of finished game processes, plus the current one's
        self._frames_before = 0
        self.game_checkpoints = 0  # likewise, checkpoints taken
        self._checkpoints_before = 0
        self._checkpoint_bytes = 0
        self._restart_at: int | None = None
        self._detected_ns = 0  # when the newest failure was detected
        self._pose_fd: int | None = None
        self._pose_reader: PoseHandoffReader | None = None
        self._started_ns = 0
        self._checkpoint_ms_max = 0.0

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the compositor, then the game. Raises ``RuntimeError`` if the compositor
        cannot start."""
        self._started_ns = self.clock()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.game_stats_path.unlink(missing_ok=True)
        if not self.resume:
            self.checkpoint_path.unlink(missing_ok=True)
        self._start_compositor()
        self._start_game(restarted=False)

    def _start_compositor(self) -> None:
        self._pose_fd = create_block_fd("pose-handoff")
        self._pose_reader = PoseHandoffReader(self._pose_fd)
        self.compositor = CompositorHandle.start(self.compositor_config, self._pose_fd)
        self.report(
            "supervisor: compositor up, priority "
            f"{self.compositor.ready['priority']}, {self.compositor.ready['gl']}; layer images "
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

    def _on_compositor_death(self, now: int) -> None:
        """The compositor must never die; if it does anyway, bring the tree back.

        The game is stopped cleanly (it writes a final checkpoint: it did nothing wrong, so
        nothing is blamed), a new compositor starts with new layer and pose blocks, and the
        game starts again from that checkpoint. A compositor that keeps dying (the same
        crash-loop rule as the game's) is given up on: ``compositor_failure`` says why.
        """
        code = self.compositor.process.exitcode if self.compositor else None
        cause = f"compositor died ({describe_exit(code) if code is not None else 'unknown'})"
        self.compositor_restarts.append({"cause": cause, "at_s": (now - self._started_ns) / S})
        self._compositor_frames_before = self.compositor_frame
        self._compositor_frame_now = 0
        if self.game is not None:
            self._end_game(self.game, kill=False)
        self._close_compositor()
        if self._compositor_policy.on_fault("compositor", now):
            self.compositor_failure = f"{cause}; it keeps dying, giving up"
            self.report(f"supervisor: {self.compositor_failure}")
            return
        self.report(f"supervisor: {cause}; restarting it and the game from its checkpoint")
        self._start_compositor()
        self._start_game(restarted=False)

    def _start_game(self, restarted: bool) -> None:
        assert self.compositor is not None and self._pose_fd is not None
        heartbeat_fd = create_block_fd("heartbeat")
        game_pose_fd = read_only_fd(self._pose_fd)  # a game can never write the poses
        layer_fd, spec = self.compositor.layers[0]
        config = GameConfig(**{**asdict(self.game_config), "restarted": restarted})
        # The same GPU images for every game: a restarted one imports them again.
        gpu_images = self.compositor.gpu_images_for_child(0)
        process = SPAWN.Process(
            target=game_main,
            args=(
                config,
                PassedFd(game_pose_fd),
                PassedFd(heartbeat_fd),
                PassedFd(layer_fd),
                spec,
                gpu_images,
            ),  # fmt: skip
            name="engine-game",
            daemon=True,
        )
        process.start()
        os.close(game_pose_fd)
        now = self.clock()
        watch = GameWatch(
            now,
            start_timeout_ns=self.start_timeout_ns,
            heartbeat_timeout_ns=self.heartbeat_timeout_ns,
            publish_timeout_ns=self.publish_timeout_ns,
        )
        self.game = _Game(process, heartbeat_fd, HeartbeatReader(heartbeat_fd), watch)
        self._restart_at = None
        if self.restarts:
            self.restarts[-1].new_pid = process.pid

    def poll(self) -> None:
        """One supervision step: check the compositor and the game, restart if due."""
        now = self.clock()
        if self.compositor is not None and not self.compositor.alive():
            self._on_compositor_death(now)
            return
        game = self.game
        if game is None:
            if self._restart_at is not None and now >= self._restart_at:
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
        cause = None
        if game.process.exitcode is not None:
            cause = describe_exit(game.process.exitcode)
        else:
            cause = game.watch.observe(beat, now)
        record = self.restarts[-1] if self.restarts else None
        if record and record.first_frame_ms is None and game.watch.first_frame_ns is not None:
            record.first_frame_ms = (game.watch.first_frame_ns - self._detected_ns) / 1e6
            self.report(
                f"supervisor: game back (pid {game.process.pid}), first frame "
                f"{record.first_frame_ms:.0f} ms after the failure was detected"
            )
        if cause is not None:
            self._on_failure(cause, now)

    def _on_failure(self, cause: str, now: int) -> None:
        game = self.game
        assert game is not None
        pid = game.process.pid
        self._end_game(game, kill=True)
        self._frames_before = self.game_frames
        self._checkpoints_before = self.game_checkpoints
        self._detected_ns = now
        record = RestartRecord(cause, (now - self._started_ns) / S, pid, self.game_frames)
        delay = self.policy.on_fault(fault_kind(cause), now)
        record.backoff_ms = delay / 1e6
        self.restarts.append(record)
        if delay:
            self.crash_loop = (
                f"crash loop: '{fault_kind(cause)}' {self.policy.loop_faults} times within "
                f"{self.policy.loop_window_ns / S:g} s; next start in {delay / S:g} s"
            )
            self.report(f"supervisor: game (pid {pid}) failed: {cause}; {self.crash_loop}")
            self._restart_at = now + delay
        else:
            self.report(f"supervisor: game (pid {pid}) failed: {cause}; restarting")
            self._start_game(restarted=True)

    def _end_game(self, game: _Game, kill: bool) -> None:
        if game.process.exitcode is None:
            if kill:
                game.process.kill()
            else:
                game.process.terminate()
            game.process.join(5.0 if not kill else 2.0)
            if game.process.exitcode is None:
                game.process.kill()
                game.process.join(2.0)
        game.heartbeat.close()
        os.close(game.heartbeat_fd)
        self.game = None

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

    def run_until(self, done: Callable[[], bool], timeout_s: float, poll_s: float = 0.005) -> bool:
        """Supervise until ``done()`` (True) or ``timeout_s`` passes (False)."""
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
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
        until interrupted), stop, and return the stats (also written to ``stats_json``).

        A ``frames`` run also waits for the game's first frame (a loaded machine can take
        longer than N frames to start a game), unless the game is crash-looping.
        """
        if self.compositor is None:
            self.start()
        start = time.monotonic()

        def done() -> bool:
            if seconds is not None and time.monotonic() - start >= seconds:
                return True
            if frames is None or self.compositor_frame < frames:
                return False
            return self.game_frames > 0 or self.crash_loop is not None

        try:
            self.run_until(done, float("inf") if seconds is None and frames is None else 1e9)
        except KeyboardInterrupt:
            pass
        stats = self.stop()
        if stats_json:
            Path(stats_json).write_text(json.dumps(stats, indent=1))
        return stats

    def stop(self) -> dict[str, Any]:
        """Stop the game (SIGTERM, then SIGKILL), then the compositor; return the stats."""
        if self.game is not None:
            self.poll()
            if self.game is not None:
                self._end_game(self.game, kill=False)
        try:  # written by a game that stopped cleanly (SIGTERM): its systems table etc.
            self.game_engine_stats = json.loads(self.game_stats_path.read_text())
        except (OSError, ValueError):
            self.game_engine_stats = None
        self._close_compositor()
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """Everything the supervisor knows, as plain JSON-able data."""
        return {
            "compositor": self.compositor_stats,
            "compositor_failure": self.compositor_failure,
            "compositor_restarts": self.compositor_restarts,
            "restarts": [asdict(r) for r in self.restarts],
            "crash_loop": self.crash_loop,
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
        if self.compositor is not None or self.game is not None:
            self.stop()

"""The game process: an :class:`~engine.game.Engine` paced by the compositor.

What it does each frame, on top of the engine's own frame (``Engine.after_frame``):

1. draw into a free image of its layer and publish it with the eye poses it was drawn
   for: with the engine's own render system (``render="system"``, what ``engine run``
   uses: it draws during the frame, as a system) or a pluggable
   ``render(frame, eyes, slot)`` factory (a CPU test pattern for benches and tests);
2. beat: write its frame number and time to the heartbeat block (the supervisor's proof
   of life);
3. every ``checkpoint_interval_s`` or more, checkpoint the world at this frame boundary:
   a forked child writes it (the frame pays for the fork only; see
   :mod:`engine.world.checkpointer`), into a ring of the last ``rewind_s`` seconds
   (``engine rewind``) and atomically as the newest checkpoint.

The frame starts when the compositor publishes a new display frame (:class:`HandoffPacer`)
and samples the pose the compositor predicted for that frame's display
(:class:`HandoffPoseSource`).

Start-up order (:func:`game_main`): die with the supervisor, then fence the game in
(:mod:`engine.launcher.containment`: own session, signals only within it, memory limit),
then faulthandler into the supervisor's crash block, then restore the world from the
checkpoint, then load the modules (their ``on_load`` sees the restored world; ``setup``
runs only for a new world). From its first line the game says in its heartbeat block what
it runs (:class:`~engine.contracts.handoff.RunningNow`), so the supervisor can blame
exactly that code or phase if the process dies or hangs; a version it blames is marked
bad in the history before the next game starts, so that game runs without it.

A render callable may raise: the frame then publishes nothing (the compositor reprojects
and later excludes the layer; the supervisor restarts a game that stops publishing).
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.contracts.gpu_layer import GpuImagesOffer
from engine.contracts.handoff import (
    EXIT_UNSTOPPABLE,
    CodeKind,
    HeartbeatWriter,
    Phase,
    PoseHandoffReader,
    RunningNow,
)
from engine.contracts.layer import ImageSlot, LayerSpec, LayerWriter
from engine.game import Engine, FrameInfo, install_stop_signals
from engine.launcher.containment import (
    ReportChannel,
    contain_game,
    die_with_parent,
    keep_fd,
    set_process_name,
)
from engine.policy import Fault
from engine.pose.base import EyeView
from engine.pose.handoff import HandoffPacer, HandoffPoseSource
from engine.scheduler.pacing import ComposeTimes, compose_times
from engine.scheduler.scheduler import SchedulePolicy
from engine.scheduler.stats import KEEP_FRAMES, LAST_RUN_FRAMES, FrameRecorder, save_frame_times
from engine.world.checkpoint import CheckpointError
from engine.world.checkpointer import Checkpointer, write_atomically
from engine.world.ring import DEFAULT_MAX_BYTES, CheckpointRing
from engine.world.world import World

#: Draws one frame: ``render(frame, eyes, slot)`` fills ``slot`` (both eyes) for ``eyes``.
Render = Callable[[int, tuple[EyeView, ...], ImageSlot], None]
#: Makes a game's render callable once the engine exists: ``factory(engine, spec)``.
#: The pixels go in ``spec.format``'s channel order (BGRA8 unless the compositor was
#: configured otherwise): ``rgba[..., spec.format.rgba_order]`` converts.
RenderFactory = Callable[[Engine, LayerSpec], Render]

DEFAULT_RENDER = "engine.launcher.game_process:fill_renderer"
#: The signal the supervisor sends a hung game so that faulthandler writes where each
#: thread is into the crash block (then it kills the game).
DUMP_SIGNAL = signal.SIGUSR2
#: Longest one system call may run in a preview game before it is interrupted.
PREVIEW_HARD_LIMIT_NS = 250_000_000
#: ``GameConfig.render`` value that draws with the engine's own render system
#: (``systems/render.py``: every Transform + Mesh + Material, both eyes, live shaders).
RENDER_SYSTEM = "system"


@dataclass(frozen=True)
class GameConfig:
    """How the supervisor starts a game process (picklable).

    ``render`` is :data:`RENDER_SYSTEM` (the engine's render system) or names a
    :data:`RenderFactory` as ``"module:attribute"``.
    ``probation_frames`` overrides the scheduler's probation length (tests shorten it).
    ``console`` shows the live systems table; ``plot_path`` writes per-system frame times
    as a PNG when the game stops. ``memory_limit`` is the most private memory the game
    may commit, in bytes (``None``: no limit; see
    :func:`engine.launcher.containment.limit_memory`). ``rewind_s`` is how far back
    ``engine rewind`` can go (checkpoints kept, at most ``rewind_max_bytes`` of them on disk).
    """

    project_dir: str
    checkpoint_path: str
    restarted: bool = False
    memory_limit: int | None = None
    render: str = DEFAULT_RENDER
    checkpoint_interval_s: float = 1.0
    probation_frames: int | None = None
    watch: bool = True
    pacer_timeout_s: float = 0.1
    console: bool = False
    plot_path: str | None = None
    stats_path: str | None = None  # where the engine's stats go when it stops cleanly
    rewind_s: float = 60.0
    rewind_max_bytes: int = DEFAULT_MAX_BYTES
    #: ``"live"`` or ``"preview"`` (a copy of the world running candidates; see
    #: :mod:`engine.launcher.vetting`): lower CPU priority, answers ``vet``.
    role: str = "live"
    #: The engine's own state (history, control socket, run file); None: PROJECT/.engine.
    state_dir: str | None = None
    #: Live game under ``--vet``: saves wait for vetting (every module and shader held).
    vet: bool = False
    #: Preview of only these modules (the others run their live versions); None: all.
    preview_modules: tuple[str, ...] | None = None
    #: The engine's other processes (compositor, warden; for a preview, the live game) the
    #: kernel keeps this game from signalling, besides its parent, the supervisor (see
    #: :func:`engine.launcher.containment.fence_signals`).
    protect: tuple[int, ...] = ()


def _process_name(role: str) -> str:
    """What ``ps`` and ``top`` show for a game of ``role``: ``game``, ``game-preview``."""
    return "game" if role == "live" else f"game-{role}"


def load_render_factory(path: str) -> RenderFactory:
    """Import ``"module:attribute"``. Raises ``ImportError``/``AttributeError`` if absent."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def fill_renderer(engine: Engine, spec: LayerSpec) -> Render:
    """A CPU stand-in for the render system: a fixed test pattern plus a moving bar.

    Costs one copy of the image per frame (about 2 ms for two 1280x720 eyes here), which
    is roughly what reading back a GPU-rendered frame costs.
    """
    h, w = spec.height, spec.width
    pattern = np.zeros(spec.shape, np.uint8)
    pattern[..., 0] = np.linspace(40, 200, w, dtype=np.uint8)[None, None, :]
    pattern[..., 1] = np.linspace(40, 160, h, dtype=np.uint8)[None, :, None]
    pattern[..., 2] = 90
    pattern[:, :: max(1, h // 12), :, :3] = 230  # a grid, so warps are visible
    pattern[:, :, :: max(1, w // 16), :3] = 230
    pattern[..., 3] = 255
    pattern = pattern[..., spec.format.rgba_order].copy()  # in the layer's channel order
    bar = max(1, w // 64)

    def render(frame: int, eyes: tuple[EyeView, ...], slot: ImageSlot) -> None:
        np.copyto(slot.pixels, pattern)
        x = (frame * bar) % w
        slot.pixels[:, :, x : x + bar, :3] = 255

    return render


class LayerPublisher:
    """The after-frame hook: render and publish the layer, beat, maybe checkpoint."""

    def __init__(
        self,
        writer: LayerWriter | None,
        render: Render | None,
        heartbeat: HeartbeatWriter,
        checkpointer: Checkpointer,
    ) -> None:
        self.writer = writer
        self.render = render
        self.heartbeat = heartbeat
        self.running: RunningNow = heartbeat.running
        self.checkpointer = checkpointer
        self.render_errors = 0

    def __call__(self, engine: Engine) -> None:
        info = engine.world.resources.get(FrameInfo)
        stage = engine.render_stage
        if stage is not None:  # the render system drew and published during the frame
            if stage.last_frame == engine.frame:
                self.heartbeat.published_frame = engine.frame
        elif self.writer is not None and self.render and info is not None and info.pose:
            eyes = info.pose.eyes[: self.writer.spec.eyes]
            slot = self.writer.acquire()
            self.running.phase(Phase.RENDER)
            try:
                self.render(engine.frame, eyes, slot)
            except Exception as exc:  # a broken renderer must not stop the heartbeat
                self.render_errors += 1
                if self.render_errors == 1:
                    engine.report(f"game: render failed, not publishing: {exc!r}")
            else:
                self.writer.publish(slot, engine.frame, eyes, time.monotonic_ns())
                self.heartbeat.published_frame = engine.frame
        now = time.monotonic_ns()
        self.running.phase(Phase.CHECKPOINT)
        cp = self.checkpointer
        cp.maybe_take(engine, now)
        hb = self.heartbeat  # checkpoint_ns: what the newest one cost this (frame) thread
        hb.checkpoints, hb.checkpoint_frame = cp.taken, cp.last_frame
        hb.checkpoint_ns, hb.checkpoint_bytes = cp.last_dump_ns, cp.last_bytes
        self.running.phase(Phase.FRAME)
        self.heartbeat.beat(engine.frame, now)


def game_main(
    config: GameConfig,
    pose_fd: int,
    heartbeat_fd: int,
    layer_fd: int,
    crash_fd: int,
    spec: LayerSpec,
    gpu_images: GpuImagesOffer | None = None,
    input_fd: int | None = None,
    go_fd: int | None = None,
    status_fd: int | None = None,
) -> None:
    """The game process's entry point (``spawn`` context). Runs until SIGTERM.

    ``input_fd`` is the compositor's input block (read-only): ``world.input`` comes from it.
    ``status_fd`` is the status block the mirror's HUD reads: the game writes its systems
    table there four times a second (:mod:`engine.contracts.status`).

    ``gpu_images`` is the compositor's offer of the layer's images in GPU memory: the
    render system draws straight into them where this process's GL can import them (a
    render factory draws CPU pixels, so it keeps the shared block); the path taken is
    reported at start. Exceptions before the first frame propagate: the process exits
    non-zero and the supervisor treats it like any other death (and blames what the
    heartbeat names).

    With ``go_fd`` this is a **warm standby**: it does everything that does not depend on
    the world or on another game having stopped — interpreter and imports, containment,
    the GL context, the layer's mapping and GPU images, the project's shader programs
    (:meth:`~engine.render.stage.RenderStage.warm_up_standby`) — then says
    :attr:`Phase.STANDBY` in its heartbeat and waits for one line on ``go_fd``: a JSON
    object of :class:`GameConfig` fields to change (``{}`` for none). Only then does it
    touch the layer, restore the checkpoint and load the modules. End of file on ``go_fd``
    (the supervisor dismissed it, or is gone) ends the process quietly.
    """
    parent = multiprocessing.parent_process()
    if parent is not None:  # first: nothing of the game outlives the supervisor
        die_with_parent(parent.pid, parent.sentinel, group=True)
    heartbeat = HeartbeatWriter(heartbeat_fd)
    running = heartbeat.running
    running.user_dir = str(Path(config.project_dir).resolve() / "systems")
    fence = contain_game(config.memory_limit, running.note_exit, config.protect)
    set_process_name("game-standby" if go_fd is not None else _process_name(config.role))
    # A segfault or abort leaves every thread's Python stack in the crash block, and so
    # does DUMP_SIGNAL (the supervisor's, before it kills a hung game): file and line.
    crash = keep_fd(crash_fd)  # out of the way of user code closing fds
    os.close(crash_fd)
    faulthandler.enable(file=crash, all_threads=True)
    faulthandler.register(DUMP_SIGNAL, file=crash, all_threads=True, chain=False)
    # The supervisor stops the game (SIGTERM) when it decides to; a terminal's Ctrl-C no
    # longer reaches it (its own session) and is ignored anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report = ReportChannel()
    if not fence.startswith("seccomp"):
        report(f"game: {fence}")
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    if os.environ.get("PYTHONSAFEPATH") == "engine":  # set by the `engine` command only
        del os.environ["PYTHONSAFEPATH"]  # for the engine's own processes, not the user's
    reader = PoseHandoffReader(pose_fd)
    use_render_system = config.render == RENDER_SYSTEM
    running.phase(Phase.START)
    layer = prepare_layer(config, spec, layer_fd, gpu_images, standby=go_fd is not None)
    if go_fd is not None:
        running.phase(Phase.STANDBY)
        changes = wait_for_go(go_fd)
        if changes is None:
            layer.close()
            return
        config = replace(config, **changes)
        set_process_name(_process_name(config.role))
        running.phase(Phase.START)
    went_ns = time.monotonic_ns()
    policy = SchedulePolicy()
    if config.probation_frames is not None:
        policy.probation_frames = config.probation_frames
    if config.role == "preview":
        _lower_priority()
        # The preview is where slowness is shown, not cut: a slow system keeps running
        # (the preview's frame rate and the candidate's times say how slow), while a
        # runaway one is still stopped (PREVIEW_HARD_LIMIT_NS) and faults still count.
        policy.over_budget_frames = 1 << 30
        policy.hard_limit_ns = PREVIEW_HARD_LIMIT_NS
    running.phase(Phase.RESTORE)
    checkpoint_path = Path(config.checkpoint_path)
    # A new world (not a restart, nothing to resume) is not rewound into an older one's.
    fresh = not config.restarted and not checkpoint_path.is_file()
    world = restore_world(checkpoint_path, report)
    state_dir = Path(config.state_dir) if config.state_dir else None
    baseline = None
    if config.role == "preview":
        from engine.launcher.vetting import history_baseline

        history_root = (state_dir or Path(config.project_dir) / ".engine") / "history"
        baseline = history_baseline(history_root)
    engine = Engine(
        config.project_dir,
        world=world,
        policy=policy,
        pacer=HandoffPacer(reader, timeout_ns=round(config.pacer_timeout_s * 1e9)),
        pose_source=HandoffPoseSource(reader),
        report=report,
        running=running,
        render=layer.settings if layer.stage is None else None,
        layer_fd=layer_fd if use_render_system else None,
        render_stage=layer.stage,
        state_dir=state_dir,
        hold=_held(config),
        start_notices=not config.restarted,  # said once, by the run's first game
    )
    from engine.launcher import vetting

    if baseline is not None:
        vetting.attach_preview(engine, baseline)
    else:
        vetting.attach_promote(engine)
    ready_ms = (time.monotonic_ns() - went_ns) / 1e6
    how = "the warm standby took over" if go_fd is not None else "started"
    engine.report(f"game: {how}; world and modules ready in {ready_ms:.0f} ms")
    if engine.render_stage is not None:
        engine.report(f"game: layer images in {engine.render_stage.image_path}")
    if gpu_images is not None:
        gpu_images.close()  # imported (or refused): the imports hold the memory now
    writer = layer.writer
    if writer is not None:
        writer.attach()
    ring = CheckpointRing(
        checkpoint_path.parent / "checkpoints",
        keep=max(1, math.ceil(config.rewind_s / config.checkpoint_interval_s) + 1),
        max_bytes=config.rewind_max_bytes,
        fresh=fresh,
        remove_in_background=True,
    )

    def compose_now() -> ComposeTimes | None:  # read by the checkpoint's forked child
        pose = reader.read()
        if pose is None:
            return None
        return compose_times(pose.display_time_ns, pose.period_ns, pose.published_ns)

    checkpointer = Checkpointer(
        checkpoint_path,
        round(config.checkpoint_interval_s * 1e9),
        ring=ring,
        report=engine.report,
        compose_times=compose_now,
    )
    checkpointer.last_ns = time.monotonic_ns()  # the restored state is already on disk
    engine.checkpoint_ring = ring

    def checkpoint_now(args: dict[str, Any]) -> dict[str, Any]:
        # For a preview: a fresh copy of the world, written at the next frame boundary by a
        # forked child like any checkpoint. The caller waits for the count to pass "taken".
        checkpointer.last_ns = None
        return {"ok": True, "taken": checkpointer.taken}

    from engine.game import Command

    engine.commands["checkpoint_now"] = Command(checkpoint_now)
    render = None if use_render_system else layer.factory(engine, spec)
    engine.after_frame.append(LayerPublisher(writer, render, heartbeat, checkpointer))
    if input_fd is not None:
        from engine.contracts.input import InputReader
        from engine.input.state import attach_input

        attach_input(engine, InputReader(input_fd))
    if status_fd is not None:
        engine.after_frame.append(StatusPublisher(status_fd))
    install_stop_signals(engine)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # SIGTERM only, as above
    from engine.launcher.console import attach_live_console

    live = attach_live_console(engine, enabled=config.console)
    unstoppable: list[tuple[Fault, str, int]] = []

    def end_for_unstoppable(fault: Fault, file: str, line: int) -> None:
        # A thread that swallows every stop: the game stops after this frame, writes its
        # final checkpoint, and ends itself naming the code (below).
        unstoppable.append((fault, file, line))
        engine.stop()

    engine.loader.on_unstoppable = end_for_unstoppable
    # Every frame's per-system times: the last minute is kept for `engine stats --plot`,
    # ten for a --plot at exit.
    engine.recorder = FrameRecorder(90 * 600 if config.plot_path else KEEP_FRAMES)
    clean = False
    try:
        with live:
            engine.run(watch=config.watch)
        clean = True
    finally:
        if not clean:
            # Something escaped the frame loop (KeyboardInterrupt raised by a system...):
            # the running-now word still names it; keep that as what ended the game.
            running.note_exit(0)
        running.phase(Phase.STOP)
        checkpointer.close(world=engine.world, frame=engine.frame)  # streamed, not bytes
        if config.stats_path:
            write_atomically(Path(config.stats_path), json.dumps(engine.stats()).encode())
        keep_frame_times(engine)
        if config.plot_path and engine.recorder is not None and len(engine.recorder):
            from engine.scheduler.plot import plot_frame_times

            plot_frame_times(engine.recorder, Path(config.plot_path))
        engine.close()
        if unstoppable:
            end_unstoppable(running, *unstoppable[0])


def end_unstoppable(running: RunningNow, fault: Fault, file: str, line: int) -> None:
    """End the game at once for a thread it cannot stop (the policy's restart-without),
    its last word naming the module version at ``file:line``: the supervisor restarts it
    from the final checkpoint without that version. Never returns."""
    running.main[0] = running.register(
        CodeKind.MODULE, fault.module or "?", fault.version, None, file, line
    )
    running.note_exit(0)  # what ran is what asked
    # Not the noting os._exit (containment.note_exits): it would name this line instead.
    getattr(os._exit, "unnoted", os._exit)(EXIT_UNSTOPPABLE)


def keep_frame_times(engine: Engine) -> None:
    """Keep the engine's recorded frames in its state folder (``PROJECT/.engine``, where
    ``engine stats --plot`` reads them; a preview game's own folder); a failure to write
    them is said in one line, never raised."""
    if engine.recorder is None or not len(engine.recorder):
        return
    try:
        save_frame_times(engine.recorder, engine.state_dir / LAST_RUN_FRAMES.name)
    except OSError as exc:
        engine.report(f"engine: could not keep the run's frame times for `engine stats`: {exc}")


class StatusPublisher:
    """The after-frame hook that writes the systems table into the status block (for the
    mirror's HUD) every ``STATUS_PERIOD_NS``."""

    def __init__(self, fd: int) -> None:
        from engine.contracts.status import StatusWriter

        self.writer = StatusWriter(fd)
        self.next_ns = 0

    def __call__(self, engine: Engine) -> None:
        from engine.contracts.status import STATUS_PERIOD_NS, systems_lines

        now = time.monotonic_ns()
        if now < self.next_ns:
            return
        self.next_ns = now + STATUS_PERIOD_NS
        self.writer.publish(systems_lines(engine.scheduler.snapshot()))


def _held(config: GameConfig) -> Callable[[str], bool] | None:
    """Which modules and shader files keep their version (see ``Engine(hold=...)``)."""
    if config.vet:
        return lambda name: True
    if config.preview_modules is not None:
        chosen = frozenset(config.preview_modules)
        return lambda name: name not in chosen
    return None


def _lower_priority() -> None:
    """A preview gets what the live game and the compositor leave: nice +10, and its GL
    context asks for the low GPU priority (every game's default)."""
    try:
        os.nice(10)
    except OSError:
        pass


@dataclass
class PreparedLayer:
    """How a game process will draw and publish, made before it knows its world.

    ``stage``: the render system's stage (``render="system"`` in a standby; ``None`` in a
    game started directly, whose engine makes it from ``settings``). ``writer``: the
    shared-memory writer a render factory publishes with, and ``factory`` that factory.
    """

    settings: Any = None
    stage: Any = None
    writer: LayerWriter | None = None
    factory: RenderFactory | None = None

    def close(self) -> None:
        if self.stage is not None:
            self.stage.close()
        if self.writer is not None:
            self.writer.close()


def prepare_layer(
    config: GameConfig,
    spec: LayerSpec,
    layer_fd: int,
    gpu_images: GpuImagesOffer | None,
    *,
    standby: bool,
) -> PreparedLayer:
    """What draws the game's layer. A standby makes it all now, without touching the
    layer: the render system's stage (GL context, framebuffers, GPU images imported,
    shader programs built ahead) or the render factory's writer (mapped, not attached).
    A game started directly leaves the stage to its engine, as it needs the history."""
    if config.render != RENDER_SYSTEM:
        writer = LayerWriter(layer_fd, spec, attach=False)
        return PreparedLayer(writer=writer, factory=load_render_factory(config.render))
    from engine.render.stage import RenderSettings, RenderStage

    settings = RenderSettings(
        spec.width, spec.height, pixel_format=spec.format, layer_images=gpu_images
    )
    if not standby:
        return PreparedLayer(settings=settings)
    stage = RenderStage(settings, Path(config.project_dir), layer_fd=layer_fd, attach=False)
    stage.warm_up_standby()
    return PreparedLayer(settings=settings, stage=stage)


def wait_for_go(go_fd: int) -> dict[str, Any] | None:
    """Block until the supervisor's go: one line of JSON (an object of GameConfig fields to
    change). ``None`` at end of file. A line that is not such an object is refused
    (``ValueError``: the process exits and the supervisor starts a cold game instead)."""
    data = b""
    with os.fdopen(go_fd, "rb", buffering=0, closefd=True) as pipe:
        while not data.endswith(b"\n"):
            chunk = pipe.read(4096)
            if not chunk:
                return None
            data += chunk
    changes = json.loads(data)
    fields = set(GameConfig.__dataclass_fields__)
    if not isinstance(changes, dict) or not set(changes) <= fields:
        raise ValueError(f"standby: not a go order: {data[:200]!r}")
    return changes


def restore_world(path: Path, report: Callable[[str], None]) -> World | None:
    """The world in the checkpoint at ``path``, or ``None`` (no file, or unusable).

    Components of system modules come back as placeholders that the loader turns into
    its classes as each module loads, so ``on_load`` hooks see the restored world.
    """
    if not path.is_file():
        return None
    try:
        world = World.restore(path.read_bytes())
    except (CheckpointError, OSError) as exc:
        report(f"game: checkpoint unusable, starting fresh: {exc}")
        return None
    report(f"game: world restored from {path}")
    return world

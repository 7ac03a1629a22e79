"""The ``engine`` console command.

    engine run [PROJECT] [--frames N] [--stats-json PATH]   run a game (headless), live-editable
    engine new DIR                                           scaffold a game project
    engine history PROJECT MODULE                            list a module's versions
    engine undo|redo PROJECT MODULE                          move the active version
    engine enable PROJECT SYSTEM                             re-enable a disabled system

``undo``, ``redo`` and ``enable`` act on a running game (a request on its control socket,
``.engine/control.sock``, answered by the game) or, when none runs, on the project's
history directly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from engine.game import (
    Engine,
    install_stop_signals,
    running_pid,
    send_command,
    user_copy_of_example,
)
from engine.loader.history import ProjectHistory, VersionHistory
from engine.loader.watcher import SHADER_SUFFIXES

SCAFFOLD_GAME = '''"""{name}: a game built on the All-Source Engine.

``setup`` runs once, for a new world. Everything after that lives in systems/, which you
can edit while the game runs.
"""

from engine.render.components import Material, Mesh, Transform
from systems.motion import Spin


def setup(world):
    world.create_entity(
        Transform(position=(0.0, 1.5, -3.0)),
        Mesh("cube"),
        Material(color=(0.9, 0.3, 0.2, 1.0)),
        Spin(speed=1.0),
    )
'''

SCAFFOLD_SYSTEM = '''"""A system module: edit it while the game runs.

A broken save never stops play: the last working version keeps running.
"""

import engine
from engine.render.components import Transform


@engine.component
class Bob:
    height: float = 0.2
    t: float = 0.0


@engine.system(order=0)
def bob(world, dt):
    for _, (t, b) in world.get_components(Transform, Bob):
        b.t += dt
'''


def _project(arg: str | None) -> Path:
    return Path(arg) if arg else user_copy_of_example()


def _unit(project: Path, name: str) -> VersionHistory:
    """The history of a system module (``physics``) or a shader file (``basic.frag``)."""
    if name.endswith(SHADER_SUFFIXES):
        return ProjectHistory(project).unit("shaders", name, suffix=Path(name).suffix)
    return ProjectHistory(project).unit("systems", name)


def cmd_run(args: argparse.Namespace) -> int:
    """Run under the supervisor: a compositor process and a restartable game process."""
    if args.single_process:
        return cmd_run_single(args)
    from engine.compositor.process import CompositorConfig
    from engine.launcher.game_process import DEFAULT_RENDER, RENDER_SYSTEM
    from engine.launcher.supervisor import Supervisor
    from engine.render.stage import RenderSettings

    project = _project(args.project)
    size = RenderSettings.parse_size(args.size)
    supervisor = Supervisor(
        project,
        render=DEFAULT_RENDER if args.no_render else RENDER_SYSTEM,
        compositor=CompositorConfig(
            eye_width=size.width,
            eye_height=size.height,
            capture_path=args.capture,
            window=args.window,
        ),
        watch=not args.no_watch,
        console=not args.quiet,
        plot_path=args.plot,
        resume=args.resume,
    )
    print(
        f"engine: running {project} under the compositor at 90 Hz, 2x{size.width}x"
        f"{size.height}, {'a mirror window' if args.window else 'headless'}; edit "
        f"{project / 'systems'} live (Ctrl-C to stop)"
    )
    install_supervisor_signals(supervisor)
    stats = flatten_stats(supervisor.run(frames=args.frames))
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(stats, indent=1))
        print(f"engine: stats written to {args.stats_json}")
    comp = stats.get("compositor") or {}
    print(
        f"engine: compositor {comp.get('frames', 0)} frames ({comp.get('missed', 0)} missed), "
        f"game {stats.get('frames', 0)} frames, {len(stats.get('restarts', []))} restarts"
    )
    if args.capture:
        print(f"engine: last composited frame written to {args.capture}")
    return 0 if not stats.get("compositor_failure") else 1


def flatten_stats(supervised: dict) -> dict:
    """The game's own stats at the top (``frames``, ``systems``, ``swaps``, ``world``) plus
    the supervisor's (``compositor``, ``restarts``, …), as ``--stats-json`` writes them."""
    game = supervised.get("game") or {}
    engine_stats = game.get("engine") or {}
    out = {**engine_stats, **{k: v for k, v in supervised.items() if k != "game"}}
    out["game"] = {k: v for k, v in game.items() if k != "engine"}
    out.setdefault("frames", game.get("frames", 0))
    return out


def install_supervisor_signals(supervisor: object) -> None:
    """SIGTERM stops the supervisor like Ctrl-C (its run loop catches KeyboardInterrupt)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_run_single(args: argparse.Namespace) -> int:
    """Everything in this process (no compositor, no restarts): for debugging and profiling."""
    from engine.launcher.console import attach_live_console
    from engine.render.stage import RenderSettings

    project = _project(args.project)
    render = None if args.no_render else RenderSettings.parse_size(args.size)
    try:
        engine = Engine(project, fixed_dt=args.fixed_dt, render=render)
    except Exception as exc:  # no EGL/GL here: the game still runs, without pictures
        if render is None:
            raise
        print(
            f"engine: rendering is off: {type(exc).__name__}: {exc}\n"
            "  (headless GL needs EGL and Mesa: apt-get install libegl1 libgl1-mesa-dri)"
        )
        engine = Engine(project, fixed_dt=args.fixed_dt)
    install_stop_signals(engine)
    stage = engine.render_stage
    drawing = f"drawing 2x{stage.spec.width}x{stage.spec.height}" if stage else "not drawing"
    print(
        f"engine: running {project} at 90 Hz in one process, {drawing}; "
        f"edit {project / 'systems'} live (Ctrl-C to stop)"
    )
    live = attach_live_console(engine, enabled=not args.quiet)
    if args.plot:
        from engine.scheduler.stats import FrameRecorder

        engine.recorder = FrameRecorder(args.frames or 90 * 600)
    try:
        with live:
            engine.run(frames=args.frames, watch=not args.no_watch)
    finally:
        stats = engine.stats()
        if args.capture and engine.render_stage is not None:
            engine.render_stage.capture(args.capture)
            print(f"engine: last frame (both eyes) written to {args.capture}")
        if args.plot and engine.recorder is not None and len(engine.recorder):
            from engine.scheduler.plot import plot_frame_times

            plot_frame_times(engine.recorder, Path(args.plot))
            print(f"engine: per-system frame times plotted to {args.plot}")
        if args.stats_json:
            Path(args.stats_json).write_text(json.dumps(stats, indent=1))
            print(f"engine: stats written to {args.stats_json}")
        print(
            f"engine: {stats['frames']} frames, {stats['world']['entities']} entities, "
            f"frame p99 {stats['frame_ms_p99']:.3f} ms, "
            f"{stats['frames_over_budget']} over budget"
        )
        engine.close()
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if root.exists() and any(root.iterdir()):
        print(f"engine: {root} exists and is not empty", file=sys.stderr)
        return 2
    (root / "systems").mkdir(parents=True, exist_ok=True)
    (root / "shaders").mkdir(exist_ok=True)
    (root / "game.py").write_text(SCAFFOLD_GAME.format(name=root.name))
    (root / "systems" / "bob.py").write_text(SCAFFOLD_SYSTEM)
    (root / ".gitignore").write_text(".engine/run.json\n.engine/control.sock\n")
    print(f"engine: new project in {root}; run it with: engine run {root}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    unit = _unit(Path(args.project), args.module)
    if not unit.versions:
        print(f"engine: {args.module} has no history in {args.project}", file=sys.stderr)
        return 1
    for v in unit.versions:
        mark = "*" if v.number == unit.active_number else " "
        disk = " (on disk)" if v.number == unit.disk_number else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.time))
        why = f"  {v.why}" if v.why else ""
        print(f"{mark} v{v.number:<4} {when}  {v.status:<9}{disk}{why}")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    project = Path(args.project)
    if running_pid(project) is not None:
        result = send_command(project, args.command, module=args.module)
        if not result.get("ok"):
            print(f"engine: {args.command} failed: {result.get('error')}", file=sys.stderr)
            return 1
        print(f"engine: {args.module} -> v{result['version']} (live)")
        return 0
    unit = _unit(project, args.module)
    target = unit.undo_target() if args.command == "undo" else unit.redo_target()
    if target is None:
        print(f"engine: {args.module}: nothing to {args.command}", file=sys.stderr)
        return 1
    unit.activate(target.number)
    print(f"engine: {args.module} -> v{target.number} (used at the next start)")
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    project = Path(args.project)
    if running_pid(project) is None:
        print("engine: systems start enabled; nothing to do for a stopped game")
        return 0
    result = send_command(project, "enable", system=args.system)
    if not result.get("ok"):
        print(f"engine: enable failed: {result.get('error')}", file=sys.stderr)
        return 1
    print(f"engine: {result['system']} enabled (on probation)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine", description="The All-Source Engine.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a game project (default: the bundled example)")
    r.add_argument("project", nargs="?")
    r.add_argument("--frames", type=int, default=None, help="stop after N frames")
    r.add_argument("--stats-json", help="write run statistics to this file at exit")
    r.add_argument("--no-watch", action="store_true", help="do not watch for edits")
    r.add_argument("--fixed-dt", type=float, default=None, help="constant dt per frame")
    r.add_argument("--quiet", action="store_true", help="no live console table")
    r.add_argument("--plot", help="write a PNG of per-system frame times at exit")
    r.add_argument("--size", default="640x480", help="per-eye render size (default 640x480)")
    r.add_argument("--no-render", action="store_true", help="run without drawing")
    r.add_argument("--capture", help="write the last frame, both eyes side by side, to a PNG")
    r.add_argument("--window", action="store_true", help="show both eyes in a mirror window")
    r.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    r.add_argument(
        "--single-process",
        action="store_true",
        help="run the game in this process, without the compositor (debugging, profiling)",
    )
    r.set_defaults(func=cmd_run)
    n = sub.add_parser("new", help="scaffold a new game project")
    n.add_argument("dir")
    n.set_defaults(func=cmd_new)
    h = sub.add_parser("history", help="list a module's versions")
    h.add_argument("project")
    h.add_argument("module")
    h.set_defaults(func=cmd_history)
    for name in ("undo", "redo"):
        m = sub.add_parser(name, help=f"{name} the active version of a module or shader file")
        m.add_argument("project")
        m.add_argument("module")
        m.set_defaults(func=cmd_move)
    e = sub.add_parser("enable", help="re-enable a disabled system of a running game")
    e.add_argument("project")
    e.add_argument("system")
    e.set_defaults(func=cmd_enable)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

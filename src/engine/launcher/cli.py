"""The ``engine`` console command.

    engine run [PROJECT] [--frames N] [--stats-json PATH]   run a game (headless), live-editable
    engine stats PROJECT [--plot PATH]                       the last run's systems table, plot
    engine new DIR                                           scaffold a game project
    engine history PROJECT MODULE                            list a module's versions
    engine undo|redo PROJECT MODULE                          move the active version
    engine enable PROJECT SYSTEM                             re-enable a disabled system
    engine doctor [PROJECT]                                  check the machine (and a project)
    engine rewind PROJECT SECONDS                            put back the world of then

``undo``, ``redo`` and ``enable`` act on a running game (a request on its control socket,
``.engine/control.sock``, answered by the game) or, when none runs, on the project's
history directly; ``rewind`` acts on a running game only.
"""

from __future__ import annotations

import argparse
import json
import os
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

from engine import Material, Mesh, Transform
from systems.bob import Bob
from systems.motion import Spin


def setup(world):
    world.create_entity(
        Transform(position=(0.0, 1.5, -3.0)),
        Mesh("cube"),
        Material(color=(0.9, 0.3, 0.2, 1.0)),
        Spin(speed=1.0),
        Bob(base_y=1.5),
    )
'''

SCAFFOLD_SYSTEM = '''"""A system module: edit it while the game runs.

Change SPEED or HEIGHT and save: the cube bobs differently from the next frame on. A
broken save never stops play: the last working version keeps running.
"""

import math

import engine
from engine import Transform

SPEED = 2.0  # radians per second: try 6.0
HEIGHT = 0.3  # metres up and down: try 0.8


@engine.component
class Bob:
    base_y: float = 1.5
    t: float = 0.0


@engine.system(order=0)
def bob(world, dt):
    for _, (t, b) in world.get_components(Transform, Bob):
        b.t += dt
        x, _, z = t.position
        t.position = (x, b.base_y + HEIGHT * math.sin(SPEED * b.t), z)
'''


def _project(arg: str | None) -> Path:
    return Path(arg) if arg else user_copy_of_example()


def _unit(project: Path, name: str) -> VersionHistory:
    """The history of a system module (``physics``) or a shader file (``basic.frag``)."""
    if name.endswith(SHADER_SUFFIXES):
        return ProjectHistory(project).unit("shaders", name, suffix=Path(name).suffix)
    return ProjectHistory(project).unit("systems", name)


def user_error(message: str) -> int:
    """Say what is wrong and what to do (one or two lines, on stderr); exit status 2."""
    print(f"engine: {message}", file=sys.stderr)
    return 2


def project_problem(project: Path) -> str | None:
    """Why ``project`` cannot be run (a missing path, a file), or ``None``."""
    if not project.exists():
        return (
            f"no project folder at {project}\n"
            f"  make one with: engine new {project}   (or give the folder holding game.py)"
        )
    if not project.is_dir():
        return (
            f"{project} is a file, not a project folder\n"
            "  give the folder that holds game.py and systems/"
        )
    return None


def display_problem() -> str | None:
    """Why ``--window`` cannot open a window here, or ``None``: asked of a child process
    (``engine doctor``'s display probe), so a missing or unreachable X display is found
    before the compositor starts."""
    from engine.launcher.doctor import OK, PROBE_TIMEOUT_S, Probe, display_check

    probe = None
    if os.environ.get("DISPLAY"):
        probe = Probe("display", timeout_s=PROBE_TIMEOUT_S["display"], env={"PYGLET_HEADLESS": "0"})
    check = display_check(probe.result() if probe else None)
    if check.status == OK:
        return None
    return (
        f"--window needs a display: {check.detail.split(': --window')[0]}\n"
        f"  run without --window (headless; --capture FILE saves a frame), or {check.fix}"
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Run under the supervisor: a compositor process and a restartable game process.

    Refused with exit status 2 and a line on stderr (never a traceback): a project path
    that is missing or a file, ``--window`` without a reachable display, a project another
    ``engine run`` holds (:mod:`engine.launcher.project_lock`), a bad ``--input-script``,
    a compositor that cannot start."""
    from engine.launcher.project_lock import ProjectBusy, ProjectLock

    project = _project(args.project)
    problem = project_problem(project)
    if problem is None and args.window and not args.single_process:
        problem = display_problem()
    if problem is not None:
        return user_error(problem)
    script = load_input_script(args.input_script)
    if script is None:
        return 2
    lock = ProjectLock(project)
    try:
        lock.acquire()
    except ProjectBusy as exc:
        return user_error(
            f"{exc}\n  stop that one first (Ctrl-C there, or kill {exc.pid or 'it'}); "
            "engine undo/redo/enable/rewind act on it as it runs"
        )
    try:  # held for this process's life: it is the supervisor
        if args.single_process:
            return cmd_run_single(args, script)
        return run_supervised(args, project)
    finally:
        lock.release()


def run_supervised(args: argparse.Namespace, project: Path) -> int:
    from engine.compositor.process import CompositorConfig
    from engine.launcher.game_process import DEFAULT_RENDER, RENDER_SYSTEM
    from engine.launcher.supervisor import Supervisor
    from engine.render.stage import RenderSettings

    size = RenderSettings.parse_size(args.size)
    supervisor = Supervisor(
        project,
        render=DEFAULT_RENDER if args.no_render else RENDER_SYSTEM,
        compositor=CompositorConfig(
            eye_width=size.width,
            eye_height=size.height,
            capture_path=args.capture,
            window=args.window,
            input_script=args.input_script,
        ),
        watch=not args.no_watch,
        console=not args.quiet,
        plot_path=args.plot,
        resume=args.resume,
        vet=args.vet,
        vet_frames=args.vet_frames,
    )
    print(
        f"engine: running {project} under the compositor at 90 Hz, 2x{size.width}x"
        f"{size.height}, {'a mirror window' if args.window else 'headless'}; edit "
        f"{project / 'systems'} live (Ctrl-C to stop)"
    )
    try:
        supervised = supervisor.run(frames=args.frames)
    except RuntimeError as exc:
        if "compositor did not start" not in str(exc):
            raise
        return user_error(f"{exc}\n  `engine doctor` says what this machine lacks")
    stats = flatten_stats(supervised)
    write_last_run(project, stats)
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(stats, indent=1))
        print(f"engine: stats written to {args.stats_json}")
    print(f"engine: {run_summary(stats)}")
    if args.capture:
        print(f"engine: last composited frame written to {args.capture}")
    return 0 if not stats.get("compositor_failure") else 1


def run_summary(stats: dict) -> str:
    """The closing line of a supervised run, from :func:`flatten_stats`' dict: display
    frames the compositor presented, and game frames across every game process."""
    comp = stats.get("compositor") or {}
    restarts = len(stats.get("restarts", []))
    games = f" in {restarts + 1} game processes" if restarts else ""
    return (
        f"compositor presented {comp.get('frames', 0)} frames ({comp.get('missed', 0)} missed); "
        f"the game ran {stats.get('frames', 0)} frames{games}, "
        f"{restarts} restart{'s' if restarts != 1 else ''}"
    )


#: Where a run's stats are kept for ``engine stats``, in the project.
LAST_RUN = Path(".engine") / "last-run.json"


def write_last_run(project: Path, stats: dict) -> None:
    """Keep ``stats`` as the project's last run (``engine stats``); a failure to write
    it is said in one line, never raised: the run itself went well."""
    try:
        (project / LAST_RUN).parent.mkdir(parents=True, exist_ok=True)
        (project / LAST_RUN).write_text(json.dumps(stats, indent=1))
    except OSError as exc:
        print(f"engine: could not keep the run's stats for `engine stats`: {exc}")


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the last run's stats (``PROJECT/.engine/last-run.json``, written when
    ``engine run`` stops): the closing line, the systems table and the swap counts; with
    ``--plot PATH``, also draw each system's time per frame over the run's last minute
    (``.engine/last-run-frames.json``) to a PNG. Exit status 1, in one line, when there
    are none; 2 for a bad project path or a plot that cannot be drawn (matplotlib missing,
    a folder that cannot be written)."""
    from rich.console import Console

    from engine.launcher.console import SystemsTable

    project = Path(args.project)
    problem = project_problem(project)
    if problem is not None:
        return user_error(problem)
    path = project / LAST_RUN
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"engine: no stats for {project} yet: `engine run {project}` writes them as it stops")
        return 1
    except (OSError, ValueError) as exc:
        print(f"engine: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
    print(f"engine: last run of {project}, stopped {when}")
    if "compositor" in stats:
        print(f"engine: {run_summary(stats)}")
    Console(width=100, soft_wrap=False).print(SystemsTable(title="systems").render(stats))
    counts = stats.get("swap_counts") or {}
    if counts:
        print(f"swaps: {counts.get('total', 0)} in all, {counts.get('failed', 0)} failed")
    for r in stats.get("restarts", []):
        print(f"restart at {r.get('at_s', 0):.1f} s: {r.get('message') or r.get('cause')}")
    return plot_last_run(project, Path(args.plot)) if args.plot else 0


def plot_last_run(project: Path, path: Path) -> int:
    """Draw the per-system frame times of ``project``'s last run to ``path`` (a PNG) and
    say so; the exit status (0 when drawn), with one line saying why not."""
    from engine.scheduler.stats import LAST_RUN_FRAMES, load_frame_times

    try:
        recorder = load_frame_times(project / LAST_RUN_FRAMES)
    except FileNotFoundError:
        print(
            f"engine: no frame times for {project} yet: `engine run {project}` keeps the "
            "last minute's as it stops"
        )
        return 1
    except (OSError, ValueError) as exc:
        print(f"engine: cannot read {project / LAST_RUN_FRAMES}: {exc}", file=sys.stderr)
        return 1
    from engine.scheduler.plot import plot_frame_times

    try:
        plot_frame_times(recorder, path, title=f"{project.resolve().name}: frame time by system")
    except (RuntimeError, ValueError) as exc:  # no matplotlib; no frames
        return user_error(str(exc))
    except OSError as exc:
        return user_error(f"cannot write the plot: {exc}")
    print(f"engine: {len(recorder)} frames of per-system times plotted to {path}")
    return 0


def flatten_stats(supervised: dict) -> dict:
    """The game's own stats at the top (``systems``, ``swaps``, ``world``) plus the
    supervisor's (``compositor``, ``restarts``, …), as ``--stats-json`` writes them.

    ``frames`` is the game frames of every game process of the run (a restarted game's
    count goes on); the last process's own count is ``game.last_process_frames``."""
    game = supervised.get("game") or {}
    engine_stats = game.get("engine") or {}
    out = {**engine_stats, **{k: v for k, v in supervised.items() if k != "game"}}
    out["game"] = {k: v for k, v in game.items() if k != "engine"}
    out["game"]["last_process_frames"] = engine_stats.get("frames")
    out["frames"] = game.get("frames", engine_stats.get("frames", 0))
    return out


def load_input_script(path: str | None) -> list | None:
    """``--input-script``'s events (``[]`` without one), or ``None`` after saying in one
    line why the file cannot be played."""
    if not path:
        return []
    from engine.input.script import InputScriptError, load_script

    try:
        return load_script(path)
    except (InputScriptError, OSError, UnicodeDecodeError) as exc:
        print(f"engine: bad --input-script: {exc}", file=sys.stderr)
        return None


def cmd_run_single(args: argparse.Namespace, script: list | None = None) -> int:
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
    if script:
        from engine.input.script import drive_engine

        drive_engine(engine, script)
    stage = engine.render_stage
    drawing = f"drawing 2x{stage.spec.width}x{stage.spec.height}" if stage else "not drawing"
    print(
        f"engine: running {project} at 90 Hz in one process, {drawing}; "
        f"edit {project / 'systems'} live (Ctrl-C to stop)"
    )
    live = attach_live_console(engine, enabled=not args.quiet)
    from engine.launcher.game_process import keep_frame_times
    from engine.scheduler.stats import KEEP_FRAMES, FrameRecorder

    engine.recorder = FrameRecorder((args.frames or 90 * 600) if args.plot else KEEP_FRAMES)
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
        write_last_run(project, stats)
        keep_frame_times(engine)
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
        vetted = f"  ({v.vetted.describe()})" if v.vetted is not None else ""
        print(f"{mark} v{v.number:<4} {when}  {v.status:<9}{disk}{why}{vetted}")
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


def cmd_doctor(args: argparse.Namespace) -> int:
    """What this machine (and a project) gives the engine; see engine.launcher.doctor."""
    from engine.launcher.doctor import main as doctor

    return doctor(args.project)


def _ns_since_start() -> int:
    """How long ago this process started (Linux; 0 elsewhere): Python's start-up is part of
    what ``engine rewind`` must not count as the past."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # since boot
        return max(0, time.clock_gettime_ns(time.CLOCK_BOOTTIME) - round(started_s * 1e9))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def cmd_rewind(args: argparse.Namespace) -> int:
    project = Path(args.project)
    if running_pid(project) is None:
        print(f"engine: rewind acts on a running game; none runs on {project}", file=sys.stderr)
        return 1
    asked_ns = time.monotonic_ns() - _ns_since_start()  # when the user pressed enter
    result = send_command(project, "rewind", seconds=float(args.seconds), asked_ns=asked_ns)
    if not result.get("ok"):
        print(f"engine: rewind failed: {result.get('error')}", file=sys.stderr)
        return 1
    print(
        f"engine: world rewound {result['seconds']:.1f} s, to frame {result['frame']} "
        f"({result['entities']} entities)"
    )
    return 0


def supervisor_command(project: Path, op: str, timeout_s: float = 30.0, **args: object) -> dict:
    """Send ``op`` to the supervisor of the ``engine run`` on ``project``; its reply, or
    ``{"ok": False, "error": ...}`` when none answers."""
    from engine.contracts.control import ControlUnavailable, request

    try:
        return request(project / ".engine" / "supervisor.sock", {"op": op, **args}, timeout_s)
    except ControlUnavailable:
        return {"ok": False, "error": f"no `engine run` is running on {project}"}
    except (TimeoutError, OSError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}


def cmd_preview(args: argparse.Namespace) -> int:
    """Start a preview: what is on disk now (or only MODULEs) on a copy of the live world."""
    project = Path(args.project)
    reply = supervisor_command(project, "preview", modules=args.modules or None)
    if not reply.get("ok"):
        print(f"engine: preview failed: {reply.get('error')}", file=sys.stderr)
        return 1
    print(
        f"engine: preview starting beside the live game, on a fresh copy of its world; "
        f"`engine promote {args.project}` or `engine discard {args.project}`"
    )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    project = Path(args.project)
    reply = supervisor_command(project, "promote")
    if not reply.get("ok"):
        print(f"engine: promote failed: {reply.get('error')}", file=sys.stderr)
        return 1
    promoted = ", ".join(f"{n} v{v}" for n, v in reply["promoted"].items()) or "nothing"
    print(f"engine: promoted into the live game: {promoted}")
    for name, why in {**reply.get("refused", {}), **reply.get("rejected", {})}.items():
        print(f"engine: {name} not promoted: {why}")
    return 0


def cmd_discard(args: argparse.Namespace) -> int:
    reply = supervisor_command(Path(args.project), "discard")
    if not reply.get("ok"):
        print(f"engine: discard failed: {reply.get('error')}", file=sys.stderr)
        return 1
    print("engine: preview discarded; the live game keeps its versions")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine", description="The All-Source Engine.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a game project (default: the bundled example)")
    r.add_argument("project", nargs="?")
    r.add_argument(
        "--frames",
        type=int,
        default=None,
        metavar="N",
        help="stop once the compositor has presented N display frames (90 a second); the "
        "game runs fewer (it starts later, and a restart loses a few). With "
        "--single-process: N game frames",
    )
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
        "--input-script",
        metavar="FILE",
        help="play scripted key and mouse input (JSON lines; see docs/input.md)",
    )
    r.add_argument(
        "--single-process",
        action="store_true",
        help="run the game in this process, without the compositor (debugging, profiling)",
    )
    r.add_argument(
        "--vet",
        nargs="?",
        const="manual",
        choices=["manual", "auto"],
        help="saves go into a preview on a copy of the world, not the live game: promote "
        "them with `engine promote` (manual), or let clean ones go live by themselves (auto)",
    )
    r.add_argument(
        "--vet-frames",
        type=int,
        default=90,
        metavar="N",
        help="frames a candidate runs clean in the preview before --vet auto promotes it",
    )
    r.set_defaults(func=cmd_run)
    pv = sub.add_parser("preview", help="try what is on disk on a copy of a running game's world")
    pv.add_argument("project")
    pv.add_argument("modules", nargs="*", help="only these modules (default: every saved one)")
    pv.set_defaults(func=cmd_preview)
    pr = sub.add_parser("promote", help="swap the preview's candidates into the live game")
    pr.add_argument("project")
    pr.set_defaults(func=cmd_promote)
    ds = sub.add_parser("discard", help="drop the preview's candidates")
    ds.add_argument("project")
    ds.set_defaults(func=cmd_discard)
    st = sub.add_parser("stats", help="print the last run's statistics of a project")
    st.add_argument("project")
    st.add_argument(
        "--plot",
        metavar="PATH",
        help="also draw each system's time per frame (the run's last minute) to a PNG",
    )
    st.set_defaults(func=cmd_stats)
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
    d = sub.add_parser("doctor", help="check what this machine (and a project) gives the engine")
    d.add_argument("project", nargs="?", help="also check this project's modules and shaders")
    d.set_defaults(func=cmd_doctor)
    w = sub.add_parser("rewind", help="put back the world of a running game as it was then")
    w.add_argument("project")
    w.add_argument("seconds", type=float, help="how many seconds back (the last minute is kept)")
    w.set_defaults(func=cmd_rewind)
    return p


#: ``PYTHONSAFEPATH``'s value when the engine set it (see :func:`main`): the game process
#: takes it off again, so that user code's own subprocesses start as Python's do.
SAFE_PATH_MARK = "engine"


def main(argv: list[str] | None = None) -> int:
    """The ``engine`` command. Every Python process it starts (compositor, game, probes)
    starts with ``PYTHONSAFEPATH`` set: the working folder is not put first on its
    ``sys.path``, so a ``random.py`` or ``math.py`` there (a user's ``systems/``) cannot
    take the place of Python's own modules in the engine."""
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    os.environ.setdefault("PYTHONSAFEPATH", SAFE_PATH_MARK)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

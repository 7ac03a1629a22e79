"""How long a restart takes, with the warm standby game process and without it.

    python bench/restart.py [--kills 4] [--json PATH] [--project DIR]

For each project (a minimal one drawn by the CPU fill renderer, and the bundled demo drawn
by the engine's render system: GL context, shaders, meshes) and each way (``cold``: every
restart starts a new process; ``standby``: it takes the warm standby), the supervisor runs
the game under the compositor and the bench kills it with SIGKILL ``--kills`` times, each
time once the game has run 20 frames (and, with the standby, once the standby is ready).
A restart is timed from the moment the supervisor saw the death to the new game's first
frame (``RestartRecord.first_frame_ms``, on the supervisor's clock). The compositor's
missed frames over each run show what keeping a standby warm costs the frames shown.

Prints one table; the ratio column compares each standby row with the cold row of the
same project, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The compositor bench's crash project (a counter): run as a script, bench/ is on the path.
from compositor import CRASH_PROJECT_GAME, CRASH_PROJECT_SYSTEM

from engine.compositor.process import CompositorConfig
from engine.launcher.game_process import RENDER_SYSTEM
from engine.launcher.supervisor import Supervisor
from engine.policy import FailurePolicy, Settings

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "spinning_cubes"
EYE = (640, 360)


def minimal_project() -> Path:
    root = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    (root / "systems").mkdir()
    (root / "systems" / "count.py").write_text(CRASH_PROJECT_SYSTEM)
    (root / "game.py").write_text(CRASH_PROJECT_GAME)
    return root


def copy_project(source: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="bench-restart-")) / source.name
    shutil.copytree(source, root, ignore=shutil.ignore_patterns(".engine", "__pycache__"))
    return root


def run(project: Path, render: str, standby: bool, kills: int) -> dict:
    config = CompositorConfig(eye_width=EYE[0], eye_height=EYE[1], layers=(("game", *EYE),))
    # The same fault every time: no crash-loop back-off here.
    policy = FailurePolicy(Settings(loop_faults=10**9))
    sup = Supervisor(
        project,
        compositor=config,
        render=render,
        policy=policy,
        standby=standby,
        standby_delay_s=0.5,
        report=lambda m: None,
        watch=False,
    )
    started = time.monotonic()
    try:
        sup.start()
        sup.run_until(lambda: sup.game_frames > 120, 60)  # past probation: nothing blamed

        def ready() -> bool:
            warm = not standby or (sup.standby is not None and sup.standby.ready_ns is not None)
            return sup.game_frame >= 20 and warm

        done = 0
        while done < kills:
            if not sup.run_until(ready, 60):
                break
            os.kill(sup.game_pid, signal.SIGKILL)
            done += 1
            sup.run_until(lambda n=done: len(sup.restarts) >= n, 30)
            sup.run_until(lambda: sup.restarts[-1].first_frame_ms is not None, 30)
        stats = sup.stop()
    finally:
        if sup.compositor is not None:
            sup.stop()
    restarts = [r for r in stats["restarts"] if r["first_frame_ms"] is not None]
    times = [r["first_frame_ms"] for r in restarts]
    return {
        "kills": done,
        "restart_ms": times,
        "from_standby": sum(r["from_standby"] for r in restarts),
        "standby_ready_ms": stats["standby"]["ready_ms"],
        "missed": stats["compositor"]["missed"],
        "frames": stats["compositor"]["frames"],
        "seconds": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--project", type=Path, help="a project drawn by its render system")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    demo = args.project or DEMO
    cases = [
        ("minimal", minimal_project, "engine.launcher.game_process:fill_renderer"),
        (demo.name, lambda: copy_project(demo), RENDER_SYSTEM),
    ]
    results: dict[str, dict] = {}
    for name, make, render in cases:
        for way in ("cold", "standby"):
            results[f"{name} {way}"] = run(make(), render, way == "standby", args.kills)
    load = os.getloadavg()[0]
    print(
        f"restart: SIGKILL -> the new game's first frame (2 x {EYE[0]}x{EYE[1]}), "
        f"{args.kills} kills per row, load average {load:.1f}"
    )
    print(
        f"{'run':<24} {'kills':>5} {'standby':>7} {'p50 ms':>7} {'max ms':>7} "
        f"{'vs cold':>7} {'missed':>6} {'frames':>6}"
    )
    for key, r in results.items():
        times = r["restart_ms"]
        p50 = statistics.median(times) if times else float("nan")
        cold = results[key.replace("standby", "cold")]["restart_ms"]
        ratio = p50 / statistics.median(cold) if cold and times else float("nan")
        print(
            f"{key:<24} {r['kills']:>5} {r['from_standby']:>7} {p50:>7.0f} "
            f"{max(times, default=float('nan')):>7.0f} {ratio:>6.2f}x "
            f"{r['missed']:>6} {r['frames']:>6}"
        )
    ready = [ms for r in results.values() for ms in r["standby_ready_ms"]]
    if ready:
        print(
            f"standby warm-up (spawn -> ready): p50 {statistics.median(ready):.0f} ms, "
            f"max {max(ready):.0f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a preview cost the live game or the compositor anything? Surplus only.

    python bench/preview.py [--seconds 12] [--json PATH]

Runs, one after another, the supervisor with the compositor and a live game (the engine's
render system drawing a few cubes, 2 x 640x360) for ``--seconds``:

1. **alone** twice: the floor, and its noise (the difference between two identical runs);
2. **+ preview**: the same, with ``--vet`` and a candidate saved at the start that
   saturates its preview: its system spins 20 ms each frame (a preview measures slowness
   instead of cutting it, so it keeps doing so, at nice +10, with a low-priority GL
   context), so the preview's frame rate is well under 90 Hz.

For each run: frames the compositor presented and missed; the live game's frames and
frames over budget (from its own scheduler); the preview's frames. The target: the
"+ preview" row differs from "alone" by no more than the two "alone" rows differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from restart import copy_project  # run as a script, bench/ is on the path

from engine.compositor.process import CompositorConfig
from engine.launcher.game_process import RENDER_SYSTEM
from engine.launcher.supervisor import Supervisor

EYE = (640, 360)
ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "spinning_cubes"

SATURATE = """
import time
import engine

@engine.system
def spin_cpu(world, dt):
    end = time.perf_counter() + 0.020  # a whole frame and more, every frame
    while time.perf_counter() < end:
        pass
"""


def run(seconds: float, preview: bool) -> dict:
    project = copy_project(DEMO)
    sup = Supervisor(
        project,
        render=RENDER_SYSTEM,
        compositor=CompositorConfig(eye_width=EYE[0], eye_height=EYE[1], layers=(("game", *EYE),)),
        vet="manual" if preview else None,
        standby=False,
        watch=preview,
        report=lambda m: None,
    )
    preview_frames = 0
    try:
        sup.start()
        sup.run_until(lambda: sup.game_frames > 90 and sup.checkpoint_path.exists(), 60)
        if preview:
            (project / "systems" / "spin_cpu.py").write_text(SATURATE)
            sup.run_until(lambda: sup.preview is not None, 30)
        frames0, comp0 = sup.game_frames, sup.compositor_frame
        end = time.monotonic() + seconds
        sup.run_until(lambda: time.monotonic() >= end, seconds + 5)
        if sup.preview is not None:
            beat = sup.preview.heartbeat.read()
            preview_frames = beat.frame if beat is not None else 0
        stats = sup.stop()
    finally:
        if sup.compositor is not None:
            sup.stop()
    engine = stats["game"]["engine"] or {}
    return {
        "compositor_frames": stats["compositor"]["frames"],
        "missed": stats["compositor"]["missed"],
        "game_frames": stats["game"]["frames"],
        "over_budget": engine.get("frames_over_budget"),
        "frame_ms_p99": engine.get("frame_ms_p99"),
        "preview_frames": preview_frames,
        "preview_faults": len(stats["preview"]["faults"]),
        "measured_from": {"game_frame": frames0, "compositor_frame": comp0},
        "restarts": len(stats["restarts"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    results = {
        "alone": run(args.seconds, preview=False),
        "alone again": run(args.seconds, preview=False),
        "+ preview": run(args.seconds, preview=True),
    }
    print(
        f"preview cost: live game + compositor, {args.seconds:g} s after start-up, "
        f"2 x {EYE[0]}x{EYE[1]}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'run':<12} {'comp frames':>11} {'missed':>6} {'game frames':>11} "
        f"{'over budget':>11} {'p99 ms':>7} {'preview frames':>14} {'restarts':>8}"
    )
    for name, r in results.items():
        print(
            f"{name:<12} {r['compositor_frames']:>11} {r['missed']:>6} {r['game_frames']:>11} "
            f"{r['over_budget'] if r['over_budget'] is not None else '?':>11} "
            f"{r['frame_ms_p99'] or 0:>7.2f} {r['preview_frames']:>14} {r['restarts']:>8}"
        )
    a, b, p = results["alone"], results["alone again"], results["+ preview"]
    noise = abs(a["missed"] - b["missed"])
    cost = p["missed"] - max(a["missed"], b["missed"])
    print(
        f"missed frames with the preview: {cost:+d} beyond the worse floor run "
        f"(the floor's own noise: {noise}); "
        f"{'within' if cost <= noise else 'BEYOND'} the noise"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

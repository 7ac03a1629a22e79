"""Save → first frame running the new code, and frames lost to swapping.

Runs a real engine at 90 Hz on a temporary project with its file watcher. A second thread
saves a system module N times; each version stamps the moment it first runs into the
world. Then the same loop runs for as long again without saves (the baseline), and both
runs' frame times are compared.

    python bench/swap_latency.py [--saves 60]

Targets (issue 2): p50 ≤ 20 ms after the file event; 0 frames lost to swapping.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("PYGLET_HEADLESS", "1")

from engine import Engine  # noqa: E402
from engine.scheduler.stats import summarize  # noqa: E402

MODULE = """
import time
import engine

@engine.component
class Seen:
    tag: int = -1
    at_ns: int = 0

@engine.system
def stamp(world, dt):
    for _, (s,) in world.get_components(Seen):
        if s.tag != {tag}:
            s.tag, s.at_ns = {tag}, time.monotonic_ns()
    # a little work, like a real system
    total = 0
    for i in range(200):
        total += i * i
"""

GAME = """
from systems.stamp import Seen

def setup(world):
    world.create_entity(Seen())
"""


def run(project: Path, seconds: float, saves: int) -> dict:
    eng = Engine(project, report=lambda m: None)
    seen_cls = eng.loader.active["stamp"].components["systems.stamp:Seen"]
    frame_ns: list[int] = []
    starts: list[int] = []
    stamps: dict[int, int] = {}
    saved: dict[int, int] = {}

    def after(e: Engine) -> None:
        ((_, s),) = e.world.get_component(e.world.current_type(seen_cls))
        stamps.setdefault(s.tag, s.at_ns)

    eng.after_frame.append(after)
    real_step = eng.step

    def timed_step():
        t0 = time.monotonic_ns()
        starts.append(t0)
        out = real_step()
        frame_ns.append(time.monotonic_ns() - t0)
        return out

    eng.step = timed_step  # type: ignore[method-assign]
    path = project / "systems" / "stamp.py"

    def saver() -> None:
        interval = seconds / (saves + 1)
        for tag in range(1, saves + 1):
            time.sleep(interval)
            saved[tag] = time.monotonic_ns()
            path.write_text(MODULE.format(tag=tag))

    t = threading.Thread(target=saver) if saves else None
    frames = round(seconds * 90)
    if t:
        eng.start_watching()
        t.start()
    eng.run(frames=frames, watch=False)
    if t:
        t.join()
        eng.stop_watching()
    latencies = [stamps[k] - saved[k] for k in saved if k in stamps]  # ns
    engine_lat = [round(s.latency_ms * 1e6) for s in eng.swaps if s.kind == "edit" and s.ok]
    intervals = [(b - a) / 1e6 for a, b in zip(starts, starts[1:], strict=False)]
    result = {
        "frames": len(frame_ns),
        "over_budget": sum(1 for f in frame_ns if f > 11_111_111),
        "frame_p99_ms": summarize(frame_ns, 11_111_111).p99_ms,
        "late_slots": sum(1 for i in intervals if i > 2 * 11.111),
        "latencies": latencies,
        "engine_latencies": engine_lat,
        "missed_saves": saves - len(latencies),
    }
    eng.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--saves", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        project = Path(d)
        (project / "systems").mkdir()
        (project / "systems" / "stamp.py").write_text(MODULE.format(tag=0))
        (project / "game.py").write_text(GAME)
        swaps = run(project, args.seconds, args.saves)
        base = run(project, args.seconds, 0)
    lat = summarize(swaps["latencies"], 20_000_000)
    eng_lat = summarize(swaps["engine_latencies"], 20_000_000)
    print(
        f"swap latency over {len(swaps['latencies'])} saves ({swaps['missed_saves']} not seen), "
        f"python {sys.version.split()[0]}"
    )
    print(f"{'measure':<44}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    print(
        f"{'save -> first frame running new code':<44}{lat.p50_ms:>10.2f}"
        f"{lat.p99_ms:>10.2f}{lat.max_ms:>10.2f}"
    )
    print(
        f"{'file event (mtime) -> swap applied (engine)':<44}"
        f"{eng_lat.p50_ms:>10.2f}{eng_lat.p99_ms:>10.2f}{eng_lat.max_ms:>10.2f}"
    )
    print()
    print(f"{'run':<22}{'frames':>8}{'over 11.1 ms':>14}{'frame p99 ms':>14}{'late slots':>12}")
    for name, r in (("with swaps", swaps), ("baseline (no swaps)", base)):
        print(
            f"{name:<22}{r['frames']:>8}{r['over_budget']:>14}{r['frame_p99_ms']:>14.3f}"
            f"{r['late_slots']:>12}"
        )
    lost = swaps["over_budget"] - base["over_budget"]
    print(f"\nframes lost to swapping (over budget, swaps minus baseline): {max(lost, 0)}")


if __name__ == "__main__":
    main()

"""What loading heavy user code costs the frame loop: the worst frame while it loads.

Runs a real engine at 90 Hz with its file watcher, two healthy systems (a counter and a
"render" stand-in doing about 3 ms of Python work per frame), and three phases in the same
run, each printed as a row:

* bare: nothing loads (the baseline);
* 5 MB module: a module of 5 MB (assignments) is saved and loads;
* loop at import: a module whose code loops for ever is saved (refused after the load
  limit, 2 s).

For each: frames run and 90 Hz slots missed, the longest gap between two frame starts (a
frame loop starved of the GIL shows here: it cannot even wake up), the worst and the
99th-percentile frame (``step``), frames over the 11.1 ms budget, late frame starts (more
than two periods after the previous one), and the healthy systems disabled by then.

    python bench/load_stall.py [--mb 5] [--seconds 3]

Target (issue 9, hole 8): loading, however heavy, costs no frame: the loading phases'
worst gap, missed slots and frames over budget as the bare loop's. On a loaded machine
(other processes on the same cores) every phase, the bare loop too, shows the machine's
own stalls: compare rows of one run, and run it more than once.
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

HEALTHY = """
import engine

@engine.component
class Counter:
    value: int = 0

@engine.system
def count(world, dt):
    for _, (c,) in world.get_components(Counter):
        c.value += 1

@engine.system(budget_ms=6.0)
def render(world, dt):
    total = 0
    for i in range(30_000):   # about 3 ms of Python, like a light render system
        total += i * i
"""

GAME = """
from systems.healthy import Counter

def setup(world):
    world.create_entity(Counter())
"""

LOOP = "import engine\nwhile True:\n    pass\n"
PERIOD_NS = 11_111_111


def big_module(mb: float) -> str:
    lines = int(mb * 1e6 / 14)
    return "import engine\n" + "".join(f"V{i} = {i}\n" for i in range(lines))


class Phases:
    """Runs the phases from ``Engine.after_frame``: each saves its file (from another
    thread, as an editor would), lasts until its condition holds plus ``seconds``, and
    the last one stops the engine."""

    def __init__(self, plan: list[tuple[str, Path | None, str, object, float]]) -> None:
        self.plan = plan
        self.index = 0
        self.first = 0
        self.started = 0.0
        self.done_at: float | None = None
        self.spans: list[tuple[str, int, int, float]] = []  # name, first, end, load s

    def __call__(self, eng: Engine) -> None:
        name, path, text, until, seconds = self.plan[self.index]
        now = time.monotonic()
        frame = eng.frame
        if not self.started:
            self.started, self.first = now, frame
            if path is not None:
                threading.Thread(target=path.write_text, args=(text,)).start()
            return
        if self.done_at is None and until():
            self.done_at = now
        if self.done_at is not None and now - self.done_at >= seconds:
            self.spans.append((name, self.first, frame, self.done_at - self.started))
            self.index, self.started, self.done_at = self.index + 1, 0.0, None
            if self.index == len(self.plan):
                eng.stop()
        elif now - self.started > 120:
            raise SystemExit(f"phase {name!r} did not finish within 120 s")


def phase_stats(eng: Engine, frames: list[int], starts: list[int], a: int, b: int) -> dict:
    ns = frames[a:b]
    gaps = [y - x for x, y in zip(starts[a:b], starts[a + 1 : b], strict=False)]
    healthy = [eng.scheduler.handles[k] for k in ("healthy.count", "healthy.render")]
    return {
        "frames": len(ns),
        "worst_ms": max(ns) / 1e6,
        "p99_ms": summarize(ns, PERIOD_NS).p99_ms,
        "over": sum(1 for f in ns if f > PERIOD_NS),
        "late": sum(1 for g in gaps if g > 2 * PERIOD_NS),
        "worst_gap_ms": max(gaps) / 1e6,
        "missing": max(0, round((starts[b - 1] - starts[a]) / PERIOD_NS) + 1 - len(ns)),
        "disabled": sum(1 for h in healthy if h.reason is not None),  # by the phase's end
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=5.0, help="size of the big module")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each phase")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        project = Path(d)
        (project / "systems").mkdir()
        (project / "systems" / "healthy.py").write_text(HEALTHY)
        (project / "game.py").write_text(GAME)
        eng = Engine(project, report=lambda m: None)
        frames: list[int] = []
        starts: list[int] = []
        real_step = eng.step

        def timed_step():  # noqa: ANN202
            t0 = time.monotonic_ns()
            starts.append(t0)
            out = real_step()
            frames.append(time.monotonic_ns() - t0)
            return out

        eng.step = timed_step  # type: ignore[method-assign]
        eng.start_watching()
        eng.run(frames=90, watch=False)  # warm up
        del frames[:], starts[:]
        offset = eng.frame
        systems = project / "systems"
        phases = Phases(
            [
                ("bare loop", None, "", lambda: True, args.seconds),
                (
                    f"{args.mb:g} MB module loads",
                    systems / "big.py",
                    big_module(args.mb),
                    lambda: "big" in eng.loader.active,
                    1.0,
                ),
                (
                    "loop at import",
                    systems / "spin.py",
                    LOOP,
                    lambda: any(s.module == "spin" and not s.ok for s in eng.swaps),
                    1.0,
                ),
            ]
        )
        eng.after_frame.append(phases)
        eng.run(watch=False)
        rows = []
        for name, a, b, load_s in phases.spans:
            r = phase_stats(eng, frames, starts, a - offset, b - offset)
            r["load_s"] = load_s if name != "bare loop" else float("nan")
            rows.append((name, r))
        eng.stop_watching()
        eng.close()
    print(
        f"frame loop while user code loads, python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    head = (
        f"{'phase':<22}{'frames':>7}{'missed':>7}{'worst gap':>10}{'worst ms':>9}"
        f"{'p99 ms':>8}{'over 11.1':>10}{'late':>6}{'disabled':>9}{'load s':>8}"
    )
    print(head)
    for name, r in rows:
        print(
            f"{name:<22}{r['frames']:>7}{r['missing']:>7}{r['worst_gap_ms']:>10.1f}"
            f"{r['worst_ms']:>9.2f}{r['p99_ms']:>8.2f}{r['over']:>10}{r['late']:>6}"
            f"{r['disabled']:>9}{r['load_s']:>8.1f}"
        )
    print(
        "frames: frames run; missed: 90 Hz slots with no frame; worst gap: longest time "
        "between two frame starts (ms);\nworst/p99 ms: a frame's own time (step); over 11.1: "
        "frames longer than the budget; late: starts more than\ntwo periods after the last; "
        "disabled: healthy systems disabled by the phase's end; load s: save -> loaded/refused"
    )


if __name__ == "__main__":
    main()

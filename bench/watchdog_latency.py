"""Time from the hard limit to control back in the scheduler, over many runaway calls.

    python bench/watchdog_latency.py [--runs 150]

Each run arms the frame watchdog (hard limit 5 ms) and calls a runaway system — a
pure-Python infinite loop, or ``time.sleep(10)`` — then measures how long after the hard
limit the scheduler's ``except`` ran (the fault's elapsed time minus the limit). Target
(issue 3): p99 ≤ 1 ms.
"""

from __future__ import annotations

import argparse
import time

from engine import SchedulePolicy, World
from engine.scheduler.scheduler import Scheduler
from engine.scheduler.spec import SystemSpec
from engine.scheduler.stats import summarize

HARD_NS = 5_000_000


def spin(world, dt):
    while True:
        pass


def sleep(world, dt):
    time.sleep(10)


def busy_numpy_free_loop(world, dt):
    x = 0
    while True:
        x += 1


def measure(fn, runs: int) -> list[int]:
    sched = Scheduler(SchedulePolicy(hard_limit_ns=HARD_NS))
    sched.watchdog.install()
    sched.set_module_systems("bench", 1, [(SystemSpec("runaway"), fn)], frame=0)
    world = World()
    out = []
    for f in range(runs):
        sched.enable("bench.runaway")
        faults = sched.run_frame(world, 0.011, f)
        (fault,) = faults
        out.append(fault.elapsed_ns - HARD_NS)
    sched.watchdog.uninstall()
    world.delete()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=150)
    args = ap.parse_args()
    print(f"hard limit {HARD_NS / 1e6:.1f} ms, {args.runs} runaway calls each")
    print(f"{'runaway':<22}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, fn in (
        ("while True: pass", spin),
        ("x += 1 loop", busy_numpy_free_loop),
        ("time.sleep(10)", sleep),
    ):
        lat = summarize(measure(fn, args.runs), HARD_NS)
        print(f"{name:<22}{lat.p50_ms:>9.3f}{lat.p99_ms:>9.3f}{lat.max_ms:>9.3f}")
    print("\ntarget: p99 ≤ 1 ms after the hard limit")


if __name__ == "__main__":
    main()

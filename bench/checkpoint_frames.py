"""Frames over budget while a 200 MB component is checkpointed once a second (issue 9, hole 9).

Runs a real engine at 90 Hz on a temporary project whose world holds one component with a
200 MB numpy array (plus a few hundred small entities and a counter system), for a few
seconds in each mode, all in the same run:

* ``none``: no checkpoints (the baseline);
* ``frame thread``: serialized on the frame thread, written by a thread (what the game
  did before: ``Checkpointer(fork=False)``);
* ``fork``: a forked child writes the copy-on-write world (``Checkpointer()``, what the
  game does now: it forks for any world that takes over 1 ms to serialize);
* ``fork + writes``: the same, with a system rewriting 2 MB of the array every frame (each
  first write to a page the child still shares copies it: the cost copy-on-write moves
  onto the frame).

A frame's cost is the whole of ``Engine.step()`` (systems, then the after-frame hook that
takes the checkpoint); one over the 11.1 ms budget makes the next frame late. "missed"
counts frames that ended more than a budget after their slot began (a late wake-up plus
the step: what the compositor would see), and the slots the pacer skipped. On a busy
machine the baseline misses some too: compare each mode with it.

    python bench/checkpoint_frames.py [--seconds 5] [--mb 200]

Target: 0 frames over budget with ``fork`` (the baseline's count, if the machine is busy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYGLET_HEADLESS", "1")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from engine import Engine  # noqa: E402
from engine.scheduler.stats import FRAME_BUDGET_NS, summarize  # noqa: E402
from engine.world.checkpointer import Checkpointer  # noqa: E402
from engine.world.ring import CheckpointRing  # noqa: E402

BLOB = """
import numpy as np
import engine

@engine.component
class Blob:
    data: object = None
    writes_mb: int = 0
    at: int = 0

@engine.component
class Small:
    value: int = 0

@engine.system
def touch(world, dt):
    for _, (b,) in world.get_components(Blob):
        if b.writes_mb:  # rewrite a moving 2 MB stretch, as a simulation would
            n = b.writes_mb * 131072
            start = (b.at * n) % (b.data.size - n)
            b.data[start : start + n] += 1.0
            b.at += 1
    for _, (s,) in world.get_components(Small):
        s.value += 1
"""

GAME = """
import numpy as np
from systems.blob import Blob, Small

def setup(world):
    world.create_entity(Blob(np.ones({mb} * 131072)))
    for i in range(300):
        world.create_entity(Small(i))
"""


def run_mode(project: Path, state: Path, mode: str, seconds: float) -> dict:
    eng = Engine(project, report=lambda message: None)
    if mode == "fork + writes":
        ((_, blob),) = eng.world.get_component(
            eng.loader.active["blob"].components["systems.blob:Blob"]
        )
        blob.writes_mb = 2
    checkpointer = None
    if mode != "none":
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        checkpointer = Checkpointer(
            state / "checkpoint.bin",
            1_000_000_000,
            ring=CheckpointRing(state / "ring", keep=3, remove_in_background=True),
            fork=mode != "frame thread",
        )
        eng.after_frame.append(lambda e: checkpointer.maybe_take(e, time.monotonic_ns()))
    pauses: list[int] = []
    step_ns: list[int] = []
    missed = 0
    for _ in range(45):  # warm up: first loads, caches
        eng.step()
    skipped_before = eng.pacer.skipped
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        slot_ns = eng.pacer.wait()
        started = checkpointer.started if checkpointer else 0
        t0 = time.perf_counter_ns()
        eng.step()
        step_ns.append(time.perf_counter_ns() - t0)
        if time.monotonic_ns() - slot_ns > FRAME_BUDGET_NS:
            missed += 1
        if checkpointer and checkpointer.started != started:
            pauses.append(checkpointer.last_dump_ns)
    missed += eng.pacer.skipped - skipped_before
    if checkpointer:
        checkpointer.close()
    eng.close()
    s = summarize(step_ns, FRAME_BUDGET_NS)
    return {
        "frames": len(step_ns),
        "over": s.overruns,
        "missed": missed,
        "p50": s.p50_ms,
        "p99": s.p99_ms,
        "max": s.max_ms,
        "pause_max": max(pauses) / 1e6 if pauses else 0.0,
        "written": checkpointer.taken if checkpointer else 0,
        "bytes": checkpointer.last_bytes if checkpointer else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per mode (default 5)")
    parser.add_argument("--mb", type=int, default=200, help="size of the big component (MB)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    try:
        project = root / "game"
        (project / "systems").mkdir(parents=True)
        (project / "systems" / "blob.py").write_text(BLOB)
        (project / "game.py").write_text(GAME.format(mb=args.mb))
        table = Table(
            title=f"{args.mb} MB component, checkpoint every 1 s, 90 Hz, {args.seconds:g} s a mode"
        )
        for column in (
            "mode",
            "frames",
            "steps over 11.1 ms",
            "missed",
            "step p50 ms",
            "p99 ms",
            "max ms",
            "frame-thread pause max ms",
            "checkpoints written",
            "size MB",
        ):
            table.add_column(column, justify="left" if column == "mode" else "right")
        for mode in ("none", "frame thread", "fork", "fork + writes"):
            r = run_mode(project, root / "state", mode, args.seconds)
            table.add_row(
                mode,
                str(r["frames"]),
                str(r["over"]),
                str(r["missed"]),
                f"{r['p50']:.2f}",
                f"{r['p99']:.2f}",
                f"{r['max']:.2f}",
                f"{r['pause_max']:.2f}" if mode != "none" else "—",
                str(r["written"]),
                f"{r['bytes'] / 1e6:.0f}" if r["bytes"] else "—",
            )
        Console(width=160).print(table)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

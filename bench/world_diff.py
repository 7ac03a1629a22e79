"""What a world diff costs, beside what a checkpoint and a restore of the same world cost.

The preview compares the live world with its copy after N frames (``engine.world.diff``).
This builds a world of ``--entities`` entities with 5 components each (a transform with
numpy position and rotation, a velocity of floats, health with an int and a string, a plain
object, a tag with a tuple of numbers), copies it, changes a share of the copy, and times,
in the same run:

* ``checkpoint``: ``World.checkpoint()`` of the live world (the baseline: the preview's
  copy is made this way);
* ``restore``: ``World.restore()`` of those bytes;
* ``diff, 0 %`` / ``10 %`` / ``100 %`` changed: ``diff_worlds(live, copy)``;
* ``diff_checkpoints``: two restores and a diff, from bytes;
* ``diff, one N MB component``: two one-entity worlds whose component holds a ``--mb``
  array differing in one element, beside ``numpy.array_equal`` of the two arrays (the
  floor: one pass over both) and the peak memory the diff added.

Each row is the median of ``--repeat`` runs.

    python bench/world_diff.py [--entities 10000] [--repeat 3] [--mb 200]

Target: a diff of 10 000 entities x 5 components well under a second, and of the order of
one checkpoint; a large array within a few times the floor, in a few MB of scratch.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

import engine
from engine import World
from engine.world.diff import diff_checkpoints, diff_worlds


@engine.component
class Transform:
    position: object = None
    rotation: object = None


@engine.component
class Velocity:
    dx: float = 0.0
    dy: float = 0.0
    dz: float = 0.0


@engine.component
class Health:
    points: int = 100
    state: str = "ok"


class Brain:
    """A plain object (not a dataclass): compared through its ``vars()``."""

    def __init__(self, goal: str = "wander", patience: float = 1.0) -> None:
        self.goal = goal
        self.patience = patience


@engine.component
class Tag:
    colour: tuple = (1.0, 1.0, 1.0)


def build(n: int) -> World:
    rng = np.random.default_rng(1)
    world = World()
    for i in range(n):
        world.create_entity(
            Transform(rng.normal(size=3), np.array([0.0, 0.0, 0.0, 1.0])),
            Velocity(*rng.normal(size=3).tolist()),
            Health(100 - i % 7, "ok"),
            Brain("wander", 1.0),
            Tag((0.2, 0.4, 0.6)),
        )
    return world


def change(world: World, share: float) -> None:
    """Move, slow and hurt every ``1/share``-th entity (as a candidate system would)."""
    step = max(1, round(1 / share)) if share else 0
    if not step:
        return
    for entity, t in world.get_component(Transform):
        if entity % step == 0:
            t.position = t.position + 0.5
            world.component_for_entity(entity, Velocity).dx *= 2
            world.component_for_entity(entity, Health).state = "hurt"


def median_s(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeat`` calls (CPU: a shared machine's wall time
    includes the time other processes took the core)."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return statistics.median(wall), statistics.median(cpu)


def large_array_rows(mb: int, repeat: int) -> list[tuple[str, tuple[float, float], str]]:
    """A diff of one large component against the floor: one numpy pass over both arrays."""
    x = np.random.default_rng(2).random(mb * (1 << 20) // 8)
    y = x.copy()
    y[len(y) // 2] += 1.5
    a, b = World(), World()
    try:
        a.create_entity(Transform(x))
        b.create_entity(Transform(y))
        floor = median_s(lambda: np.array_equal(x, y), repeat)
        times = median_s(lambda: diff_worlds(a, b), repeat)
        tracemalloc.start()  # numpy reports its buffers to it: the diff's scratch memory
        line = diff_worlds(a, b).changed_fields()[0].line()
        grew = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    finally:
        a.delete()
        b.delete()
    return [
        (f"np.array_equal, {mb} MB (floor)", floor, ""),
        (f"diff, one {mb} MB component", times, f"{line}; peak memory +{grew:.0f} MB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mb", type=int, default=200, help="the large component's array")
    args = parser.parse_args()
    live = build(args.entities)
    data = live.checkpoint()
    rows: list[tuple[str, tuple[float, float], str]] = []
    baseline = median_s(live.checkpoint, args.repeat)
    rows.append(("checkpoint (baseline)", baseline, f"{len(data) / 1e6:.1f} MB"))

    def restore() -> None:
        World.restore(data).delete()

    rows.append(("restore", median_s(restore, args.repeat), ""))
    copies = []
    for share in (0.0, 0.1, 1.0):
        copy = World.restore(data)
        copies.append(copy)
        change(copy, share)
        result = diff_worlds(live, copy)
        fields = result.changed_fields()
        times = median_s(lambda c=copy: diff_worlds(live, c), args.repeat)
        top = fields[0].line() if fields else "no difference"
        rows.append((f"diff, {share:.0%} changed", times, top))
    changed = copies[1].checkpoint()
    rows.append(
        (
            "diff_checkpoints (10 %)",
            median_s(lambda: diff_checkpoints(data, changed), args.repeat),
            "two restores and a diff",
        )
    )
    for c in copies:
        c.delete()
    rows.extend(large_array_rows(args.mb, args.repeat))

    table = Table(title=f"world diff, {args.entities} entities x 5 components")
    table.add_column("operation")
    table.add_column("wall ms", justify="right")
    table.add_column("CPU ms", justify="right")
    table.add_column("CPU x checkpoint", justify="right")
    table.add_column("note")
    for name, (wall, cpu), note in rows:
        table.add_row(
            name, f"{wall * 1e3:.0f}", f"{cpu * 1e3:.0f}", f"{cpu / baseline[1]:.2f}", note
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()

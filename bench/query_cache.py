"""What a frame pays for its query caches after entities come and go (issue 9: frames late
for the engine's own work).

esper throws every cached query away on any change and rebuilds each on its next use; a
:class:`~engine.world.World` catches the cached lists up with its own changes instead
(``World.update_queries``). Each row: a world of N entities (each with ``Position`` and
``Velocity``, a hundred ``Toy`` entities beside them), the queries a small game keeps
cached (``Position``, ``Toy``, ``(Position, Velocity)``, ``(Velocity, Position)``), then
per frame a few entities created and as many deleted, ten frames old (deferred, finished
at the frame boundary, as the scheduler does), and the caches brought up to date, both
ways in turns:

* **rebuild** — esper's way: every cached query rebuilt (what the scheduler did before);
* **catch up** — the world's way.

    python bench/query_cache.py             # under a minute
    python bench/query_cache.py --churn 50  # entities created and deleted per frame
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import esper
from rich.console import Console
from rich.table import Table

from engine.world import World


@dataclass
class Position:
    x: float = 0.0
    y: float = 0.0


@dataclass
class Velocity:
    dx: float = 0.0
    dy: float = 0.0


@dataclass
class Toy:
    spins: int = 0


@dataclass
class Bullet:
    age: int = 0


QUERIES = [(Position,), (Toy,), (Position, Velocity), (Velocity, Position)]


def warm(world: World) -> None:
    for cts in QUERIES:
        if len(cts) == 1:
            world.get_component(cts[0])
        else:
            world.get_components(*cts)


def rebuild(world: World) -> None:
    """What the scheduler did before: esper's caches emptied and every query warmed."""
    world.activate()
    esper._clear_cache_now()
    warm(world)


def frame(world: World, churn: int, bullets: list[int], catch_up: bool) -> int:
    """One frame's changes, then the caches brought up to date; the ns that took."""
    for _ in range(churn):
        bullets.append(world.create_entity(Position(), Velocity(), Bullet()))
    while len(bullets) > 10 * churn:  # each lives ten frames
        world.delete_entity(bullets.pop(0))
    world.clear_dead_entities()
    t0 = time.perf_counter_ns()
    if not catch_up or not world.update_queries():
        rebuild(world)
    warm(world)  # what the systems ask next (cached now either way)
    return time.perf_counter_ns() - t0


def measure(entities: int, churn: int, frames: int) -> tuple[float, float, float, float]:
    world = World()
    try:
        for i in range(entities):
            world.create_entity(Position(float(i)), Velocity(1.0))
        for _ in range(100):
            world.create_entity(Toy())
        bullets: list[int] = []
        warm(world)
        both: dict[bool, list[int]] = {True: [], False: []}
        for i in range(frames):
            for catch_up in (i % 2 == 0, i % 2 == 1):  # in turns: the machine's mood alike
                both[catch_up].append(frame(world, churn, bullets, catch_up))
        ms = {k: statistics.median(v) / 1e6 for k, v in both.items()}
        worst = {k: max(v) / 1e6 for k, v in both.items()}
        return ms[False], worst[False], ms[True], worst[True]
    finally:
        world.delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--churn", type=int, default=5, help="entities created and deleted")
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    table = Table(
        title=f"query caches after {args.churn} entities created and {args.churn} deleted "
        f"per frame (median and worst of {args.frames} frames each, in turns)"
    )
    for column in (
        "entities",
        "rebuild (ms)",
        "worst",
        "catch up (ms)",
        "worst",
        "rebuild / catch up",
    ):
        table.add_column(column, justify="right")
    for entities in (1_000, 10_000, 50_000):
        r, rw, c, cw = measure(entities, args.churn, args.frames)
        table.add_row(
            f"{entities:,}", f"{r:.3f}", f"{rw:.3f}", f"{c:.3f}", f"{cw:.3f}", f"{r / c:.1f}"
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()

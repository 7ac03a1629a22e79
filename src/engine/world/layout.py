"""Cached query results laid out again, so that a loop over them runs at the speed of memory.

``for entity, (p, v) in world.get_components(Position, Velocity)`` visits, for each row,
the row's tuple, the tuple of its components, and the components. esper builds a query's
rows one by one when it rebuilds its cache (after a reload migrated the components, after
a change it could not catch up with), and CPython puts each new tuple into whichever hole
of its size the heap has: after a day of reloads the holes are all over the heap, and the
rows land scattered and out of order. A loop over them then misses the cache at every row:
the same loop over the same 10,000 components measured 1.9 ms over rows built into such a
heap, and 1.2 ms over the same rows laid out again in fresh memory, in the order the loop
visits them (as fast as raw esper's loop over a world built at start-up; ``bench/soak.py``
measures it, frame by frame, over a day).

CPython never moves an object, so :class:`QueryLayout` builds a second copy of a
long-lived query result (the same entities and component instances, in new tuples) in
fresh memory and puts it in esper's cache in place of the first. The copy is made a batch
of rows at a time; a batch that lands in the heap's holes (out of order, see
:mod:`engine.world.heap`) is kept aside and more of the holes are taken up by fillers
the garbage collector does not follow (tuples alone would set off full collections of
50-100 ms), and it is made again until batches come from fresh memory; then what was
kept aside is freed. The work is spread
over frames, a budget of tuples per frame, at the frame boundary. A result rebuilt every
frame is never touched (only one that stayed the same list for :data:`SETTLE_FRAMES`
frames is looked at), and one whose rows already lie in order is left as it is (a sample
of its rows tells). A change to the world while a copy is being built abandons the copy:
it is put in the cache only in place of the very list it was made from.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import esper

from engine.world import heap
from engine.world.heap import FEW, MAX_HELD, in_order, out_of_order, samples

#: Frames a cached result must stay the same list before it is looked at: a result
#: rebuilt every frame is not worth laying out.
SETTLE_FRAMES = 3
#: Results shorter than this are left alone (a loop over them is cheap wherever they lie).
MIN_ROWS = FEW
#: New tuples made per frame (about 1 ms here).
TUPLES_PER_FRAME = 1024
#: Fillers made per row of a batch that landed in holes (see :func:`heap.fillers`).
FILLERS = 4
#: The rows sampled to judge a result's layout: this many windows of this many rows.
SAMPLE_WINDOWS = 8
SAMPLE_ROWS = 128
#: A result is scattered when more than this share of sampled steps from one row's tuple
#: to the next jumps further than a page.
SCATTERED_STEPS = 0.05


def scattered(rows: list[Any], single: bool) -> bool:
    """Whether a sample of ``rows`` (a cached query result: ``(entity, component)`` for a
    single-type query, ``(entity, (c1, c2, ...))`` otherwise) lies out of visit order."""
    parts = samples(rows, SAMPLE_WINDOWS, SAMPLE_ROWS)
    steps = sum(len(p) - 1 for p in parts)
    outer = sum(out_of_order([id(r) for r in p]) for p in parts)
    inner = 0 if single else sum(out_of_order([id(r[1]) for r in p]) for p in parts)
    return max(outer, inner) > SCATTERED_STEPS * max(1, steps)


def _rows_in_order(rows: list[Any], single: bool) -> bool:
    return in_order([id(r) for r in rows]) and (single or in_order([id(r[1]) for r in rows]))


def _fresh_single(row: tuple[int, Any]) -> tuple[int, Any]:
    return (row[0], row[1])


def _fresh_multi(row: tuple[int, tuple[Any, ...]]) -> tuple[int, tuple[Any, ...]]:
    return (row[0], (*row[1],))


@dataclass
class _Copy:
    """A result being laid out again, a batch of rows per frame (see the module doc)."""

    cache: dict[Any, list[Any]]
    key: Any
    source: list[Any]
    single: bool
    rows: list[Any] = field(default_factory=list)
    held: list[list[Any]] = field(default_factory=list)  # what takes up holes meanwhile
    held_rows: int = 0

    def valid(self) -> bool:
        return (
            not esper._cache_dirty
            and self.cache is _cache(self.single)
            and self.cache.get(self.key) is self.source
        )

    def work(self, budget: int) -> bool | None:
        """Make up to ``budget`` tuples' worth of rows. True once the copy is complete;
        None if the heap has more holes than are worth taking up (give up)."""
        done = len(self.rows)
        end = min(len(self.source), done + max(2, budget // (1 if self.single else 2)))
        fresh = _fresh_single if self.single else _fresh_multi
        batch = [fresh(row) for row in self.source[done:end]]
        if _rows_in_order(batch, self.single) or end - done < 2:
            self.rows.extend(batch)
            return end == len(self.source)
        # Landed in holes: kept (freed, the tuples would wait on CPython's own stack of
        # free tuples for the next batch), and more holes taken up with fillers the
        # garbage collector does not follow; the next batch comes from further on.
        sizes = [sys.getsizeof(batch[0])]
        if not self.single:
            sizes.append(sys.getsizeof(batch[0][1]))
        self.held.append(batch)
        for size in sizes:
            self.held.append(heap.fillers(size, FILLERS * len(batch)))
        self.held_rows += (FILLERS + 1) * len(batch)
        if self.held_rows > max(MAX_HELD * len(self.source), heap.MIN_HELD):
            return None
        return False


def _cache(single: bool) -> dict[Any, list[Any]]:
    # esper swaps these module globals when it switches worlds: read them each time.
    return esper._get_component_cache if single else esper._get_components_cache


@dataclass
class _Watch:
    rows: list[Any]
    frames: int = 1
    judged: bool = False


class QueryLayout:
    """Lays out one world's long-lived cached query results again (see the module doc).

    :meth:`tick` is called once per frame at the frame boundary, with the world's esper
    context active (the scheduler does it).
    """

    def __init__(
        self,
        tuples_per_frame: int = TUPLES_PER_FRAME,
        *,
        settle_frames: int = SETTLE_FRAMES,
        min_rows: int = MIN_ROWS,
        judge: Callable[[list[Any], bool], bool] = scattered,
    ) -> None:
        """``judge(rows, single)``: whether a settled result is worth laying out again."""
        self.tuples_per_frame = tuples_per_frame
        self.settle_frames = settle_frames
        self.min_rows = min_rows
        self.judge = judge
        self._watch: dict[tuple[bool, Any], _Watch] = {}
        self._copy: _Copy | None = None
        self._releasing: list[list[Any]] = []
        #: Results laid out again so far (for the console and the tests).
        self.laid_out = 0

    @property
    def busy(self) -> bool:
        """A copy is being built."""
        return self._copy is not None

    def tick(self) -> bool:
        """One frame's share of the work. True if any was done (the caller times it)."""
        if esper._cache_dirty:  # about to be rebuilt: nothing in them lasts
            self._abandon()
            return False
        copy = self._copy
        if copy is not None:
            if not copy.valid():
                self._abandon()
                return False
            done = copy.work(self.tuples_per_frame)
            if done is None:  # left as it is; looked at again once it changes
                self._copy = None
            elif done:
                copy.cache[copy.key] = copy.rows
                self._watch[(copy.single, copy.key)] = _Watch(copy.rows, judged=True)
                self._copy = None
                self.laid_out += 1
            if self._copy is None:
                self._releasing += copy.held  # given back a batch a frame, from the next
            return True
        if self._releasing:
            self._releasing.pop()  # freeing tens of thousands at once costs milliseconds
            return True
        return self._look()

    def _abandon(self) -> None:
        if self._copy is not None:
            self._releasing += self._copy.held
            self._copy = None

    def _look(self) -> bool:
        """Follow each cached result; start a copy of one that stayed and lies scattered."""
        watch = self._watch
        seen: set[tuple[bool, Any]] = set()
        start: tuple[bool, Any, list[Any]] | None = None
        for single in (True, False):
            for key, rows in _cache(single).items():
                wkey = (single, key)
                seen.add(wkey)
                w = watch.get(wkey)
                if w is None or w.rows is not rows:
                    watch[wkey] = _Watch(rows)
                    continue
                if w.judged:
                    continue
                w.frames += 1
                if w.frames < self.settle_frames or start is not None:
                    continue
                w.judged = True
                if len(rows) >= self.min_rows and self.judge(rows, single):
                    start = (single, key, rows)
        for wkey in [k for k in watch if k not in seen]:
            del watch[wkey]
        if start is None:
            return False
        single, key, rows = start
        self._copy = _Copy(_cache(single), key, rows, single)
        return True

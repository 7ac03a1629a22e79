"""A long session stays as fast and as small as a short one (issue 9, hole 7).

Each test drives what a day of play does many times over (checkpoints, reloads, swaps,
status changes) and checks that what is kept stays bounded: no timing is asserted here
(``bench/soak.py`` measures the costs).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import threading
import weakref
from pathlib import Path

import esper

from conftest import COUNTER, write
from engine import World, component
from engine.launcher.console import LiveConsole, attach_live_console
from engine.loader.history import COMPACT_MIN_LINES, VersionHistory, VersionStatus
from engine.loader.loader import SwapLog, SwapRecord


@component
class Tag:
    n: int = 0


# -- the entity counter ---------------------------------------------------------------------
def test_checkpoints_leave_esper_a_plain_entity_counter() -> None:
    """Each checkpoint used to wrap the counter in one more ``itertools.chain``, so
    ``create_entity`` walked a longer chain after every checkpoint, for ever."""
    w = World()
    first = w.create_entity(Tag(1))
    for _ in range(2000):
        w.checkpoint()
    w.activate()
    assert type(esper._entity_count) is itertools.count
    assert w.create_entity(Tag(2)) == first + 1  # no id skipped or reused
    restored = World.restore(w.checkpoint())
    assert restored.create_entity(Tag(3)) == first + 2
    restored.delete()
    w.delete()


# -- old module versions ----------------------------------------------------------------------
USER = """
import engine
from systems.counter import Counter

@engine.system
def watch(world, dt):
    for _, (c,) in world.get_components(Counter):
        pass
"""

GAME = """
from systems.counter import Counter

def setup(world):
    world.create_entity(Counter())
"""


def test_old_module_versions_are_released(project, make_engine) -> None:
    """After 20 reloads of a module defining a component, only the active version and
    the one a dependent module imported are alive (it was 21 of 21): dataclass methods no
    longer hold the previous version's globals, aliases hold old classes weakly, and
    esper's query cache forgets classes no entity has."""
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    write(project / "systems" / "user.py", USER)
    write(project / "game.py", GAME)
    eng = make_engine(project)
    classes = _reload_counter(eng, 20)
    gc.collect()
    alive = [i for i, ref in enumerate(classes) if ref() is not None]
    # v1: still imported by user.py (it was not reloaded); v21: the active version.
    assert alive == [0, 20]
    assert eng.world.alias_count() == 1  # v1 -> v21, for user.py
    # Reloading the dependent too releases the first version as well.
    eng.loader.prepare({"user": USER + "\n# v2\n"})
    eng.step()
    gc.collect()
    assert [i for i, ref in enumerate(classes) if ref() is not None] == [20]
    assert eng.world.alias_count() == 0
    value = eng.world.get_component(classes[20]())[0][1].value
    eng.step()
    assert eng.world.get_component(classes[20]())[0][1].value == value + 21  # still counts


def _reload_counter(eng, times: int) -> list[weakref.ref]:
    refs = [weakref.ref(eng.loader.active["counter"].components["systems.counter:Counter"])]
    eng.step()
    for step in range(2, times + 2):
        eng.loader.prepare({"counter": COUNTER.format(step=step)})
        eng.step()
        eng.checkpoint()
        eng.step()
        refs.append(weakref.ref(eng.loader.active["counter"].components["systems.counter:Counter"]))
    return refs


def test_reloaded_dataclass_methods_still_work(project, make_engine) -> None:
    """The generated ``__init__``/``__repr__``/``__eq__`` of a reloaded class run as before."""
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    eng = make_engine(project)
    eng.loader.prepare({"counter": COUNTER.format(step=2)})
    eng.step()
    cls = eng.loader.active["counter"].components["systems.counter:Counter"]
    assert cls(3) == cls(value=3) and cls(3) != cls(4)
    assert repr(cls(5)) == "Counter(value=5)"
    assert cls.__repr__.__wrapped__.__globals__ is not eng.loader.active["counter"].module


# -- swap records -----------------------------------------------------------------------------
def test_swap_log_keeps_the_newest_records_and_counts_all() -> None:
    log = SwapLog(keep=3)
    for i in range(10):
        log.append(SwapRecord("m", i, i % 4 != 0, None, 1.0, "edit", i))
    assert len(log) == 3 and [r.version for r in log] == [7, 8, 9] and log[-1].version == 9
    assert log.total == 10 and log.failed == 3  # versions 0, 4, 8
    assert [r.version for r in log.last(2)] == [8, 9] and log.last(0) == []
    assert log.counts() == {"total": 10, "failed": 3, "kept": 3}


def test_an_engine_keeps_a_bounded_number_of_swap_records(project, make_engine) -> None:
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    eng = make_engine(project)
    eng.loader.swaps = SwapLog(keep=4)
    for step in range(2, 12):
        eng.loader.prepare({"counter": COUNTER.format(step=step)})
        eng.step()
    stats = eng.stats()
    assert len(stats["swaps"]) == 4 and stats["swaps"][-1]["version"] == 11
    assert stats["swap_counts"] == {"total": 10, "failed": 0, "kept": 4}
    assert stats["shader_swap_counts"]["total"] == 0


# -- the console --------------------------------------------------------------------------------
def test_a_background_console_builds_and_draws_off_the_calling_thread() -> None:
    import io

    from rich.console import Console

    out = io.StringIO()
    built_on: list[threading.Thread] = []
    drawn = threading.Event()

    def build() -> dict:
        built_on.append(threading.current_thread())
        drawn.set()
        return {"frames": len(built_on)}

    console = Console(file=out, width=100)  # not a terminal: plain lines
    with LiveConsole(console=console, background=True, plain_every_s=0.0) as live:
        assert live.update(build) is False  # handed over, not drawn here
        assert drawn.wait(10)
        live.update(build)
    assert built_on and threading.current_thread() not in built_on[:1]
    assert out.getvalue().splitlines()[-1].startswith("frames ")


def test_the_game_console_shows_only_the_few_newest_swaps(project, make_engine) -> None:
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    eng = make_engine(project)
    for step in range(2, 8):
        eng.loader.prepare({"counter": COUNTER.format(step=step)})
        eng.step()
    live = attach_live_console(eng, enabled=True)
    offered = []
    live.update = offered.append  # the callable the frame thread hands over
    eng.step()
    assert len(offered) == 1 and callable(offered[0])
    snapshot = offered[0]()
    assert [s["version"] for s in snapshot["swaps"]] == [5, 6, 7]
    assert "counter.count" in snapshot["systems"]


# -- the history index ----------------------------------------------------------------------------
def test_a_status_change_appends_one_line_and_leaves_the_index_alone(tmp_path: Path) -> None:
    h = VersionHistory(tmp_path, "systems", "spin")
    for i in range(COMPACT_MIN_LINES // 2):
        h.record(f"x = {i}\n")
    assert not h.index_path.exists()  # nothing rewritten yet: every change was a line
    lines = h.log_path.read_text().splitlines()
    assert len(lines) == COMPACT_MIN_LINES // 2
    size = h.log_path.stat().st_size
    h.mark(3, VersionStatus.GOOD)
    h.activate(3)
    assert not h.index_path.exists()
    assert len(h.log_path.read_text().splitlines()) == len(lines) + 2
    assert h.log_path.stat().st_size - size < 400  # one version's line, one pointer's
    again = VersionHistory(tmp_path, "systems", "spin")
    assert again.active_number == 3 and again.get(3).status is VersionStatus.GOOD
    assert [v.number for v in again.versions] == list(range(1, COMPACT_MIN_LINES // 2 + 1))
    assert again.source(3) == "x = 2\n"


def test_the_log_is_folded_into_the_index_as_it_grows(tmp_path: Path) -> None:
    h = VersionHistory(tmp_path, "shaders", "basic.frag", suffix=".frag")
    for i in range(300):
        h.record(f"// {i}\n")
        h.mark(i + 1, VersionStatus.BAD if i % 7 == 0 else VersionStatus.GOOD, f"why {i}")
        h.activate(i + 1)
    # The log never holds more lines than the history has versions (or the minimum).
    assert len(h.log_path.read_text().splitlines()) <= max(COMPACT_MIN_LINES, 300)
    index = json.loads(h.index_path.read_text())
    assert len(index["versions"]) >= 100
    again = VersionHistory(tmp_path, "shaders", "basic.frag", suffix=".frag")
    assert [v.to_json() for v in again.versions] == [v.to_json() for v in h.versions]
    assert again.active_number == 300 and again.get(8).why == "why 7"


def test_a_log_line_cut_short_by_a_crash_is_ignored(tmp_path: Path) -> None:
    h = VersionHistory(tmp_path, "systems", "spin")
    h.record("a = 1\n")
    h.activate(1)
    with open(h.log_path, "ab") as f:
        f.write(b'{"version":{"number":1,"time":0,"sha256":"x","sta')  # died mid-write
    again = VersionHistory(tmp_path, "systems", "spin")
    assert again.active_number == 1 and again.get(1).status is VersionStatus.PENDING
    again.mark(1, VersionStatus.GOOD)  # appending after the torn line still works
    assert VersionHistory(tmp_path, "systems", "spin").get(1).status is VersionStatus.GOOD


def test_a_crash_between_index_and_log_replays_nothing_new(tmp_path: Path) -> None:
    """Compaction writes the index, then empties the log: a log left full after the
    index was written replays states the index already holds."""
    h = VersionHistory(tmp_path, "systems", "spin")
    h.record("a = 1\n")
    h.mark(1, VersionStatus.PROBATION)
    h.mark(1, VersionStatus.GOOD)
    h.record("a = 2\n")
    h.activate(2)
    log = h.log_path.read_bytes()
    h.save()  # the compaction
    h.log_path.write_bytes(log)  # as if the process died before emptying the log
    again = VersionHistory(tmp_path, "systems", "spin")
    assert [v.to_json() for v in again.versions] == [v.to_json() for v in h.versions]
    assert again.active_number == 2 and again.disk_number == 2
    assert os.listdir(h.dir).count("index.json") == 1

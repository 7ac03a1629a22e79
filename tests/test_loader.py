"""Hot-swapping system modules in a running engine: real files, the real watcher."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from conftest import COUNTER, run_until, write
from engine.loader.history import VersionStatus
from engine.scheduler.scheduler import SchedulePolicy, SystemState

GAME = """
from systems.counter import Counter

def setup(world):
    world.create_entity(Counter())
"""


def counter_project(project: Path, step: int = 1) -> Path:
    write(project / "systems" / "counter.py", COUNTER.format(step=step))
    write(project / "game.py", GAME)
    return project


def counter_value(eng) -> int:
    cls = eng.loader.active["counter"].components["systems.counter:Counter"]
    ((_, c),) = eng.world.get_component(cls)
    return c.value


def swapped(eng, module: str, n: int) -> bool:
    return sum(1 for s in eng.swaps if s.module == module and s.kind != "load") >= n


def test_edit_swaps_new_code_and_keeps_world_state(project, make_engine) -> None:
    eng = make_engine(counter_project(project))
    eng.start_watching()
    for _ in range(5):
        eng.step()
    assert counter_value(eng) == 5
    (entity,) = eng.world.get_entities()
    write(project / "systems" / "counter.py", COUNTER.format(step=100))
    run_until(eng, lambda: swapped(eng, "counter", 1))
    before = counter_value(eng)
    eng.step()
    assert counter_value(eng) == before + 100  # new code runs on the old state
    assert list(eng.world.get_entities()) == [entity]
    rec = eng.swaps[-1]
    assert rec.ok and rec.version == 2 and rec.latency_ms is not None
    assert eng.history("counter").active_number == 2


@pytest.mark.parametrize(
    ("broken", "line", "message"),
    [
        ("import engine\n\ndef oops(:\n    pass\n", 3, "SyntaxError"),
        ("import engine\nimport no_such_module_xyz\n", 2, "ModuleNotFoundError"),
        ("import engine\nx = 1\nraise RuntimeError('boom at import')\n", 3, "boom at import"),
        ("import engine\nfrom systems.nowhere import Thing\n", 2, "nowhere"),
    ],
    ids=["syntax", "import", "raise-at-import", "missing-system-module"],
)
def test_broken_module_keeps_last_good_version(project, make_engine, broken, line, message) -> None:
    eng = make_engine(counter_project(project))
    eng.start_watching()
    eng.step()
    entities = list(eng.world.get_entities())
    counter_cls = eng.loader.active["counter"].components["systems.counter:Counter"]
    path = write(project / "systems" / "counter.py", broken)
    frames = run_until(eng, lambda: any(not s.ok for s in eng.swaps))
    rec = eng.swaps[-1]
    assert not rec.ok
    assert f"{path}:{line}" in rec.error and message in rec.error
    # The failed swap changed nothing: same entities, same classes, the old version
    # still counting once per frame.
    assert list(eng.world.get_entities()) == entities
    assert eng.loader.active["counter"].components["systems.counter:Counter"] is counter_cls
    assert counter_value(eng) == 1 + frames
    assert eng.history("counter").active_number == 1
    v2 = eng.history("counter").get(2)
    assert v2.status is VersionStatus.ERROR and f":{line}" in v2.why


def test_infinite_loop_at_import_is_a_failed_load(project, make_engine) -> None:
    eng = make_engine(counter_project(project), load_limit_s=0.3)
    eng.start_watching()
    eng.step()
    write(project / "systems" / "counter.py", "import engine\nwhile True:\n    pass\n")
    frames = run_until(eng, lambda: any(not s.ok for s in eng.swaps))
    assert "LoadTimeout" in eng.swaps[-1].error
    # Where the loop was interrupted: its head or its body.
    where = f"{project / 'systems' / 'counter.py'}:"
    assert f"{where}2:" in eng.swaps[-1].error or f"{where}3:" in eng.swaps[-1].error
    assert counter_value(eng) == 1 + frames  # the old version kept counting meanwhile


def test_raise_during_probation_rolls_back_to_last_good(project, make_engine) -> None:
    eng = make_engine(counter_project(project), policy=SchedulePolicy(probation_frames=3))
    eng.start_watching()
    for _ in range(5):  # v1 passes its probation: it is good
        eng.step()
    assert eng.history("counter").get(1).status is VersionStatus.GOOD
    bad = COUNTER.format(step=1).replace("c.value += 1", "c.value += 1\n        1 / 0")
    write(project / "systems" / "counter.py", bad)
    run_until(eng, lambda: swapped(eng, "counter", 2))  # the edit, then the rollback
    eng.step()
    h = eng.history("counter")
    assert h.get(2).status is VersionStatus.BAD and "ZeroDivisionError" in h.get(2).why
    assert h.active_number == 1
    assert eng.swaps[-1].kind == "rollback" and eng.swaps[-1].version == 1
    value = counter_value(eng)
    eng.step()
    assert counter_value(eng) == value + 1


def test_a_version_being_rolled_back_is_not_called_while_the_good_one_loads(
    project, make_engine
) -> None:
    """The good version takes a while to load again (a slow import); the failing one must
    not run, and fail, every frame meanwhile."""
    slow_good = "import time\ntime.sleep(0.3)  # a slow import\n" + COUNTER.format(step=1)
    write(project / "systems" / "counter.py", slow_good)
    write(project / "game.py", GAME)
    eng = make_engine(project, policy=SchedulePolicy(probation_frames=3))
    eng.start_watching()
    for _ in range(5):
        eng.step()
    assert eng.history("counter").get(1).status is VersionStatus.GOOD
    calls = project / "calls.txt"
    bad = COUNTER.format(step=1).replace(
        "c.value += 1",
        f"c.value += 1\n    with open({str(calls)!r}, 'a') as f:\n        f.write('x')\n    1 / 0",
    )
    write(project / "systems" / "counter.py", bad)
    frames = run_until(eng, lambda: swapped(eng, "counter", 2))  # the edit, then the rollback
    assert eng.swaps[-1].kind == "rollback" and eng.swaps[-1].version == 1
    assert frames > 10  # the good version's load spanned frames
    assert calls.read_text() == "x"  # called once: the call that failed
    h = eng.scheduler.handles["counter.count"]
    assert h.state is SystemState.ENABLED  # back: the good version has passed its probation


def test_a_version_that_passed_its_probation_is_not_on_probation_again_at_the_next_start(
    project, make_engine
) -> None:
    """A good version that raises once after a restart (a rare input) costs a strike, not
    its good name: it is not rolled back, nor marked bad."""
    flag = project / "raise-once"
    write(
        project / "systems" / "steady.py",
        f"""
        import os
        import engine

        @engine.system
        def steady(world, dt):
            if os.path.exists({str(flag)!r}):
                os.remove({str(flag)!r})
                raise RuntimeError("a rare input")
        """,
    )
    eng = make_engine(project, policy=SchedulePolicy(probation_frames=3))
    for _ in range(5):
        eng.step()
    assert eng.history("steady").get(1).status is VersionStatus.GOOD
    eng.close()
    flag.touch()
    again = make_engine(project, policy=SchedulePolicy(probation_frames=3))
    assert again.scheduler.handles["steady.steady"].state is SystemState.ENABLED
    for _ in range(5):
        again.step()
    assert not flag.exists()  # it raised
    assert again.history("steady").get(1).status is VersionStatus.GOOD
    assert again.scheduler.handles["steady.steady"].state is SystemState.ENABLED
    assert [s for s in again.swaps if s.kind == "rollback"] == []


def test_first_version_raising_with_nothing_to_fall_back_to_is_disabled(
    project, make_engine
) -> None:
    write(
        project / "systems" / "bad.py",
        """
        import engine

        @engine.system
        def explode(world, dt):
            raise ValueError("always")
    """,
    )
    eng = make_engine(counter_project(project))
    eng.step()
    h = eng.scheduler.handles["bad.explode"]
    assert h.state is SystemState.DISABLED and h.reason.limit == "rolled-back"
    assert eng.history("bad").get(1).status is VersionStatus.BAD
    eng.step()
    assert counter_value(eng) == 2  # the rest of the game goes on


def test_after_probation_a_system_is_disabled_only_if_it_keeps_raising(
    project, make_engine
) -> None:
    write(
        project / "systems" / "flaky.py",
        """
        import engine
        from systems.counter import Counter

        @engine.system
        def flaky(world, dt):
            for _, (c,) in world.get_components(Counter):
                if c.value >= 10 and c.value % 7 == 0:
                    raise RuntimeError("once in a while")
                if c.value >= 20:
                    raise RuntimeError("now always")
    """,
    )
    policy = SchedulePolicy(probation_frames=5, strikes=3)
    eng = make_engine(counter_project(project), policy=policy)
    h = eng.scheduler.handles["flaky.flaky"]
    for _ in range(15):
        eng.step()
    assert h.state is SystemState.ENABLED and h.strikes == 0  # raised once at 14, recovered
    for _ in range(8):
        eng.step()
    assert h.state is SystemState.DISABLED and h.reason.limit == "exception"
    assert "now always" in h.reason.detail
    # A new version re-enables it (on probation).
    eng.start_watching()
    write(
        project / "systems" / "flaky.py",
        "import engine\n\n@engine.system\ndef flaky(w, dt):\n    pass\n",
    )
    run_until(eng, lambda: swapped(eng, "flaky", 1))
    assert h.state is SystemState.PROBATION and h.reason is None


def test_delete_unloads_and_recreate_loads_again(project, make_engine) -> None:
    hooks = project / "hooks.log"
    write(
        project / "systems" / "hooked.py",
        f"""
        import engine

        def on_load(world):
            open({str(hooks)!r}, "a").write("load\\n")

        def on_unload(world):
            open({str(hooks)!r}, "a").write("unload\\n")

        @engine.system
        def tick(world, dt):
            pass
    """,
    )
    source = (project / "systems" / "hooked.py").read_text()
    eng = make_engine(counter_project(project))
    eng.start_watching()
    eng.step()
    assert "hooked.tick" in eng.scheduler.handles
    (project / "systems" / "hooked.py").unlink()
    run_until(eng, lambda: "hooked.tick" not in eng.scheduler.handles)
    assert "hooked" not in eng.loader.active
    assert hooks.read_text().split() == ["load", "unload"]
    (project / "systems" / "hooked.py").write_text(source)
    run_until(eng, lambda: "hooked.tick" in eng.scheduler.handles)
    assert hooks.read_text().split() == ["load", "unload", "load"]
    eng.step()
    assert counter_value(eng) >= 2  # the world was never touched


def test_new_file_appearing_is_loaded(project, make_engine) -> None:
    eng = make_engine(counter_project(project))
    eng.start_watching()
    write(
        project / "systems" / "fresh.py",
        """
        import engine
        from systems.counter import Counter

        @engine.system(after="counter.count")
        def double(world, dt):
            for _, (c,) in world.get_components(Counter):
                c.value *= 2
    """,
    )
    run_until(eng, lambda: "fresh.double" in eng.scheduler.handles)
    keys = [h.key for h in eng.scheduler.order]
    assert keys.index("counter.count") < keys.index("fresh.double")


# -- what editors really do -------------------------------------------------------------


def save_in_place(path: Path, text: str) -> None:
    path.write_text(text)


def save_atomic_rename(path: Path, text: str) -> None:  # JetBrains "safe write", many tools
    tmp = path.with_name(path.name + ".___jb_tmp___")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_vim_style(path: Path, text: str) -> None:  # backup by rename, write new, drop backup
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    path.write_text(text)
    backup.unlink()


def save_truncate_then_write(path: Path, text: str) -> None:  # VS Code
    with open(path, "w") as f:  # truncates
        f.flush()
        os.fsync(f.fileno())
        time.sleep(0.1)  # the watcher sees the empty file first (VS Code on a busy machine)
        f.write(text)


def save_with_sed(path: Path, text: str) -> None:
    subprocess.run(["sed", "-i", "s/c.value += 1$/c.value += 7/", str(path)], check=True)


@pytest.mark.parametrize(
    "save",
    [save_in_place, save_atomic_rename, save_vim_style, save_truncate_then_write, save_with_sed],
)
def test_editor_save_patterns_all_swap_once_to_the_final_text(project, make_engine, save) -> None:
    eng = make_engine(counter_project(project))
    eng.start_watching()
    eng.step()
    path = project / "systems" / "counter.py"
    save(path, COUNTER.format(step=7))
    run_until(eng, lambda: eng.history("counter").active_number not in (None, 1))
    time.sleep(0.1)  # let any stray events of the same save arrive
    for _ in range(3):
        eng.step()
    h = eng.history("counter")
    assert all(v.status is not VersionStatus.ERROR for v in h.versions)
    assert h.source(h.active_number) == path.read_text()
    assert not [s for s in eng.swaps if not s.ok]
    before = counter_value(eng)
    eng.step()
    assert counter_value(eng) == before + 7


def test_several_saves_within_milliseconds_end_on_the_last(project, make_engine) -> None:
    eng = make_engine(counter_project(project))
    eng.start_watching()
    path = project / "systems" / "counter.py"
    for step in (2, 3, 4, 5):
        path.write_text(COUNTER.format(step=step))
        time.sleep(0.001)
    run_until(
        eng,
        lambda: (
            "c.value += 5"
            in eng.history("counter").source(eng.history("counter").active_number or 1)
        ),
    )
    before = counter_value(eng)
    eng.step()
    assert counter_value(eng) == before + 5


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_checkout_of_many_files_swaps_them_in_the_same_frame(project, make_engine) -> None:
    def module(name: str, n: int) -> str:
        return f"import engine\n\n@engine.system\ndef {name}(world, dt):\n    return {n}\n"

    names = ["alpha", "beta", "gamma", "delta"]
    for n in names:
        write(project / "systems" / f"{n}.py", module(n, 1))
    git = ["git", "-C", str(project), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "systems"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    subprocess.run([*git, "checkout", "-qb", "other"], check=True)
    for n in names:
        write(project / "systems" / f"{n}.py", module(n, 2))
    subprocess.run([*git, "commit", "-qam", "v2"], check=True)
    subprocess.run([*git, "checkout", "-q", "-"], check=True)  # back to v1 files

    eng = make_engine(project)
    eng.start_watching()
    eng.step()
    subprocess.run([*git, "checkout", "-q", "other"], check=True)
    run_until(eng, lambda: all(eng.history(n).active_number == 2 for n in names))
    frames = {s.frame for s in eng.swaps if s.kind == "edit"}
    assert len(frames) == 1, f"swapped over several frames: {eng.swaps}"
    for n in names:
        assert eng.scheduler.handles[f"{n}.{n}"].fn(None, 0) == 2


# -- undo / redo and the persisted history ------------------------------------------------


def test_undo_redo_move_the_active_version_and_survive_a_restart(project, make_engine) -> None:
    eng = make_engine(counter_project(project))
    eng.start_watching()
    eng.step()
    write(project / "systems" / "counter.py", COUNTER.format(step=10))
    run_until(eng, lambda: eng.history("counter").active_number == 2)
    assert eng.undo("counter") == 1
    eng.step()
    before = counter_value(eng)
    eng.step()
    assert counter_value(eng) == before + 1
    assert eng.redo("counter") == 2
    eng.step()
    before = counter_value(eng)
    eng.step()
    assert counter_value(eng) == before + 10
    eng.undo("counter")
    eng.step()
    eng.close()

    restarted = make_engine(project)  # the file still says step=10; history says v1
    assert restarted.history("counter").active_number == 1
    restarted.step()
    before = counter_value(restarted)
    restarted.step()
    assert counter_value(restarted) == before + 1
    assert [v.number for v in restarted.history("counter").versions] == [1, 2]


def test_undo_skips_versions_that_never_ran(project, make_engine) -> None:
    eng = make_engine(counter_project(project))
    eng.start_watching()
    for text in (COUNTER.format(step=2), "syntax error(", COUNTER.format(step=3)):
        n = len(eng.swaps)
        write(project / "systems" / "counter.py", text)
        run_until(eng, lambda n=n: len(eng.swaps) > n)
    h = eng.history("counter")
    assert [v.status for v in h.versions][2] is VersionStatus.ERROR
    assert h.active_number == 4
    assert eng.undo("counter") == 2  # v3 never ran: skipped
    eng.step()
    assert eng.undo("counter") == 1
    eng.step()
    with pytest.raises(LookupError):
        eng.undo("counter")
    assert eng.redo("counter") == 2
    eng.step()
    assert eng.redo("counter") == 4


# -- components across reloads -------------------------------------------------------------

COMPONENTS_V1 = """
import engine

@engine.component
class Body:
    x: float = 0.0
    old_field: str = "gone soon"
"""


def test_component_migration_keeps_fields_defaults_new_drops_removed(project, make_engine) -> None:
    write(project / "systems" / "bodies.py", COMPONENTS_V1)
    write(
        project / "systems" / "mover.py",
        """
        import engine
        from systems.bodies import Body   # imported before the reload: a stale class later

        @engine.system
        def move(world, dt):
            for _, (b,) in world.get_components(Body):
                b.x += 1
    """,
    )
    eng = make_engine(project)
    old_cls = eng.loader.active["bodies"].components["systems.bodies:Body"]
    ids = [eng.world.create_entity(old_cls(x=float(i))) for i in range(3)]
    eng.start_watching()
    eng.step()
    write(
        project / "systems" / "bodies.py",
        """
        import engine

        @engine.component
        class Body:
            x: float = 0.0
            y: float = 42.0
    """,
    )
    run_until(eng, lambda: eng.history("bodies").active_number == 2)
    new_cls = eng.loader.active["bodies"].components["systems.bodies:Body"]
    assert new_cls is not old_cls
    found = dict(eng.world.get_component(new_cls))
    assert sorted(found) == ids
    xs = [found[e].x for e in ids]
    assert xs == [xs[0] + i for i in range(3)] and xs[0] >= 1  # fields kept
    for e in ids:
        assert found[e].y == 42.0  # new field defaulted
        assert not hasattr(found[e], "old_field")  # removed field dropped
    eng.step()  # mover still holds the old class: it acts on the migrated entities
    assert [found[e].x for e in ids] == [x + 1 for x in xs]


def test_migrate_hook_and_refused_migration(project, make_engine) -> None:
    write(project / "systems" / "bodies.py", COMPONENTS_V1)
    eng = make_engine(project)
    cls = eng.loader.active["bodies"].components["systems.bodies:Body"]
    e = eng.world.create_entity(cls(x=3.0))
    eng.start_watching()
    write(
        project / "systems" / "bodies.py",
        """
        import engine

        @engine.component
        class Body:
            x: float = 0.0
            speed: float = 0.0

            @classmethod
            def migrate(cls, old):
                return cls(x=old.x * 10, speed=len(old.old_field))
    """,
    )
    run_until(eng, lambda: eng.history("bodies").active_number == 2)
    new = eng.loader.active["bodies"].components["systems.bodies:Body"]
    body = eng.world.component_for_entity(e, new)
    assert (body.x, body.speed) == (30.0, 9.0)
    state = eng.world.checkpoint()
    write(
        project / "systems" / "bodies.py",
        """
        import engine

        @engine.component
        class Body:
            x: float
            needs_a_value: int
    """,
    )
    run_until(eng, lambda: any(not s.ok for s in eng.swaps))
    assert "needs_a_value" in eng.swaps[-1].error
    assert eng.history("bodies").active_number == 2
    assert eng.world.checkpoint() == state  # entities untouched by the refused reload


def test_on_load_failure_restores_the_world(project, make_engine) -> None:
    eng = make_engine(counter_project(project))
    eng.start_watching()
    eng.step()
    eng.scheduler.disable(eng.scheduler.handles["counter.count"], "manual", "freeze the world")
    state = eng.world.checkpoint()
    write(
        project / "systems" / "counter.py",
        COUNTER.format(step=1)
        + """
def on_load(world):
    for e in list(world.get_entities()):
        world.delete_entity(e, immediate=True)
    raise RuntimeError("half done")
""",
    )
    run_until(eng, lambda: any(not s.ok for s in eng.swaps))
    assert "on_load failed" in eng.swaps[-1].error and "half done" in eng.swaps[-1].error
    assert eng.world.checkpoint() == state  # every entity is back
    assert eng.history("counter").active_number == 1


def test_esper_processor_subclasses_run_as_systems(project, make_engine) -> None:
    write(
        project / "systems" / "legacy.py",
        """
        import esper
        import engine
        from systems.counter import Counter

        class Doubler(esper.Processor):
            priority = 5
            def process(self, dt):
                for _, (c,) in esper.get_components(Counter):
                    c.value = c.value * 2 + (dt > 0)
    """,
    )
    eng = make_engine(counter_project(project))
    eng.step()
    eng.step()
    assert "legacy.Doubler" in eng.scheduler.handles
    # Doubler (priority 5 -> runs first) then count: v -> 2v+1 -> 2v+2
    assert counter_value(eng) == 6


def test_stats_report_frames_systems_swaps_world(project, make_engine) -> None:
    eng = make_engine(counter_project(project))
    for _ in range(4):
        eng.step()
    stats = eng.stats()
    assert stats["frames"] == 4
    assert stats["systems"]["counter.count"]["calls"] == 4
    assert stats["systems"]["counter.count"]["state"] == "probation"
    assert stats["systems"]["counter.count"]["version"] == 1
    assert stats["swaps"][0]["module"] == "counter" and stats["swaps"][0]["ok"]
    assert stats["world"] == {"entities": 1}


def test_checkpoint_restored_before_its_modules_load_is_completed_by_the_load(
    project, make_engine
) -> None:
    eng = make_engine(counter_project(project))
    for _ in range(3):
        eng.step()
    data = eng.checkpoint()
    eng.close()
    from engine import World
    from engine.world.checkpoint import PendingComponent

    world = World.restore(data, resolve=lambda key: None)  # no module loaded yet
    (entity,) = world.get_entities()
    assert isinstance(world.components_for_entity(entity)[0], PendingComponent)
    again = make_engine(project, world=world)  # setup() is skipped for a given world
    assert list(world.get_entities()) == [entity]
    assert counter_value(again) == 3
    again.step()
    assert counter_value(again) == 4


def test_broken_game_py_is_reported_and_the_game_starts_anyway(project, make_engine) -> None:
    write(project / "systems" / "counter.py", COUNTER.format(step=1))
    game = write(
        project / "game.py",
        """
        from systems.counter import Counter

        def setup(world):
            world.create_entity(Counter())
            undefined_name
    """,
    )
    eng = make_engine(project)
    assert eng.setup_error.startswith(f"{game}:5: NameError")
    eng.step()
    assert counter_value(eng) == 1  # what setup made before failing is kept and runs


def test_an_unreadable_history_index_is_reported_and_moved_aside(tmp_path: Path, capsys) -> None:
    from engine.loader.history import ProjectHistory

    first = ProjectHistory(tmp_path).unit("systems", "bob")
    first.index_path.parent.mkdir(parents=True, exist_ok=True)
    first.index_path.write_text("{not json")
    messages: list[str] = []
    unit = ProjectHistory(tmp_path, report=messages.append).unit("systems", "bob")
    assert unit.versions == []
    (message,) = messages
    assert "unreadable" in message and "moved aside" in message
    assert list(unit.dir.glob("*.broken-*.json"))
    assert capsys.readouterr() == ("", "")  # through the report channel, never print


# -- loading off the frame: races, circular imports, limits -----------------------------


@pytest.fixture
def sync():
    """``import loader_sync`` in module code: events a test and module code meet at."""
    mod = types.ModuleType("loader_sync")
    mod.entered = threading.Event()
    mod.release = threading.Event()
    mod.seen = []
    mod.count = 0
    sys.modules["loader_sync"] = mod
    yield mod
    mod.release.set()
    del sys.modules["loader_sync"]


SLOW = """
import engine
import loader_sync

VALUE = {value}
if VALUE > 1:  # the new version: hold its load until the test says
    loader_sync.entered.set()
    loader_sync.release.wait()
"""

READER = """
import engine
import systems

@engine.system
def read(world, dt):
    import loader_sync
    loader_sync.seen.append(systems.slow.VALUE)
"""


def test_a_system_using_a_module_while_it_is_prepared_sees_the_active_version(
    project, make_engine, sync
) -> None:
    write(project / "systems" / "slow.py", SLOW.format(value=1))
    write(project / "systems" / "reader.py", READER)
    eng = make_engine(project)
    eng.start_watching()
    eng.step()
    write(project / "systems" / "slow.py", SLOW.format(value=2))
    assert sync.entered.wait(10)  # v2's module code is running on the loader thread now
    faults = eng.step()
    assert faults == [] and sync.seen == [1, 1]  # the active v1, not a half-made v2
    sync.release.set()
    run_until(eng, lambda: eng.history("slow").active_number == 2)
    eng.step()
    assert sync.seen[-1] == 2
    assert eng.scheduler.handles["reader.read"].strikes == 0


def test_a_frame_is_not_held_behind_an_import_in_progress(project, make_engine, sync) -> None:
    write(project / "systems" / "slow.py", SLOW.format(value=1))
    write(project / "systems" / "quick.py", "import engine\nX = 1\n")
    eng = make_engine(counter_project(project))
    eng.start_watching()
    eng.step()
    write(project / "systems" / "quick.py", "import engine\nX = 2\n")
    run_until(eng, lambda: eng.loader._pending, timeout_s=10)  # a swap waits to be applied
    write(project / "systems" / "slow.py", SLOW.format(value=2))
    assert sync.entered.wait(10)
    safety = threading.Timer(20, sync.release.set)  # a frame stuck behind the import ends
    safety.start()
    try:
        eng.step()  # applies quick v2 while slow v2's module code is still running
        assert not sync.release.is_set(), "the frame waited for the import"
    finally:
        safety.cancel()
        sync.release.set()
    assert eng.loader.active["quick"].module.X == 2


def test_two_modules_importing_each_other_load_as_python_would(project, make_engine) -> None:
    write(
        project / "systems" / "ping.py",
        """
        import engine
        from systems import pong      # pong imports ping back: it gets this module half-made

        NAME = "ping"

        @engine.system
        def ping_sees(world, dt):
            world.resources["ping sees"] = pong.NAME
    """,
    )
    write(
        project / "systems" / "pong.py",
        """
        import engine
        from systems import ping

        NAME = "pong"

        @engine.system
        def pong_sees(world, dt):
            world.resources["pong sees"] = ping.NAME   # filled in by the time it runs
    """,
    )
    eng = make_engine(project)
    eng.step()
    assert eng.world.resources["ping sees"] == "pong"
    assert eng.world.resources["pong sees"] == "ping"
    assert not eng.loader.errors
    eng.start_watching()
    write(project / "systems" / "pong.py", (project / "systems" / "pong.py").read_text() + "\n")
    run_until(eng, lambda: eng.history("pong").active_number == 2)
    eng.step()
    assert eng.world.resources["pong sees"] == "ping"


def test_a_circular_import_of_a_name_not_yet_defined_names_both_files(project, make_engine) -> None:
    ping = write(
        project / "systems" / "ping.py", "import engine\nfrom systems.pong import B\nA = 1\n"
    )
    pong = write(
        project / "systems" / "pong.py", "import engine\nfrom systems.ping import A\nB = 2\n"
    )
    messages: list[str] = []
    eng = make_engine(project, report=messages.append)
    errors = {m: str(e) for m, e in eng.loader.errors.items()}
    # pong's import of ping ran while ping was half-made: Python's own words, both files.
    assert errors["pong"].startswith(f"{pong}:2: ImportError: cannot import name 'A'")
    assert "circular import" in errors["pong"] and str(ping) in errors["pong"]
    assert errors["ping"].startswith(f"{ping}:2: ImportError: systems.pong failed to load")
    assert not eng.loader.active
    assert any(m.startswith("engine: systems/ping.py:2: ping v1 failed to load") for m in messages)


def test_deleting_a_module_others_import_keeps_it_running(project, make_engine) -> None:
    write(project / "systems" / "shared.py", "import engine\nSPEED = 3\n")
    write(
        project / "systems" / "user.py",
        """
        import engine
        from systems import shared

        @engine.system
        def use(world, dt):
            world.resources["speed"] = shared.SPEED
    """,
    )
    write(project / "systems" / "loner.py", "import engine\n")
    messages: list[str] = []
    eng = make_engine(project, report=messages.append)
    eng.start_watching()
    eng.step()
    (project / "systems" / "shared.py").unlink()
    (project / "systems" / "loner.py").unlink()
    run_until(eng, lambda: "loner" not in eng.loader.active)
    run_until(eng, lambda: any(s.module == "shared" and not s.ok for s in eng.swaps))
    assert "shared" in eng.loader.active  # user still imports it: it stays
    eng.step()
    assert eng.world.resources["speed"] == 3
    assert eng.scheduler.handles["user.use"].strikes == 0
    line = next(m for m in messages if "was deleted" in m)
    assert line.startswith("engine: systems/user.py: shared v1 failed to load: systems/shared.py")
    assert "\n" not in line


# -- module code that runs long, or for ever ----------------------------------------------


def test_module_code_waits_while_a_frame_runs(project, make_engine, sync) -> None:
    eng = make_engine(counter_project(project), load_limit_s=30)
    eng.start_watching()
    eng.step()
    write(
        project / "systems" / "busy.py",
        """
        import engine
        import loader_sync

        loader_sync.entered.set()
        while not loader_sync.release.is_set():
            loader_sync.count += 1
    """,
    )
    assert sync.entered.wait(10)
    try:
        gate = eng.loader.frame_gate
        for _ in range(3):
            with gate.frame():  # what Engine.run does around each frame
                before = sync.count
                deadline = time.monotonic() + 0.05  # ten GIL switch intervals of work
                while time.monotonic() < deadline:
                    pass
                during = sync.count - before
            assert during <= 1, f"module code ran {during} steps during the frame"
        moved = sync.count
        time.sleep(0.05)  # between frames, it runs
        assert sync.count > moved
    finally:
        sync.release.set()
    run_until(eng, lambda: "busy" in eng.loader.active)


def test_module_code_that_blocks_for_ever_is_abandoned_and_loading_goes_on(
    project, make_engine, sync
) -> None:
    messages: list[str] = []
    eng = make_engine(counter_project(project), load_limit_s=0.2, report=messages.append)
    eng.start_watching()
    eng.step()
    path = write(
        project / "systems" / "stuck.py",
        "import engine\nimport loader_sync\nloader_sync.release.wait()  # never set\n",
    )
    run_until(eng, lambda: any(s.module == "stuck" and not s.ok for s in eng.swaps))
    rec = next(s for s in eng.swaps if s.module == "stuck")
    assert rec.error.startswith(f"{path}:3: LoadTimeout: module code did not return")
    assert any(m.startswith("engine: systems/stuck.py:3: stuck v1 ran past") for m in messages)
    write(project / "systems" / "counter.py", COUNTER.format(step=5))  # a new loader thread
    run_until(eng, lambda: eng.history("counter").active_number == 2)
    before = counter_value(eng)
    eng.step()
    assert counter_value(eng) == before + 5


STUBBORN = {
    "a bare loop": """
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass
    """,
    # Each interrupt leaves the gate hook, which switches tracing off for the thread; a
    # loop that calls a function once ran on untraced (and unstoppable) from then on.
    "a loop that calls": """
        def tick():
            pass

        while True:
            try:
                while True:
                    tick()
            except BaseException:
                pass
    """,
    "a loop that keeps the interrupt": """
        kept = []
        while True:
            try:
                while True:
                    pass
            except BaseException as exc:
                kept.append(exc)
    """,
    # No call and nothing released: the hook stays off after the first interrupt. The
    # load is abandoned, its thread watched and stopped from outside; the stop releases
    # the interrupt it kept, which puts the hook back, and the hook parks it.
    "a loop that keeps the last interrupt": """
        last = None
        while True:
            try:
                while True:
                    pass
            except BaseException as exc:
                last = exc
    """,
}


def stack_of(thread_id: int) -> list[tuple[str, str]]:
    frame = sys._current_frames().get(thread_id)
    stack = []
    while frame is not None:
        stack.append((frame.f_code.co_filename, frame.f_code.co_name))
        frame = frame.f_back
    return stack


@pytest.mark.parametrize("shape", list(STUBBORN))
def test_module_code_that_swallows_every_interrupt_is_parked(project, make_engine, shape) -> None:
    eng = make_engine(counter_project(project), load_limit_s=0.1)
    eng.start_watching()
    eng.step()
    path = write(project / "systems" / "stubborn.py", "        import engine" + STUBBORN[shape])
    run_until(eng, lambda: any(s.module == "stubborn" and not s.ok for s in eng.swaps))
    error = next(s.error for s in eng.swaps if s.module == "stubborn")
    loop = path.read_text().splitlines().index("        while True:") + 1  # the inner loop
    assert error.startswith(f"{path}:{loop}: LoadTimeout: module code ")
    write(project / "systems" / "counter.py", COUNTER.format(step=4))
    run_until(eng, lambda: eng.history("counter").active_number == 2)
    (stubborn,) = [
        t for t in threading.enumerate() if any(f == str(path) for f, _ in stack_of(t.ident))
    ]
    parked = ("gate.py", "_park")
    run_until(eng, lambda: parked in [(Path(f).name, n) for f, n in stack_of(stubborn.ident)])
    cpu = time.clock_gettime(time.pthread_getcpuclockid(stubborn.ident))
    time.sleep(0.2)
    assert time.clock_gettime(time.pthread_getcpuclockid(stubborn.ident)) - cpu < 0.01


def test_a_big_module_compiles_off_the_game_process_and_keeps_its_line_numbers(
    project, make_engine
) -> None:
    body = "".join(f"V{i} = {i}\n" for i in range(60_000))  # 700 KB, 22 chunks
    big = write(project / "systems" / "big.py", f"import engine\n{body}TOTAL = V59999 + 1\n")
    eng = make_engine(counter_project(project))
    assert eng.loader.active["big"].module.TOTAL == 60_000
    assert eng.loader.active["big"].module.__doc__ is None
    assert eng.loader.compiler.started == 1  # in the helper process
    eng.start_watching()
    write(project / "systems" / "big.py", f"import engine\n{body}oops(\n")
    run_until(eng, lambda: any(s.module == "big" and not s.ok for s in eng.swaps))
    assert next(s.error for s in eng.swaps if not s.ok).startswith(f"{big}:60002: SyntaxError")
    write(project / "systems" / "big.py", f"import engine\n{body}raise ValueError('late')\n")
    run_until(eng, lambda: sum(not s.ok for s in eng.swaps) == 2)
    assert [s.error for s in eng.swaps if not s.ok][-1] == f"{big}:60002: ValueError: late"
    assert eng.loader.active["big"].version == 1


# -- what a save can leave in a file -------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        (b"", 1, "the file is empty"),
        (b"import engine\nx = 1\x00\n", 2, "null bytes"),
        (b"import engine\n# caf\xe9\n", 2, "not UTF-8"),
        (b"import engine\nimport no_such_module_xyz\n", 2, "ModuleNotFoundError"),
        (b"import engine\n\ndef oops(:\n    pass\n", 3, "SyntaxError"),
    ],
    ids=["empty", "nul-bytes", "invalid-utf8", "missing-import", "syntax-error"],
)
def test_a_bad_file_keeps_the_last_good_version_with_one_line_naming_file_and_line(
    project, make_engine, content, line, words
) -> None:
    messages: list[str] = []
    eng = make_engine(counter_project(project), report=messages.append)
    eng.start_watching()
    eng.step()
    (project / "systems" / "counter.py").write_bytes(content)
    frames = run_until(eng, lambda: any(not s.ok for s in eng.swaps))
    assert counter_value(eng) == 1 + frames  # v1 counted every frame
    assert eng.history("counter").active_number == 1
    failed = [m for m in messages if "failed to load" in m]
    assert len(failed) == 1 and "\n" not in failed[0]
    assert failed[0].startswith(f"engine: systems/counter.py:{line}: counter")
    assert words in failed[0]


def test_a_module_replaced_by_a_folder_keeps_running(project, make_engine) -> None:
    messages: list[str] = []
    eng = make_engine(counter_project(project), report=messages.append)
    eng.start_watching()
    eng.step()
    path = project / "systems" / "counter.py"
    path.unlink()
    path.mkdir()
    run_until(eng, lambda: any("is a folder" in m for m in messages))
    assert "counter" in eng.loader.active
    before = counter_value(eng)
    eng.step()
    assert counter_value(eng) == before + 1
    line = next(m for m in messages if "is a folder" in m)
    assert line.startswith("engine: systems/counter.py: counter failed to load")
    assert "\n" not in line


# -- swaps are all or nothing ---------------------------------------------------------------

HOOKED = """
import engine

@engine.component
class Marker:
    tag: str = "{tag}"

@engine.system
def mark(world, dt):
    world.resources["running"] = "{tag}"

def on_load(world):
    world.resources["loaded"] = "{tag}"
    {on_load}

def on_unload(world):
    for e in list(world.get_entities()):
        world.delete_entity(e, immediate=True)
    world.resources.pop("loaded", None)
    {on_unload}
"""


def test_a_failed_on_load_puts_back_what_the_old_on_unload_did(project, make_engine) -> None:
    write(project / "systems" / "hooked.py", HOOKED.format(tag="v1", on_load="", on_unload=""))
    eng = make_engine(counter_project(project))
    eng.start_watching()
    eng.step()
    entities = list(eng.world.get_entities())
    assert entities and eng.world.resources["loaded"] == "v1"
    write(
        project / "systems" / "hooked.py",
        HOOKED.format(tag="v2", on_load="raise RuntimeError('no')", on_unload=""),
    )
    run_until(eng, lambda: any(not s.ok for s in eng.swaps))
    assert "on_load failed" in eng.swaps[-1].error
    # v1's on_unload deleted every entity and its resource; both are back, v1 runs on.
    assert list(eng.world.get_entities()) == entities
    assert eng.world.resources["loaded"] == "v1"
    eng.step()
    assert eng.world.resources["running"] == "v1"
    assert eng.loader.active["hooked"].version == 1


def test_an_on_unload_that_raises_is_undone_and_the_new_version_goes_live(
    project, make_engine
) -> None:
    messages: list[str] = []
    write(
        project / "systems" / "hooked.py",
        HOOKED.format(tag="v1", on_load="", on_unload="raise RuntimeError('half way')"),
    )
    eng = make_engine(counter_project(project), report=messages.append)
    eng.start_watching()
    eng.step()
    entities = list(eng.world.get_entities())
    write(project / "systems" / "hooked.py", HOOKED.format(tag="v2", on_load="", on_unload=""))
    run_until(eng, lambda: eng.history("hooked").active_number == 2)
    eng.step()
    assert eng.world.resources["running"] == "v2" and eng.world.resources["loaded"] == "v2"
    assert list(eng.world.get_entities()) == entities  # what the failed on_unload deleted is back
    line = next(m for m in messages if "on_unload" in m)
    assert line.startswith("engine: systems/hooked.py:19: hooked.on_unload v1 failed")


def test_the_compile_helper_dies_with_the_game(tmp_path) -> None:
    script = """
import os, sys
from engine.loader.compiler import Compiler
c = Compiler()
c.compile("x = 1\\n" * 2000, "big.py")   # big enough for the helper
print(c._proc.pid, flush=True)
os._exit(0)                              # no clean-up: as a killed game
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    helper = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{helper}").exists() and _alive(helper):
        assert time.monotonic() < deadline, "the helper outlived its game"
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_runaway_loop_at_import_is_named_at_its_loop_line_wherever_it_was_stopped(tmp_path):
    import sys

    from engine.loader.modules import LoadTimeout, error_from_exception

    path = tmp_path / "spin.py"
    path.write_text("import math\nwhile True:\n    x = math.pi\n    y = x * 2\n")
    code = compile(path.read_text(), str(path), "exec")

    def stop_in_the_body(frame, event, arg):  # noqa: ANN001, ANN202
        if frame.f_code.co_filename == str(path) and event == "line" and frame.f_lineno == 4:
            raise LoadTimeout("stopped")
        return stop_in_the_body

    sys.settrace(stop_in_the_body)
    try:
        exec(code, {})
    except LoadTimeout as exc:
        caught = exc
    finally:
        sys.settrace(None)
    error = error_from_exception("spin", path, caught)
    assert error.line == 2 and error.timeout  # the `while`, not line 4 where it stopped


@pytest.mark.parametrize(
    ("source", "line", "header"),
    [
        ("while True:\n    x = 1\n", 2, 1),
        # 3.11 tests a `while condition` at the bottom (POP_JUMP_BACKWARD_IF_FALSE)
        ("go = [1]\nwhile go[0]:\n    x = 1\n    y = 2\n", 4, 2),
        ("for i in range(9):\n    x = i\n", 2, 1),
        ("go = [1]\nwhile go:\n    while go[0]:\n        x = 1\n    y = 2\n", 4, 3),
        ("go = [1]\nwhile go:\n    while go[0]:\n        x = 1\n    y = 2\n", 5, 2),
        ("x = 1\ny = 2\n", 2, None),
    ],
)
def test_a_loop_is_named_at_its_header_line(source, line, header) -> None:
    from engine.scheduler.watchdog import loop_line

    assert loop_line(compile(source, "t.py", "exec"), line) == header


def test_the_gate_interrupt_is_a_load_timeout_by_name_and_pickles_as_one() -> None:
    import pickle

    from engine.loader.gate import Interrupt
    from engine.scheduler.watchdog import LoadTimeout

    exc = Interrupt("module code ran past the limit")
    assert isinstance(exc, LoadTimeout) and type(exc).__name__ == "LoadTimeout"
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is LoadTimeout and back.args == exc.args

"""A game written for esper runs on :class:`engine.World` unchanged: esper's own test suite,
from the source distribution of the installed esper, passes against ``World``.

The suite calls module functions (``esper.create_entity()``); a thin adapter module turns
each call into the same-named method of a ``World`` on esper's current context. Names the
suite uses to reset or inspect esper's state (``_context_map``, ``switch_world``,
``event_registry``, ``Processor``, ...) go to esper itself. Also here: the engine's own
additions to events (handlers of a swapped module are dropped).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import textwrap
import types
from pathlib import Path

import esper
import pytest

from conftest import write
from engine import World

#: esper's functions that World implements as methods of the same name.
WORLD_METHODS = {
    name for name in dir(World) if not name.startswith("_") and callable(getattr(esper, name, None))
}


@pytest.fixture(scope="session")
def esper_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """esper's tests/test_world.py from the sdist of the installed version."""
    where = tmp_path_factory.mktemp("esper-sdist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
         ":all:", "--dest", str(where), f"esper=={esper.__version__}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    archives = list(where.glob("esper-*.tar.gz"))
    if done.returncode or not archives:
        pytest.skip(f"esper's source distribution could not be downloaded: {done.stderr[-300:]}")
    with tarfile.open(archives[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("tests/test_world.py"))
        member.name = "test_esper_world.py"
        tar.extract(member, where, filter="data")
    return where / "test_esper_world.py"


def test_world_has_a_method_for_every_public_esper_function():
    functions = {
        name
        for name, value in vars(esper).items()
        if isinstance(value, types.FunctionType) and not name.startswith("_")
    }
    contexts = {"switch_world", "list_worlds", "delete_world"}  # a World *is* a context
    assert functions - contexts - WORLD_METHODS == set()


ADAPTER = '''
import sys, types
import esper as real
from engine import World

METHODS = {methods!r}

class EsperOnWorld(types.ModuleType):
    """esper's module API, each function a method of a World on the current context."""
    def __getattr__(self, name):
        if name in METHODS:
            return getattr(World(real.current_world), name)
        return getattr(real, name)
    def __setattr__(self, name, value):
        setattr(real, name, value)

sys.modules["esper"] = EsperOnWorld("esper")
'''


def test_esper_own_test_suite_passes_against_world(esper_suite: Path, tmp_path: Path):
    write(tmp_path / "conftest.py", ADAPTER.format(methods=sorted(WORLD_METHODS)))
    suite = tmp_path / esper_suite.name
    suite.write_text(esper_suite.read_text())
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


def test_the_adapter_really_goes_through_world(tmp_path: Path):
    """The compat run would prove nothing if the adapter fell through to esper: a World
    whose method is broken must make it fail."""
    write(tmp_path / "conftest.py", ADAPTER.format(methods=sorted(WORLD_METHODS)))
    write(
        tmp_path / "test_probe.py",
        """
        import esper
        from engine import World

        def test_probe(monkeypatch):
            monkeypatch.setattr(World, "create_entity", lambda self, *c: -1)
            assert esper.create_entity() == -1
        """,
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_probe.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:]


def test_get_entities_is_a_generator_as_in_esper():
    world = World()
    try:
        a, b = world.create_entity(), world.create_entity()
        entities = world.get_entities()
        assert isinstance(entities, types.GeneratorType) and sorted(entities) == [a, b]
    finally:
        world.delete()


def test_events_and_processors_belong_to_their_world():
    one, two = World(), World()
    heard: list[tuple[str, int]] = []

    def on_hit(value: int) -> None:
        heard.append(("one", value))

    class Mover(esper.Processor):
        def process(self, dt: float) -> None:
            heard.append(("moved", int(dt)))

    try:
        one.set_handler("hit", on_hit)
        one.add_processor(Mover())
        two.dispatch_event("hit", 1)
        two.process(5)
        one.dispatch_event("hit", 2)
        one.process(7)
        assert heard == [("one", 2), ("moved", 7)]
        assert isinstance(one.get_processor(Mover), Mover) and two.get_processor(Mover) is None
    finally:
        one.delete(), two.delete()


def test_handlers_of_a_swapped_module_are_dropped(make_engine, project: Path):
    """A module registers a handler in on_load; a new version registers its own. Only the
    new version's handler hears the event: the old one was dropped with its version."""
    source = textwrap.dedent(
        """
        import engine

        @engine.component
        class Heard:
            by: str = ""

        def on_ping(world):
            for _, h in world.get_component(Heard):
                h.by += "{tag}"

        def on_load(world):
            world.set_handler("ping", on_ping)
            if not world.get_component(Heard):
                world.create_entity(Heard())
        """
    )
    write(project / "systems" / "ears.py", source.format(tag="a"))
    eng = make_engine(project)
    eng.step()
    eng.world.dispatch_event("ping", eng.world)
    write(project / "systems" / "ears.py", source.format(tag="b"))
    eng.loader.prepare({"ears": source.format(tag="b")})
    eng.step()
    eng.world.dispatch_event("ping", eng.world)
    heard_cls = eng.loader.active["ears"].components["systems.ears:Heard"]
    ((_, heard),) = eng.world.get_component(heard_cls)
    assert heard.by == "ab"

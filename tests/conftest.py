"""Shared fixtures: real project folders on disk, engines that are always closed."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PYGLET_HEADLESS", "1")

from engine import Engine  # noqa: E402


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


#: A system module with one component and one system adding ``step`` to it every frame.
COUNTER = """
import engine

@engine.component
class Counter:
    value: int = 0

@engine.system
def count(world, dt):
    for _, (c,) in world.get_components(Counter):
        c.value += {step}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "systems").mkdir()
    return tmp_path


@pytest.fixture
def make_engine() -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(project_dir: Path, **kw) -> Engine:
        kw.setdefault("report", lambda msg: None)
        kw.setdefault("fixed_dt", 1 / 90)
        eng = Engine(project_dir, **kw)
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.close()


def run_until(eng: Engine, cond: Callable[[], bool], timeout_s: float = 30.0) -> int:
    """Step the engine (sleeping a little between frames) until ``cond()``; frames run."""
    deadline = time.monotonic() + timeout_s
    frames = 0
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        eng.step()
        frames += 1
        time.sleep(0.002)
    return frames


def compose_layer_once(image, rendered, now, **composer_options):
    """Compose one frame of a single layer showing ``image`` (2, h, w, 4) rendered at eye
    views ``rendered``, for a head at ``now``; returns ``(eyes, composer stats)``."""
    return compose_layers_once([image], rendered, now, **composer_options)


def compose_layers_once(images, rendered, now, **composer_options):
    """Compose one frame of ``len(images)`` layers, bottom first, each (2, h, w, 4) and
    rendered at eye views ``rendered``; returns ``(eyes, composer stats)``."""
    from engine.compositor.loop import LayerDraw
    from engine.compositor.process import GLComposer
    from engine.contracts.layer import LayerSpec

    h, w = images[0].shape[1:3]
    composer = GLComposer(w, h, [LayerSpec(width=w, height=h)] * len(images), **composer_options)

    class Source:
        def still_valid(self, frame):  # noqa: ANN001
            return True

    def frame(pixels):  # noqa: ANN001, ANN202
        class Frame:
            index, seq, frame = 0, 2, 1
            eyes = rendered

        Frame.pixels = pixels
        return Frame()

    draws = [LayerDraw(i, frame(image), Source(), False) for i, image in enumerate(images)]
    composer.compose(draws, now, fallback=False)
    composer.finish()
    return composer.read_eyes(), composer.stats()


def load_png(path):  # noqa: ANN001, ANN201
    """A PNG as a (height, width, 4) RGBA array, bottom row first (as pyglet loads it)."""
    import numpy as np
    import pyglet

    from engine.render.context import gl  # noqa: F401  (headless pyglet before pyglet.image)

    image = pyglet.image.load(str(path))
    data = image.get_image_data().get_data("RGBA", image.width * 4)
    return np.frombuffer(data, np.uint8).reshape(image.height, image.width, 4)


@pytest.fixture(scope="module")
def gl():
    """The GL module with this thread's offscreen context current (skips without EGL)."""

    from engine.render.context import gl, offscreen_context

    try:
        offscreen_context()
    except Exception as exc:  # pragma: no cover - no EGL on this machine
        pytest.skip(f"no GL context: {exc}")
    return gl


#: A counter system that appends ``"pid value"`` to the file ``log`` every frame, so a test
#: can tell game processes apart and see a counter that was reset (fill in ``log``).
LOGGED_COUNTER = """
import os
import engine

@engine.component
class Counter:
    value: int = 0

@engine.system(order=0)
def count(world, dt):
    for _, c in world.get_component(Counter):
        c.value += 1
        with open({log!r}, "a") as f:
            f.write(f"{{os.getpid()}} {{c.value}}\\n")
"""

#: ``game.py`` for :data:`LOGGED_COUNTER` (saved as ``systems/count.py``): one Counter.
COUNTER_GAME = """
from systems.count import Counter

def setup(world):
    world.create_entity(Counter())
"""


@pytest.fixture
def heartbeat():  # noqa: ANN201
    """A heartbeat block: ``(writer, reader)``; its ``writer.running`` is a game's words."""
    from engine.contracts.handoff import HeartbeatReader, HeartbeatWriter, create_heartbeat_fd

    fd = create_heartbeat_fd("test-heartbeat")
    writer, reader = HeartbeatWriter(fd), HeartbeatReader(fd)
    yield writer, reader
    writer.close()
    reader.close()
    os.close(fd)


@pytest.fixture
def holes_uncapped(monkeypatch):
    """Laying objects out takes up the heap's holes only up to a cap (a cost limit: past
    it a batch is used as it comes). A test process leaves more holes of each small size
    than the cap, and how many depends on what ran before; tests of the mechanism lift it."""
    from engine.world import heap, migration

    monkeypatch.setattr(heap, "MIN_HELD", 10**7)
    monkeypatch.setattr(migration, "MIN_SHELLS_HELD", 10**7)


class StubWorld:
    """What ``Scheduler.run_frame`` asks of a world, doing nothing: for scheduler tests
    whose systems keep their own data."""

    def activate(self) -> None: ...

    def clear_dead_entities(self) -> None: ...

    def update_queries(self) -> bool:
        return False

    def lay_out_queries(self) -> bool:
        return False

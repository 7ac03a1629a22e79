"""The All-Source Engine: a live-coding entity-component engine for VR and 3D games.

``import engine`` gives what games are built with, and nothing else::

    import engine

    @engine.component
    class Spin:
        speed: float = 1.0

    @engine.system(order=10)
    def spin(world, dt):
        for e, (s, t) in world.get_components(Spin, engine.Transform): ...

    def on_load(world): ...      # optional hooks of a system module: after this version
    def on_unload(world): ...    # goes live, before it is replaced or its file deleted

    engine.Engine("my_game").run()

=============================  ==========================================================
``system``, ``component``      mark a function as a system, a class as a component
``World``                      the world systems get (esper's API, plus ``world.input``)
``FrameInfo``                  ``world.resources[FrameInfo]``: frame number, dt, head pose
``Input``                      ``world.input``: keys and mouse this frame
``Transform``, ``Mesh``,       what a drawn entity carries: where it is, its shape, its
``Material``                   colour, shader and texture
``Pose``                       a position and orientation (``world.input.head``)
``Processor``                  esper's processor base class, for games written for esper
``Engine``                     a game run from Python (tests, tools) instead of ``engine run``
=============================  ==========================================================

Everything else (clocks, policies, histories, checkpoints, the compositor) stays in its
package: ``engine.scheduler``, ``engine.loader``, ``engine.world``, ``engine.render``, …

Names load on first use (PEP 562), so a process that imports only part of the engine —
the compositor, which must never load the game or the loader — pays for nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "Engine": "engine.game",
    "FrameInfo": "engine.game",
    "Input": "engine.input.state",
    "Material": "engine.render.components",
    "Mesh": "engine.render.components",
    "Pose": "engine.pose.base",
    "Processor": "esper",
    "Transform": "engine.render.components",
    "World": "engine.world.world",
    "component": "engine.world.components",
    "system": "engine.scheduler.spec",
}

__all__ = [
    "Engine",
    "FrameInfo",
    "Input",
    "Material",
    "Mesh",
    "Pose",
    "Processor",
    "Transform",
    "World",
    "component",
    "system",
]
assert set(__all__) == set(_PUBLIC)


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use; ``AttributeError`` for any
    other (the engine's internals are imported from their packages)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:
    from esper import Processor

    from engine.game import Engine, FrameInfo
    from engine.input.state import Input
    from engine.pose.base import Pose
    from engine.render.components import Material, Mesh, Transform
    from engine.scheduler.spec import system
    from engine.world.components import component
    from engine.world.world import World

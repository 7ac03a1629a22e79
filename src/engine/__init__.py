"""The All-Source Engine: a live-coding entity-component engine for VR and 3D games.

``import engine`` gives what games are built with::

    import engine

    @engine.component
    class Spin:
        speed: float = 1.0

    @engine.system(order=10)
    def spin(world, dt):
        for e, (s,) in world.get_components(Spin): ...

    engine.Engine("my_game").run()

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
    "World": "engine.world.world",
    "component": "engine.world.components",
    "CheckpointError": "engine.world.checkpoint",
    "PendingComponent": "engine.world.checkpoint",
    "MigrationError": "engine.world.migration",
    "system": "engine.scheduler.spec",
    "SchedulePolicy": "engine.scheduler.scheduler",
    "SystemState": "engine.scheduler.scheduler",
    "ManualClock": "engine.scheduler.pacing",
    "MonotonicClock": "engine.scheduler.pacing",
    "VersionHistory": "engine.loader.history",
    "VersionStatus": "engine.loader.history",
    "Pose": "engine.pose.base",
    "Fov": "engine.pose.base",
    "EyeView": "engine.pose.base",
    "PoseSample": "engine.pose.base",
    "PoseSource": "engine.pose.base",
    "Processor": "esper",
}

__all__ = [
    "CheckpointError",
    "Engine",
    "EyeView",
    "Fov",
    "FrameInfo",
    "Input",
    "ManualClock",
    "MigrationError",
    "MonotonicClock",
    "PendingComponent",
    "Pose",
    "PoseSample",
    "PoseSource",
    "Processor",
    "SchedulePolicy",
    "SystemState",
    "VersionHistory",
    "VersionStatus",
    "World",
    "component",
    "system",
]
assert set(__all__) == set(_PUBLIC)


def __getattr__(name: str) -> Any:
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
    from engine.loader.history import VersionHistory, VersionStatus
    from engine.pose.base import EyeView, Fov, Pose, PoseSample, PoseSource
    from engine.scheduler.pacing import ManualClock, MonotonicClock
    from engine.scheduler.scheduler import SchedulePolicy, SystemState
    from engine.scheduler.spec import system
    from engine.world.checkpoint import CheckpointError, PendingComponent
    from engine.world.components import component
    from engine.world.migration import MigrationError
    from engine.world.world import World

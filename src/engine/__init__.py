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
"""

from esper import Processor

from engine.game import Engine, FrameInfo
from engine.loader.history import VersionHistory, VersionStatus
from engine.pose.base import EyeView, Fov, Pose, PoseSample, PoseSource
from engine.scheduler.pacing import ManualClock, MonotonicClock
from engine.scheduler.scheduler import SchedulePolicy, SystemState
from engine.scheduler.spec import system
from engine.world import (
    CheckpointError,
    MigrationError,
    PendingComponent,
    World,
    component,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Engine",
    "EyeView",
    "Fov",
    "FrameInfo",
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

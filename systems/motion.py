"""Built-in motion: linear velocity and spin, integrated every frame.

Import it from a game's module or ``game.py`` to use it (importing is what loads it)::

    from systems.motion import Velocity, Spin
"""

import math

import engine
from engine import Transform
from engine.render.camera import axis_angle, quaternion_multiply


@engine.component
class Velocity:
    """Metres per second, added to ``Transform.position`` each frame."""

    linear: tuple[float, float, float] = (0.0, 0.0, 0.0)


@engine.component
class Spin:
    """Turn about ``axis`` (unit vector) at ``speed`` radians per second."""

    axis: tuple[float, float, float] = (0.0, 1.0, 0.0)
    speed: float = 1.0


@engine.system(order=-100)
def integrate_velocity(world, dt):
    for _, (t, v) in world.get_components(Transform, Velocity):
        px, py, pz = t.position
        vx, vy, vz = v.linear
        t.position = (px + vx * dt, py + vy * dt, pz + vz * dt)


@engine.system(order=-90)
def integrate_spin(world, dt):
    for _, (t, s) in world.get_components(Transform, Spin):
        turn = axis_angle(s.axis, s.speed * dt)
        q = quaternion_multiply(turn, t.rotation)  # turn in world space, after the rest
        n = math.sqrt(sum(c * c for c in q)) or 1.0
        t.rotation = tuple(c / n for c in q)

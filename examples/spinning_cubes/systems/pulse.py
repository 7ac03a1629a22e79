"""Spheres breathe: their scale follows a sine wave. Edit ``amount`` or ``rate`` while it runs."""

import math

import engine
from engine import Transform


@engine.component
class Pulse:
    base: float = 0.4
    amount: float = 0.1
    rate: float = 1.0
    phase: float = 0.0


@engine.system(order=0)
def pulse(world, dt):
    for _, (t, p) in world.get_components(Transform, Pulse):
        p.phase += p.rate * dt
        s = p.base + p.amount * math.sin(p.phase)
        t.scale = (s, s, s)

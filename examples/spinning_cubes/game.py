"""Spinning cubes: the smallest live-coding demo.

Run it with ``engine run examples/spinning_cubes`` and edit ``systems/*.py`` while it runs.
``setup`` runs once, for a new world; after that the world lives on across every edit.
"""

from systems.motion import Spin
from systems.pulse import Pulse

from engine import Material, Mesh, Transform


def setup(world):
    colors = [(0.9, 0.2, 0.2, 1), (0.2, 0.8, 0.3, 1), (0.2, 0.4, 0.9, 1), (0.9, 0.8, 0.2, 1)]
    for i, color in enumerate(colors):
        world.create_entity(
            Transform(position=(0.9 * i - 1.35, 1.45, -3.0), scale=(0.4, 0.4, 0.4)),
            Mesh("cube"),
            Material(color=color),
            Spin(axis=(0.0, 1.0, 0.0), speed=0.5 + 0.5 * i),
            Pulse(base=0.4, amount=0.08, rate=1.0 + i),
        )
    world.create_entity(
        Transform(position=(0.0, 0.0, -3.0), scale=(8.0, 1.0, 8.0)),
        Mesh("plane"),
        Material(color=(0.35, 0.35, 0.4, 1)),
    )

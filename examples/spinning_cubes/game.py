"""Spinning cubes: the smallest live-coding demo.

Run it with ``engine run examples/spinning_cubes`` and edit ``systems/*.py`` while it runs.
``setup`` runs once, for a new world; after that the world lives on across every edit.

The scene: cubes that spin and spheres that breathe, at two depths (so the two eyes see
them differently), on a floor with a one-metre grid. The built-in shader lights them from
above with a directional light plus some ambient light.
"""

from systems.motion import Spin
from systems.pulse import Pulse

from engine import Material, Mesh, Transform

RED = (0.9, 0.2, 0.2, 1)  # RGBA, 0..1
GREEN = (0.2, 0.8, 0.3, 1)
BLUE = (0.2, 0.4, 0.9, 1)
YELLOW = (0.9, 0.8, 0.2, 1)
LINE = (0.2, 0.2, 0.24, 1)
FLOOR_SIZE = 8.0  # metres; the floor's centre is 3 m in front of the viewer


def setup(world):
    # Two cubes further back, turning at different speeds.
    for x, color, speed in ((-1.0, RED, 0.6), (1.0, BLUE, 1.2)):
        world.create_entity(
            Transform(position=(x, 1.4, -3.6), scale=(0.5, 0.5, 0.5)),
            Mesh("cube"),
            Material(color=color),
            Spin(axis=(0.0, 1.0, 0.0), speed=speed),
        )
    # Two spheres nearer, breathing (systems/pulse.py).
    for x, color, rate in ((-0.35, GREEN, 1.5), (0.35, YELLOW, 2.5)):
        world.create_entity(
            Transform(position=(x, 1.3, -2.4), scale=(0.35, 0.35, 0.35)),
            Mesh("sphere"),
            Material(color=color),
            Pulse(base=0.35, amount=0.05, rate=rate),
        )
    make_floor(world)


def make_floor(world):
    """A grey floor with a grid of thin dark lines, one metre apart."""
    world.create_entity(
        Transform(position=(0.0, 0.0, -3.0), scale=(FLOOR_SIZE, 1.0, FLOOR_SIZE)),
        Mesh("plane"),
        Material(color=(0.45, 0.45, 0.5, 1)),
    )
    half = FLOOR_SIZE / 2
    for i in range(int(FLOOR_SIZE) + 1):
        offset = i - half
        # A line along Z at x = offset, and one along X at z = offset (around the centre).
        world.create_entity(
            Transform(position=(offset, 0.002, -3.0), scale=(0.02, 0.002, FLOOR_SIZE)),
            Mesh("cube"),
            Material(color=LINE),
        )
        world.create_entity(
            Transform(position=(0.0, 0.002, -3.0 + offset), scale=(FLOOR_SIZE, 0.002, 0.02)),
            Mesh("cube"),
            Material(color=LINE),
        )

"""The components a drawable entity carries: where it is, what shape, what it looks like.

They are plain data (tuples, floats, strings) so the world can checkpoint, pickle and copy
them freely; no GL object ever lives in a component. The renderer turns them into GPU
state on its side and caches that by value (mesh key, shader name).

Example:
    >>> import esper                                                    # doctest: +SKIP
    >>> esper.create_entity(Transform(position=(0, 1.6, -2)),          # doctest: +SKIP
    ...                     Mesh("cube"), Material(color=(1, 0, 0, 1)))
"""

from __future__ import annotations

from dataclasses import dataclass

#: The meshes the engine generates itself; ``Mesh.primitive`` names one of them.
PRIMITIVES = ("cube", "plane", "sphere")


@dataclass
class Transform:
    """Where an entity is: position (metres), rotation (unit quaternion xyzw), scale.

    Any sequence of numbers works for each field (tuples, lists, numpy arrays); the renderer
    reads them every frame. A non-unit quaternion is normalised when drawing; a zero one
    draws as no rotation.
    """

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class Mesh:
    """What shape to draw: a built-in primitive, or an OBJ file when ``path`` is set.

    ``primitive`` is one of :data:`PRIMITIVES` (a unit cube and a unit plane, both 1 m
    across and centred on the origin, the plane facing +Y; a sphere of diameter 1 m).
    ``path`` (absolute, or relative to the project folder) wins over ``primitive``. An OBJ
    file is parsed off the frame: its entities appear a few frames after they are first
    drawn (later for a large file), and again after the file is edited. A mesh that cannot
    be loaded (unknown primitive, missing or malformed file) is skipped when drawing and
    reported once; an edit that breaks a file keeps its last good mesh. It never stops the
    frame.
    """

    primitive: str = "cube"
    path: str | None = None


@dataclass
class Material:
    """How to draw it: a base colour (RGBA, 0..1), a shader program, an optional texture.

    ``shader`` names a program of the :class:`~engine.render.shaders.ShaderLibrary`
    (``"basic"`` = ``basic.vert`` + ``basic.frag``). An unknown name draws with ``basic``.
    ``texture`` is a PNG file (absolute, or relative to the project folder) the ``basic``
    shader multiplies the colour by; it reloads when the file is edited. One that cannot
    be loaded is reported once and draws untextured (or with its last good image).
    """

    color: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    shader: str = "basic"
    texture: str | None = None

"""Pose data and the one small interface every head-pose source implements.

Conventions (shared by the render system, the layer format and the compositor):

* positions are metres in a right-handed world, +Y up, the viewer looking down -Z;
* orientations are unit quaternions stored ``(x, y, z, w)`` (pyrr's order);
* a field of view is four *angles* in radians, ``left`` and ``down`` negative,
  as in OpenXR's ``XrFovf``;
* times are integers in nanoseconds on the engine's monotonic clock
  (``time.monotonic_ns`` unless a clock is injected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

IDENTITY_ORIENTATION = (0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True, slots=True)
class Pose:
    """A rigid transform: where something is and which way it faces.

    Example:
        >>> Pose((0.0, 1.6, 0.0)).position
        (0.0, 1.6, 0.0)
    """

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = IDENTITY_ORIENTATION

    def as_array(self) -> np.ndarray:
        """The pose as 7 float32s: position xyz then orientation xyzw."""
        return np.array((*self.position, *self.orientation), dtype=np.float32)

    @classmethod
    def from_array(cls, values: np.ndarray | tuple[float, ...]) -> Pose:
        """Inverse of :meth:`as_array`; raises ``ValueError`` unless given 7 numbers."""
        v = [float(x) for x in values]
        if len(v) != 7:
            raise ValueError(f"a pose is 7 numbers (xyz + xyzw), got {len(v)}")
        return cls((v[0], v[1], v[2]), (v[3], v[4], v[5], v[6]))


@dataclass(frozen=True, slots=True)
class Fov:
    """Field of view as four angles in radians (OpenXR ``XrFovf`` order)."""

    left: float = -math.radians(45.0)
    right: float = math.radians(45.0)
    up: float = math.radians(45.0)
    down: float = -math.radians(45.0)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.left, self.right, self.up, self.down)

    @classmethod
    def for_image(cls, width: int, height: int, horizontal_deg: float = 90.0) -> Fov:
        """A symmetric field of view whose shape matches a ``width`` x ``height`` image.

        Square pixels need ``tan(up) / tan(right) == height / width``; a square field of
        view drawn into a 16:9 image looks stretched.

        Example:
            >>> round(math.degrees(Fov.for_image(1280, 720).up * 2), 1)
            58.7
        """
        half_h = math.radians(horizontal_deg) / 2
        half_v = math.atan(math.tan(half_h) * height / width)
        return cls(-half_h, half_h, half_v, -half_v)


@dataclass(frozen=True, slots=True)
class EyeView:
    """What one eye sees from: its pose in the world and its field of view."""

    pose: Pose
    fov: Fov = field(default_factory=Fov)


@dataclass(frozen=True, slots=True)
class PoseSample:
    """One frame's viewing state, as a pose source (or the compositor) hands it out.

    Attributes:
        frame: the display frame number this pose was predicted for.
        display_time_ns: when that frame is predicted to reach the eyes.
        head: the head pose at ``display_time_ns``.
        eyes: left then right eye views, already offset from ``head``.
    """

    frame: int
    display_time_ns: int
    head: Pose
    eyes: tuple[EyeView, EyeView]


@runtime_checkable
class PoseSource(Protocol):
    """Anything that can say where the head will be at a given time.

    Implementations: the simulated headset (deterministic scripted motion or a replayed
    trace) and, where a runtime is present, OpenXR. ``sample`` must be cheap and must not
    block: the compositor calls it right before every frame.
    """

    def sample(self, frame: int, display_time_ns: int) -> PoseSample:
        """Predict the head and eye poses for ``frame`` shown at ``display_time_ns``."""
        ...

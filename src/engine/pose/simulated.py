"""Simulated headsets: scripted head motion, and replay of recorded traces.

Both are pure functions of the requested display time: no hidden state, no clock read,
so the same time always gives the same pose (tests and benchmarks replay exactly) and
calling out of order is fine.

Trace files are JSON lines, one head pose per line, in increasing time::

    {"time_ns": 0, "position": [0.0, 1.6, 0.0], "orientation": [0.0, 0.0, 0.0, 1.0]}
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable
from pathlib import Path

from engine.pose.base import Fov, Pose, PoseSample, PoseSource
from engine.render.camera import (
    DEFAULT_IPD,
    axis_angle,
    eyes_from_head,
    quaternion_multiply,
    slerp,
)


class SimulatedHeadset:
    """A head at standing height looking around: yaw and pitch sway, like a slow figure 8.

    At time ``t`` seconds, with ``phase = 2 pi t / period_s``::

        yaw   = yaw_amplitude_deg   * sin(phase)        (about +Y, positive = left)
        pitch = pitch_amplitude_deg * sin(2 * phase)    (about +X, positive = up)

    The head stays at ``(0, height, 0)``; at ``t = 0`` it looks straight down -Z.

    Example:
        >>> SimulatedHeadset().sample(0, 0).head
        Pose(position=(0.0, 1.6, 0.0), orientation=(0.0, 0.0, 0.0, 1.0))
    """

    def __init__(
        self,
        period_s: float = 8.0,
        yaw_amplitude_deg: float = 30.0,
        pitch_amplitude_deg: float = 10.0,
        height: float = 1.6,
        ipd: float = DEFAULT_IPD,
        fov: Fov = Fov(),
    ) -> None:
        """Raises ``ValueError`` unless ``period_s`` is positive."""
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.period_s = period_s
        self.yaw_amplitude = math.radians(yaw_amplitude_deg)
        self.pitch_amplitude = math.radians(pitch_amplitude_deg)
        self.height = height
        self.ipd = ipd
        self.fov = fov

    def head(self, display_time_ns: int) -> Pose:
        """The head pose at ``display_time_ns``."""
        # Reduce the time modulo the period in integers first: float seconds since boot
        # lose precision after a few days of uptime.
        period_ns = round(self.period_s * 1e9)
        phase = 2.0 * math.pi * ((display_time_ns % period_ns) / period_ns)
        yaw = axis_angle((0.0, 1.0, 0.0), self.yaw_amplitude * math.sin(phase))
        pitch = axis_angle((1.0, 0.0, 0.0), self.pitch_amplitude * math.sin(2.0 * phase))
        orientation = quaternion_multiply(yaw, pitch)  # pitch in the head's frame, then yaw
        return Pose((0.0, self.height, 0.0), tuple(float(v) for v in orientation))

    def sample(self, frame: int, display_time_ns: int) -> PoseSample:
        """The head and eyes at ``display_time_ns`` (``frame`` is only passed through)."""
        head = self.head(display_time_ns)
        return PoseSample(frame, display_time_ns, head, eyes_from_head(head, self.ipd, self.fov))


class TracePoseSource:
    """Replays a recorded head trace, interpolating between samples.

    Position is interpolated linearly, orientation by :func:`slerp`. Before the first
    sample and after the last the pose holds still, unless ``loop`` is set, in which case
    time wraps around the trace's duration.
    """

    def __init__(
        self,
        samples: Iterable[tuple[int, Pose]],
        *,
        ipd: float = DEFAULT_IPD,
        fov: Fov = Fov(),
        loop: bool = False,
    ) -> None:
        """Raises ``ValueError`` for an empty trace or times that do not increase."""
        ordered = list(samples)
        if not ordered:
            raise ValueError("a trace needs at least one sample")
        self.times = [int(t) for t, _ in ordered]
        if any(b <= a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise ValueError("trace times must strictly increase")
        self.poses = [pose for _, pose in ordered]
        self.ipd, self.fov, self.loop = ipd, fov, loop

    @classmethod
    def load(cls, path: str | Path, **options: object) -> TracePoseSource:
        """Read a JSON-lines trace (see the module doc); blank lines are skipped.

        Raises ``OSError`` if unreadable and ``ValueError`` naming the line if malformed.
        """
        samples = []
        text = Path(path).read_text(encoding="utf-8")
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pose = Pose.from_array([*row["position"], *row["orientation"]])
                samples.append((int(row["time_ns"]), pose))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a trace sample ({exc})") from exc
        return cls(samples, **options)  # type: ignore[arg-type]

    def head(self, display_time_ns: int) -> Pose:
        """The interpolated head pose at ``display_time_ns``."""
        t = display_time_ns
        first, last = self.times[0], self.times[-1]
        if self.loop and last > first:
            t = first + (t - first) % (last - first)
        if t <= first:
            return self.poses[0]
        if t >= last:
            return self.poses[-1]
        i = bisect.bisect_right(self.times, t)  # times[i-1] <= t < times[i]
        t0, t1 = self.times[i - 1], self.times[i]
        a, b = self.poses[i - 1], self.poses[i]
        if t == t0:
            return a  # exactly as recorded, not re-normalised
        u = (t - t0) / (t1 - t0)
        position = tuple(pa + u * (pb - pa) for pa, pb in zip(a.position, b.position, strict=True))
        return Pose(position, slerp(a.orientation, b.orientation, u))

    def sample(self, frame: int, display_time_ns: int) -> PoseSample:
        """The head and eyes at ``display_time_ns`` (``frame`` is only passed through)."""
        head = self.head(display_time_ns)
        return PoseSample(frame, display_time_ns, head, eyes_from_head(head, self.ipd, self.fov))


def record_trace(source: PoseSource, path: str | Path, times: Iterable[int]) -> int:
    """Write ``source``'s head pose at each of ``times`` to ``path`` as a JSON-lines trace.

    Returns the number of samples written. Times must increase (a trace replays in order).
    """
    lines = []
    for frame, t in enumerate(times):
        head = source.sample(frame, int(t)).head
        row = {
            "time_ns": int(t),
            "position": list(head.position),
            "orientation": list(head.orientation),
        }
        lines.append(json.dumps(row))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)

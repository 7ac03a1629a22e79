"""The game's side of the pose handoff: the pose source and pacer a game runs on.

The compositor publishes, once per display frame, the frame a client should render and the
head and eye poses predicted for its display (:mod:`engine.contracts.handoff`). A game
process samples that prediction (:class:`HandoffPoseSource`) and starts each frame when a
new one appears (:class:`HandoffPacer`, like ``xrWaitFrame``).
"""

from __future__ import annotations

from engine.contracts.handoff import PoseHandoffReader
from engine.pose.base import Pose, PoseSample
from engine.render.camera import eyes_from_head
from engine.scheduler.pacing import Clock, MonotonicClock

#: Where the head is before the compositor has said anything: standing, looking down -Z.
DEFAULT_HEAD = Pose((0.0, 1.6, 0.0))


class HandoffPoseSource:
    """A :class:`~engine.pose.base.PoseSource` for the game: the compositor's prediction.

    ``sample`` ignores the frame and time it is asked for and returns the newest record the
    compositor published (its frame number and predicted display time included), so the
    game renders with the pose predicted for when its image will be shown. Before the
    compositor has published anything it returns a default standing pose.
    """

    def __init__(self, reader: PoseHandoffReader) -> None:
        self.reader = reader
        self.last: PoseSample | None = None

    def sample(self, frame: int, display_time_ns: int) -> PoseSample:
        record = self.reader.read()
        if record is not None:
            self.last = record.sample
        if self.last is None:
            return PoseSample(frame, display_time_ns, DEFAULT_HEAD, eyes_from_head(DEFAULT_HEAD))
        return self.last


class HandoffPacer:
    """A :class:`~engine.game.Pacer` that starts each game frame when the compositor says.

    ``wait()`` returns as soon as the pose block holds a frame newer than the last one it
    returned for (like ``xrWaitFrame``). It sleeps coarsely until just before the next
    record is due, then polls every ``poll_ns``. If nothing new arrives within
    ``timeout_ns`` (a dead or stalled compositor) it returns anyway, so the game keeps
    running at roughly ``timeout_ns`` per frame instead of hanging; ``timeouts`` counts
    those. ``skipped`` counts compositor frames the game was too slow to start.
    """

    def __init__(
        self,
        reader: PoseHandoffReader,
        clock: Clock | None = None,
        *,
        period_ns: int = 11_111_111,
        timeout_ns: int = 100_000_000,
        poll_ns: int = 500_000,
        early_ns: int = 1_000_000,
    ) -> None:
        self.reader = reader
        self.clock: Clock = clock or MonotonicClock(spin_ns=0)  # sleep only: never spin
        self.period_ns = period_ns
        self.timeout_ns = timeout_ns
        self.poll_ns = poll_ns
        self.early_ns = early_ns
        self.last_frame: int | None = None
        self.skipped = 0
        self.timeouts = 0

    def wait(self) -> int:
        start = self.clock.now_ns()
        give_up = start + self.timeout_ns
        while True:
            record = self.reader.read()
            now = self.clock.now_ns()
            if record is not None:
                self.period_ns = record.period_ns or self.period_ns
                if self.last_frame is None or record.frame > self.last_frame:
                    if self.last_frame is not None:
                        self.skipped += max(0, record.frame - self.last_frame - 1)
                    self.last_frame = record.frame
                    return now
            if now >= give_up:
                self.timeouts += 1
                return now
            due = record.published_ns + record.period_ns - self.early_ns if record else 0
            self.clock.sleep_until(min(give_up, max(now + self.poll_ns, due)))

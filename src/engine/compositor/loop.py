"""The compositor's frame loop, as pure logic: clock, pose source, layers, composer and sink
are all injected, so every transition is tested with a manual clock and no GL.

One display frame (:meth:`CompositorLoop.step`):

1. pick the next slot whose compose deadline is still ahead (slots already passed are
   counted as missed, never composed late one after another) and sleep until it;
2. sample the head pose *now*, for that slot's display time;
3. read the newest valid image of each layer and update its deadline watchdog
   (:class:`LayerWatch`): fresh, reprojected from a stale image, or excluded;
4. compose: the fallback floor and horizon when the base layer is not shown, then every
   shown layer in order, each timewarped from the pose it was rendered with; the preview
   layer, if any, last, as a quad (a panel in the world: :mod:`engine.compositor.quad`);
5. present to the sink and time it (on time if done by the slot's display time);
6. publish the pose predicted for the *next* slot to clients (the pose handoff).

Nothing in a frame waits on a client: reading a layer is a header check and a view, the
composer uploads at most one image per layer, and the loop never blocks on a socket.

The preview layer (``preview_layer``) is surplus: it has no reprojection grace (a late one is
excluded at its deadline, before any game layer), and when time is short (a frame that
drew it missed its refresh, or the loop runs at half rate) it is shed for a while
(:class:`PreviewShedding`) before a game layer is ever touched.

An exception in a frame (the pose source, the composer, the sink) costs that frame, not the
compositor: :meth:`CompositorLoop.run` counts it (``failed_frames``, a missed refresh),
reports it (the first, then the 10th, 100th, ...) and goes on with the next slot.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.compositor.clock import DisplaySchedule
from engine.compositor.quad import QuadPlacement, quad_in_front
from engine.pose.base import EyeView, PoseSample, PoseSource
from engine.scheduler.pacing import Clock
from engine.scheduler.stats import RollingWindow, summarize

#: Samples kept for the percentiles: about 12 minutes at 90 Hz.
STATS_WINDOW = 65_536
#: Misses kept with their timings in the stats (``recent_misses``).
RECENT_MISSES = 32
#: A layer's frame rate counts the frames it published over this much of the past.
RATE_WINDOW_NS = 1_000_000_000


class LayerImage(Protocol):
    """What the loop needs of an image read from a layer (``LayerFrame`` has it)."""

    index: int
    seq: int
    frame: int
    eyes: tuple[EyeView, ...]


class LayerSource(Protocol):
    """A layer's reading side (``LayerReader``): the newest valid image, never raising."""

    def read(self) -> LayerImage | None: ...

    def still_valid(self, frame: Any) -> bool: ...


@dataclass(frozen=True, slots=True)
class LayerDraw:
    """One layer to draw this frame: its position, the image, and where it came from.

    ``quad`` places a quad layer (the preview) in the world; ``None``: a projection layer,
    timewarped to the eye. ``shed``: the layer is publishing but left out of the eyes this
    frame because time is short (the mirror may still show its last image).
    """

    layer: int
    image: LayerImage
    source: LayerSource
    stale: bool
    quad: QuadPlacement | None = None
    shed: bool = False


class Composer(Protocol):
    """Draws a frame's layers for both eyes (the GL one lives in the compositor process)."""

    def compose(
        self, draws: Sequence[LayerDraw], eyes: tuple[EyeView, EyeView], fallback: bool
    ) -> None: ...

    def finish(self) -> None:
        """Wait until the frame is really drawn (GL queues work; this is its glFinish)."""
        ...


class Sink(Protocol):
    """Where composed frames go (see :mod:`engine.compositor.sinks`)."""

    def present(self, frame: int, display_time_ns: int) -> None: ...

    def close(self) -> None: ...


class PoseHandoff(Protocol):
    """Publishes the pose clients should render the next frame with."""

    def publish(self, sample: PoseSample, period_ns: int, published_ns: int) -> None: ...


class LayerState(enum.StrEnum):
    WAITING = "waiting"  # no image yet (the game is starting)
    FRESH = "fresh"  # newest image within its deadline
    REPROJECTED = "reprojected"  # past the deadline, within the grace: last image, warped
    EXCLUDED = "excluded"  # past deadline + grace: not drawn until a new image arrives


@dataclass
class LayerWatch:
    """The deadline watchdog of one layer.

    An image's age is measured from when the compositor first saw it (its own clock; the
    producer's timestamps are never trusted for this). Up to ``deadline_ns`` old it is
    fresh; up to ``deadline_ns + grace_ns`` it is reprojected from its last image; older,
    the layer is excluded. Any new image (a different ring index or sequence number)
    makes it fresh again at once.
    """

    name: str
    deadline_ns: int
    grace_ns: int
    state: LayerState = LayerState.WAITING
    image: LayerImage | None = None
    arrived_ns: int = 0
    fresh_frames: int = 0
    reprojected_frames: int = 0
    excluded_frames: int = 0
    waiting_frames: int = 0
    exclusions: int = 0
    restorations: int = 0
    last_error: str | None = None
    #: New frames seen (a new image with a frame number past the last one's).
    published_frames: int = 0
    _arrivals: collections.deque = field(default_factory=collections.deque, repr=False)

    def update(self, image: LayerImage | None, now_ns: int) -> LayerState:
        """Take this frame's read (``None``: nothing valid) and return the layer's state."""
        if image is not None and (
            self.image is None or (image.index, image.seq) != (self.image.index, self.image.seq)
        ):
            if self.state is LayerState.EXCLUDED:
                self.restorations += 1
            if self.image is None or image.frame > self.image.frame:
                self.published_frames += 1
                self._arrivals.append(now_ns)
            self.image, self.arrived_ns = image, now_ns
        previous = self.state
        if self.image is None:
            self.state = LayerState.WAITING
            self.waiting_frames += 1
            return self.state
        age = now_ns - self.arrived_ns
        if age <= self.deadline_ns:
            self.state = LayerState.FRESH
            self.fresh_frames += 1
        elif age <= self.deadline_ns + self.grace_ns:
            self.state = LayerState.REPROJECTED
            self.reprojected_frames += 1
        else:
            self.state = LayerState.EXCLUDED
            self.excluded_frames += 1
            if previous is not LayerState.EXCLUDED:
                self.exclusions += 1
        return self.state

    def published_fps(self, now_ns: int) -> float:
        """Frames the layer published over the last second (``RATE_WINDOW_NS``), per
        second, on the compositor's clock: a producer's own timestamps are not trusted."""
        arrivals = self._arrivals
        while arrivals and arrivals[0] <= now_ns - RATE_WINDOW_NS:
            arrivals.popleft()
        return len(arrivals) * 1e9 / RATE_WINDOW_NS

    def stats(self, now_ns: int | None = None) -> dict[str, Any]:
        """The layer's counters; with ``now_ns``, its ``published_fps`` then too."""
        rate = {} if now_ns is None else {"published_fps": round(self.published_fps(now_ns), 1)}
        return {
            "state": str(self.state),
            "published_frames": self.published_frames,
            **rate,
            "fresh_frames": self.fresh_frames,
            "reprojected_frames": self.reprojected_frames,
            "excluded_frames": self.excluded_frames,
            "waiting_frames": self.waiting_frames,
            "exclusions": self.exclusions,
            "restorations": self.restorations,
            "last_error": self.last_error,
        }


@dataclass
class PreviewShedding:
    """When time is short, the preview layer goes first: it is shed (left out of the eyes)
    for ``base_frames`` frames, then tried again.

    Time is short when a frame that drew the preview missed its refresh (presented late,
    or overran into the next slot), or when the loop runs at half rate. A preview that
    makes the very next frames miss again as soon as it is back (within ``relapse_frames``)
    is shed twice as long each time, up to ``max_frames``: one that never fits costs a
    miss every ``max_frames`` frames at most. A game layer is never shed.
    """

    base_frames: int = 90
    max_frames: int = 1440
    relapse_frames: int = 30
    shed_until: int = 0  # frame number the preview is shed before
    length: int = 0
    sheds: int = 0  # times it was shed
    shed_frames: int = 0  # frames it was publishing but left out
    restored_at: int | None = None

    def shedding(self, frame: int) -> bool:
        """Whether the preview is left out of ``frame``."""
        if frame < self.shed_until:
            return True
        if self.length and self.restored_at is None:
            self.restored_at = frame
        return False

    def time_short(self, frame: int) -> None:
        """A frame that drew the preview (``frame``) found time short: shed it from the next
        (a second report for a frame already shed from is ignored)."""
        if frame < self.shed_until:
            return
        relapse = self.restored_at is not None and frame - self.restored_at <= self.relapse_frames
        self.length = min(2 * self.length, self.max_frames) if relapse else self.base_frames
        self.shed_until = frame + 1 + self.length
        self.restored_at = None
        self.sheds += 1


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """What happened in one display frame (times in ns on the loop's clock)."""

    frame: int
    slot: int
    skipped_slots: int
    woke_ns: int
    pose_sampled_ns: int  # when sampling returned; it was called at ``woke_ns``
    presented_ns: int
    display_time_ns: int
    on_time: bool
    states: tuple[LayerState, ...]
    fallback: bool


@dataclass
class LoopStats:
    """Counters and rolling samples; :meth:`as_dict` is the ``compositor`` stats entry."""

    frames: int = 0
    late_presents: int = 0
    skipped_slots: int = 0
    fallback_frames: int = 0
    failed_frames: int = 0  # a frame whose pose, compose or present raised
    last_failure: str | None = None
    intervals: RollingWindow = field(default_factory=lambda: RollingWindow(STATS_WINDOW))
    compose: RollingWindow = field(default_factory=lambda: RollingWindow(STATS_WINDOW))
    pose_age: RollingWindow = field(default_factory=lambda: RollingWindow(STATS_WINDOW))
    #: The last few misses, each saying where the time went (see ``stats_dict``).
    recent_misses: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_MISSES)
    )

    @property
    def missed(self) -> int:
        """Display refreshes without an on-time frame: late presents, skipped slots and
        frames that failed."""
        return self.late_presents + self.skipped_slots + self.failed_frames


class CompositorLoop:
    """Paces, samples, watches layers, composes and presents; see the module doc.

    Args:
        clock: time and sleeping (``MonotonicClock`` in the process, ``ManualClock`` in tests).
        schedule: the display timetable.
        pose_source: sampled once per frame right after the wait, for the slot's vsync.
        layers: ``(name, source)`` pairs, bottom first.
        composer: draws the frame; sink: presents it.
        handoff: where the next slot's predicted pose goes (``None``: nowhere).
        deadline_ns: a layer image older than this is stale (default 2 periods).
        grace_ns: how long a stale layer is reprojected before it is excluded.
        adapt_lead: every ``ADAPT_EVERY`` frames, set the compose lead to what the last
            ``TAIL_WINDOW`` frames that drew every layer needed (deadline-to-present: the
            slowest but for one in ``TAIL_IGNORED``, plus ``lead_margin_ns``), from 1 ms:
            a slow renderer then starts earlier and samples a slightly older pose instead
            of missing refreshes; a fast one samples later (the lead grows at once but
            shrinks by at most ``LEAD_SHRINK_STEP_NS`` a time). Up to one period less
            1 ms while the median of the last ``ADAPT_WINDOW`` fits in that (frames
            slower than that miss and do not count); past it, up to two periods less
            1 ms: every second refresh, each frame on time (half rate). Until every layer
            has been drawn in ``ADAPT_EVERY`` frames the lead stays as started.
        latch_at_vsync: present a frame composed in time at its slot's display time, as a
            swap with vsync does (the display shows it then, not when drawing ended); a
            late frame is presented at once and counted as missed.
        report: where a failed frame is reported (one line; not every repeat).
        preview_layer: the index in ``layers`` of the preview layer (``None``: none). It is
            drawn as a quad placed in front of the head when it appears, has no grace
            (excluded at its deadline) and is shed first when time is short
            (:class:`PreviewShedding`); frames that leave it out still count for the lead.
    """

    ADAPT_EVERY = 30
    LEAD_SHRINK_STEP_NS = 500_000  # the most one adaptation takes off the lead
    ADAPT_WINDOW = 270  # 3 s at 90 Hz: whether most frames fit a period (half rate)
    TAIL_WINDOW = 900  # 10 s: the tail the lead covers at full rate...
    TAIL_IGNORED = 450  # ...but for its one worst frame in this many

    def __init__(
        self,
        *,
        clock: Clock,
        schedule: DisplaySchedule,
        pose_source: PoseSource,
        layers: Sequence[tuple[str, LayerSource]],
        composer: Composer,
        sink: Sink,
        handoff: PoseHandoff | None = None,
        deadline_ns: int | None = None,
        grace_ns: int = 500_000_000,
        adapt_lead: bool = False,
        lead_margin_ns: int = 1_000_000,
        latch_at_vsync: bool = True,
        report: Callable[[str], None] | None = None,
        preview_layer: int | None = None,
    ) -> None:
        self.clock = clock
        self.schedule = schedule
        self.pose_source = pose_source
        self.sources = [source for _, source in layers]
        deadline = deadline_ns if deadline_ns is not None else 2 * schedule.period_ns
        self.preview_layer = preview_layer
        self.watches = [
            LayerWatch(name, deadline, 0 if i == preview_layer else grace_ns)
            for i, (name, _) in enumerate(layers)
        ]
        self.shedding = PreviewShedding()
        #: Where the preview's panel is: placed when it appears, kept while it is shown.
        self.preview_quad: QuadPlacement | None = None
        self._drew_preview = False
        self.composer = composer
        self.sink = sink
        self.handoff = handoff
        self.frame = 0
        self.slot: int | None = None
        self.stats = LoopStats()
        self.adapt_lead = adapt_lead
        self.lead_margin_ns = lead_margin_ns
        self.latch_at_vsync = latch_at_vsync
        self._needed = RollingWindow(self.TAIL_WINDOW)  # deadline -> present, per frame
        self._last_present_ns: int | None = None
        self.report = report
        self._attempted_slot: int | None = None

    def step(self) -> FrameRecord:
        """Compose and present one frame at the next slot still ahead."""
        now = self.clock.now_ns()
        previous_slot, previous_present = self.slot, self._last_present_ns
        earliest = self.schedule.first_slot_not_before(now)
        skipped = 0 if self.slot is None else max(0, earliest - self.slot - 1)
        if skipped and self._drew_preview:
            self.shedding.time_short(self.frame)  # the last frame drew it and overran
        slot = earliest if self.slot is None else max(self.slot + 1, earliest)
        self._attempted_slot = slot
        self.clock.sleep_until(self.schedule.compose_deadline(slot))
        woke = self.clock.now_ns()
        display_ns = self.schedule.vsync(slot)

        self.frame += 1
        pose = self.pose_source.sample(self.frame, display_ns)
        sampled = self.clock.now_ns()

        draws: list[LayerDraw] = []
        states = []
        for i, (watch, source) in enumerate(zip(self.watches, self.sources, strict=True)):
            image = source.read()
            watch.last_error = None if image is not None else getattr(source, "last_error", None)
            state = watch.update(image, sampled)
            states.append(state)
            shown = state in (LayerState.FRESH, LayerState.REPROJECTED)
            if i == self.preview_layer:
                draws.extend(self._preview_draw(i, watch, source, shown, pose))
            elif shown and watch.image is not None:
                draws.append(LayerDraw(i, watch.image, source, state is LayerState.REPROJECTED))
        fallback = not draws or draws[0].layer != 0
        self.composer.compose(draws, pose.eyes, fallback)
        self.composer.finish()
        composed = self.clock.now_ns()
        on_time = composed <= display_ns
        self._drew_preview = any(d.quad is not None and not d.shed for d in draws)
        if self._drew_preview and (not on_time or self.schedule.slots_per_frame > 1):
            self.shedding.time_short(self.frame)
        if self.handoff is not None:
            # The game starts now and its image is composed at the next slot.
            next_display = self.schedule.vsync(slot + self.schedule.slots_per_frame)
            prediction = self.pose_source.sample(self.frame + 1, next_display)
            self.handoff.publish(prediction, self.schedule.period_ns, self.clock.now_ns())
        if on_time and self.latch_at_vsync:
            # A display shows a frame at its refresh, not when drawing ended: like a swap
            # with vsync, hold the present until the slot's display time.
            self.clock.sleep_until(display_ns)
        self.sink.present(self.frame, display_ns)
        presented = self.clock.now_ns()
        s = self.stats
        s.frames += 1
        s.skipped_slots += skipped
        s.late_presents += 0 if on_time else 1
        s.fallback_frames += 1 if fallback else 0
        s.compose.add(composed - sampled)  # reading layers and drawing
        s.pose_age.add(presented - woke)  # the pose was sampled the moment the loop woke
        if self._last_present_ns is not None:
            s.intervals.add(presented - self._last_present_ns)
        self._last_present_ns = presented
        self.slot = slot
        deadline = self.schedule.compose_deadline(slot)
        game_layers = len(self.sources) - (self.preview_layer is not None)
        if sum(d.quad is None for d in draws) == game_layers:
            self._needed.add(composed - deadline)
        if skipped or not on_time:
            # Did the previous frame end past the next slot's compose deadline? Then it
            # cost the slots in between, not the OS.
            overran = 0
            if previous_slot is not None and previous_present is not None:
                overran = max(
                    0, previous_present - self.schedule.compose_deadline(previous_slot + 1)
                )
            s.recent_misses.append(
                {
                    "frame": self.frame,
                    "skipped_slots": skipped,
                    "previous_overran_ms": round(overran / 1e6, 3),
                    "woke_late_ms": round((woke - deadline) / 1e6, 3),
                    "compose_ms": round((composed - sampled) / 1e6, 3),
                    "late_ms": round(max(0, composed - display_ns) / 1e6, 3),
                    "lead_ms": round(self.schedule.compose_lead_ns / 1e6, 3),
                    # Half rate skips every other refresh on purpose.
                    "half_rate": self.schedule.slots_per_frame > 1,
                }
            )
        if self.adapt_lead and self.frame % self.ADAPT_EVERY == 0:
            self._adapt_lead()

        return FrameRecord(
            self.frame,
            slot,
            skipped,
            woke,
            sampled,
            presented,
            display_ns,
            on_time,
            tuple(states),
            fallback,
        )

    def _preview_draw(
        self, i: int, watch: LayerWatch, source: LayerSource, shown: bool, pose: PoseSample
    ) -> list[LayerDraw]:
        """The preview's draw this frame (none while it is not publishing), placed as a
        quad where the head looked when it appeared, and marked shed while time is short."""
        if not shown or watch.image is None:
            self.preview_quad = None  # it appears again where the user looks then
            return []
        if self.preview_quad is None:
            spec = getattr(watch.image, "spec", None)
            aspect = spec.height / spec.width if spec is not None else 9 / 16
            self.preview_quad = quad_in_front(pose.head, aspect)
        shed = self.shedding.shedding(self.frame)
        self.shedding.shed_frames += shed
        stale = watch.state is LayerState.REPROJECTED
        return [LayerDraw(i, watch.image, source, stale, quad=self.preview_quad, shed=shed)]

    def _adapt_lead(self) -> None:
        # A missed refresh is a visible judder; a pose older by a millisecond is not, so
        # the lead covers nearly every frame, not the typical one. Only frames that drew
        # every layer count: a layer can (re)appear at any frame, and frames without it
        # (before the game's first image, while it restarts) would shrink the lead below
        # what the next frame costs.
        if self._needed.count < self.ADAPT_EVERY:
            return
        recent = sorted(self._needed.samples(self.ADAPT_WINDOW))

        def percentile(p: int) -> int:
            return recent[min(len(recent) - 1, (p * len(recent) + 99) // 100 - 1)]

        period, current = self.schedule.period_ns, self.schedule.compose_lead_ns
        margin = self.lead_margin_ns
        full_rate_most = period - 1_000_000
        half_rate = self.schedule.slots_per_frame > 1
        # Most frames fit a period (entering half rate), or nine in ten (leaving it)?
        typical = percentile(90 if half_rate else 50)
        if typical + margin > full_rate_most:
            # They do not: every second refresh, each frame on time for the refresh it
            # was predicted for (half rate, as a VR runtime throttles an application),
            # instead of every frame late.
            lead = min(percentile(99) + margin, 2 * period - 1_000_000)
        else:
            # Full rate: cover the tail of the last TAIL_WINDOW frames but for one in
            # TAIL_IGNORED (a p99 leaves 1 % of refreshes to miss, several times what the
            # OS costs a bare pacing loop). Stalls no full-rate lead can absorb miss
            # whatever the lead, so they do not pull it up to a period.
            needed = sorted(self._needed.samples())
            fits = bisect.bisect_right(needed, full_rate_most - margin)  # a sorted prefix
            tail = needed[fits - 1 - fits // self.TAIL_IGNORED] if fits else 0
            lead = max(tail + margin, 1_000_000)
        if half_rate and lead < period:
            lead = max(lead, full_rate_most)  # back to full rate, from its safest lead
        else:
            # Grow at once, shrink by steps: a later compose window moves the frame against
            # the producers' work, and the frames right after a large cut were the late ones.
            lead = max(lead, current - self.LEAD_SHRINK_STEP_NS)
        if abs(lead - current) > 250_000:  # no churn over noise
            self.schedule = dataclasses.replace(self.schedule, compose_lead_ns=lead)

    def run(self, frames: int | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Step until ``frames`` frames have run or ``stop()`` is true (checked every frame)."""
        target = None if frames is None else self.frame + frames
        while (target is None or self.frame < target) and not (stop and stop()):
            try:
                self.step()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - GL's ShaderException is one
                self._frame_failed(exc)

    def _frame_failed(self, exc: BaseException) -> None:
        """A frame raised: count it, say so (sparingly), and move on to the next slot."""
        s = self.stats
        s.failed_frames += 1
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else ""
        s.last_failure = f"{type(exc).__name__}: {exc}{where}"
        if self._attempted_slot is not None:
            self.slot = self._attempted_slot  # never retry the slot that failed
        n = s.failed_frames
        if self.report is not None and str(n).rstrip("0") == "1":  # 1st, 10th, 100th...
            self.report(f"frame {self.frame} failed and was skipped ({n} so far): {s.last_failure}")

    def stats_dict(self) -> dict[str, Any]:
        """The ``compositor`` entry of the supervisor's stats (times in milliseconds).

        ``recent_misses`` holds the last 32 misses, each with where its time went:
        ``previous_overran_ms`` (the frame before ended past the next slot's compose
        deadline: too much work per frame), ``woke_late_ms`` (woke after the compose
        deadline: the OS scheduler, unless the previous frame overran),
        ``compose_ms`` (sampling to drawn: the renderer), ``late_ms`` (past the slot's
        vsync), ``skipped_slots``, the ``lead_ms`` in force and whether the loop ran at
        ``half_rate`` (every second refresh on purpose).
        """
        s = self.stats
        now = self.clock.now_ns()
        interval = s.intervals.summary(self.schedule.period_ns)
        period = self.schedule.period_ns
        errors = [abs(x - period) for x in s.intervals.samples()]
        interval_error = summarize(errors, period)
        compose = s.compose.summary(self.schedule.period_ns)
        pose_age = s.pose_age.summary(self.schedule.period_ns)
        return {
            "frames": s.frames,
            "missed": s.missed,
            "late_presents": s.late_presents,
            "skipped_slots": s.skipped_slots,
            "fallback_frames": s.fallback_frames,
            "failed_frames": s.failed_frames,
            "last_failure": s.last_failure,
            "period_ms": self.schedule.period_ns / 1e6,
            "compose_lead_ms": self.schedule.compose_lead_ns / 1e6,
            "interval_ms_p50": interval.p50_ms,
            "interval_ms_p99": interval.p99_ms,
            "interval_ms_max": interval.max_ms,
            "interval_error_ms_p50": interval_error.p50_ms,
            "interval_error_ms_p99": interval_error.p99_ms,
            "compose_ms_p50": compose.p50_ms,
            "compose_ms_p99": compose.p99_ms,
            "compose_ms_max": compose.max_ms,
            "pose_age_ms_p50": pose_age.p50_ms,
            "pose_age_ms_p99": pose_age.p99_ms,
            "layers": {w.name: w.stats(now) for w in self.watches},
            "preview": self._preview_stats(),
            "recent_misses": list(s.recent_misses),
        }

    def _preview_stats(self) -> dict[str, Any] | None:
        """``exclusions_late``: times the preview went past its deadline (no grace);
        ``exclusions_time_short``: times it was shed because time was short, and
        ``shed_frames`` the frames it was left out for; ``None`` without a preview layer."""
        if self.preview_layer is None:
            return None
        watch = self.watches[self.preview_layer]
        return {
            "layer": watch.name,
            "exclusions_late": watch.exclusions,
            "exclusions_time_short": self.shedding.sheds,
            "shed_frames": self.shedding.shed_frames,
        }

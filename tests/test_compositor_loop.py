"""The compositor loop's logic with a manual clock: pacing, late pose sampling, the deadline
watchdog (fresh -> reprojected -> excluded -> restored), missed frames and the handoff.

Nothing here sleeps or draws: the clock, pose source, layers, composer and sink are fakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from engine.compositor.clock import DisplaySchedule
from engine.compositor.loop import CompositorLoop, LayerState, LayerWatch
from engine.pose.base import EyeView, Pose, PoseSample
from engine.scheduler.pacing import ManualClock

PERIOD = 10_000_000  # 100 Hz keeps the arithmetic readable
LEAD = 2_000_000


@dataclass
class Image:
    index: int
    seq: int
    frame: int
    eyes: tuple[EyeView, ...] = (EyeView(Pose()), EyeView(Pose()))


class FakeLayer:
    """A layer whose newest image the test sets (``None``: nothing valid)."""

    def __init__(self) -> None:
        self.image: Image | None = None
        self.count = 0
        self.last_error = "nothing published yet"

    def publish(self) -> Image:
        self.count += 1
        self.image = Image(self.count % 3, 2 * self.count, self.count)
        return self.image

    def read(self) -> Image | None:
        return self.image

    def still_valid(self, frame: object) -> bool:
        return True


class RecordingPoseSource:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls: list[tuple[int, int, int]] = []  # (frame, display_time, clock at call)

    def sample(self, frame: int, display_time_ns: int) -> PoseSample:
        self.calls.append((frame, display_time_ns, self.clock.now_ns()))
        eyes = (EyeView(Pose()), EyeView(Pose()))
        return PoseSample(frame, display_time_ns, Pose(), eyes)


@dataclass
class RecordingComposer:
    clock: ManualClock
    cost_ns: int = 0
    calls: list[tuple[list[int], bool]] = field(default_factory=list)

    def compose(self, draws, eyes, fallback):  # noqa: ANN001
        self.calls.append(([d.layer for d in draws], fallback))
        self.clock.advance(self.cost_ns)

    def finish(self) -> None:
        pass


class CountingSink:
    def __init__(self) -> None:
        self.frames: list[tuple[int, int]] = []

    def present(self, frame: int, display_time_ns: int) -> None:
        self.frames.append((frame, display_time_ns))

    def close(self) -> None:
        pass


class RecordingHandoff:
    def __init__(self) -> None:
        self.published: list[PoseSample] = []

    def publish(self, sample: PoseSample, period_ns: int, published_ns: int) -> None:
        self.published.append(sample)


def make_loop(
    layers: int = 1, grace_ns: int = 5 * PERIOD, compose_cost_ns: int = 0, adapt: bool = False
):
    clock = ManualClock(0)
    schedule = DisplaySchedule(PERIOD, origin_ns=PERIOD, compose_lead_ns=LEAD)
    sources = [FakeLayer() for _ in range(layers)]
    pose = RecordingPoseSource(clock)
    composer = RecordingComposer(clock, compose_cost_ns)
    sink = CountingSink()
    handoff = RecordingHandoff()
    loop = CompositorLoop(
        clock=clock,
        schedule=schedule,
        pose_source=pose,
        layers=[(f"layer{i}", s) for i, s in enumerate(sources)],
        composer=composer,
        sink=sink,
        handoff=handoff,
        deadline_ns=2 * PERIOD,
        grace_ns=grace_ns,
        adapt_lead=adapt,
    )
    return loop, clock, sources, pose, composer, sink, handoff


def test_pose_is_sampled_after_the_wait_for_the_slots_display_time():
    loop, clock, _, pose, _, _, _ = make_loop()
    for _ in range(3):
        record = loop.step()
        frame, display, sampled_at = pose.calls[-2]  # the last call is the handoff's
        assert sampled_at == loop.schedule.compose_deadline(record.slot)
        assert display == loop.schedule.vsync(record.slot) == record.display_time_ns
        assert frame == record.frame


def test_slots_follow_each_other_at_the_display_rate():
    loop, *_ = make_loop()
    slots = [loop.step().slot for _ in range(5)]
    assert slots == [0, 1, 2, 3, 4]
    assert loop.stats.missed == 0
    assert loop.stats.intervals.samples() == [PERIOD] * 4


def test_a_fresh_layer_is_drawn_without_the_fallback():
    loop, _, (layer,), _, composer, _, _ = make_loop()
    layer.publish()
    record = loop.step()
    assert record.states == (LayerState.FRESH,)
    assert composer.calls[-1] == ([0], False)


def test_no_image_yet_shows_the_fallback_and_counts_waiting_not_excluded():
    loop, _, _, _, composer, _, _ = make_loop()
    for _ in range(4):
        assert loop.step().states == (LayerState.WAITING,)
    assert composer.calls[-1] == ([], True)
    watch = loop.watches[0]
    assert (watch.waiting_frames, watch.excluded_frames) == (4, 0)


def test_stale_layer_is_reprojected_then_excluded_then_restored_by_a_fresh_image():
    loop, _, (layer,), _, composer, _, _ = make_loop(grace_ns=3 * PERIOD)
    layer.publish()
    states = [loop.step().states[0] for _ in range(7)]
    # Arrived at frame 1; age 0,1,2 periods fresh; 3,4,5 reprojected; then excluded.
    assert states == ["fresh"] * 3 + ["reprojected"] * 3 + ["excluded"]
    assert composer.calls[5] == ([0], False)  # reprojected: still drawn, from the old image
    assert composer.calls[6] == ([], True)  # excluded: the fallback instead
    layer.publish()
    assert loop.step().states == (LayerState.FRESH,)
    watch = loop.watches[0]
    assert (watch.reprojected_frames, watch.excluded_frames) == (3, 1)
    assert (watch.exclusions, watch.restorations) == (1, 1)


def test_an_invalid_read_keeps_the_last_image_until_its_grace_runs_out():
    loop, _, (layer,), _, composer, _, _ = make_loop(grace_ns=2 * PERIOD)
    layer.publish()
    loop.step()
    layer.image = None  # e.g. the producer restarted and re-initialised the block
    states = [loop.step().states[0] for _ in range(5)]
    assert states == ["fresh", "fresh", "reprojected", "reprojected", "excluded"]
    assert loop.watches[0].last_error == "nothing published yet"


def test_each_layer_has_its_own_watchdog_and_an_excluded_base_layer_brings_the_fallback():
    loop, _, (base, overlay), _, composer, _, _ = make_loop(layers=2, grace_ns=0)
    base.publish()
    overlay.publish()
    loop.step()
    for _ in range(3):
        overlay.publish()  # only the overlay keeps up
        loop.step()
    assert composer.calls[-1] == ([1], True)
    stats = loop.stats_dict()["layers"]
    assert stats["layer0"]["excluded_frames"] == 1
    assert stats["layer1"]["excluded_frames"] == 0


def test_a_late_present_counts_as_missed():
    loop, clock, *_ = make_loop()
    loop.step()
    loop.composer.cost_ns = LEAD + 1  # finishes just after the refresh
    record = loop.step()
    assert not record.on_time
    assert (loop.stats.late_presents, loop.stats.skipped_slots, loop.stats.missed) == (1, 0, 1)
    (miss,) = loop.stats_dict()["recent_misses"]  # the renderer's fault, not the OS's
    assert miss["frame"] == record.frame and miss["woke_late_ms"] == 0
    assert miss["compose_ms"] == pytest.approx(LEAD / 1e6, abs=1e-3)  # kept to 1 us
    assert miss["late_ms"] == pytest.approx(0, abs=1e-3)


def test_a_stall_skips_the_passed_slots_instead_of_composing_them_late():
    loop, clock, *_ = make_loop()
    loop.step()  # slot 0, composed at 8 ms, presented at its vsync (10 ms)
    clock.advance(3 * PERIOD - LEAD)  # descheduled until 38 ms: slots 1 and 2 have passed
    record = loop.step()
    assert record.slot == 3 and record.skipped_slots == 2
    assert loop.stats.missed == 2
    (miss,) = loop.stats_dict()["recent_misses"]  # the OS's fault: it woke too late
    assert miss["skipped_slots"] == 2 and miss["late_ms"] == 0
    assert miss["previous_overran_ms"] == 0  # slot 0's frame ended in time
    assert loop.step().slot == 4
    assert len(loop.stats_dict()["recent_misses"]) == 1


def test_a_frame_that_overruns_its_period_is_blamed_for_the_slot_it_cost():
    loop, clock, *_ = make_loop()
    loop.step()  # slot 0, on time
    loop.composer.cost_ns = PERIOD + LEAD  # composing slot 1 runs into slot 2's deadline
    loop.step()
    loop.composer.cost_ns = 0
    record = loop.step()
    assert record.skipped_slots == 1
    misses = loop.stats_dict()["recent_misses"]
    assert [m["previous_overran_ms"] > 0 for m in misses] == [False, True]


def test_the_handoff_predicts_the_next_slot():
    loop, _, _, _, _, _, handoff = make_loop()
    record = loop.step()
    sample = handoff.published[-1]
    assert sample.frame == record.frame + 1
    assert sample.display_time_ns == loop.schedule.vsync(record.slot + 1)


def test_stats_report_percentiles_in_milliseconds():
    loop, *_ = make_loop(compose_cost_ns=1_000_000)
    loop.run(frames=10)
    stats = loop.stats_dict()
    assert stats["frames"] == 10
    assert stats["compose_ms_p50"] == pytest.approx(1.0)
    # The pose is sampled at the compose deadline and shown at the vsync: one lead later.
    assert stats["pose_age_ms_p99"] == pytest.approx(LEAD / 1e6)
    assert stats["interval_ms_p50"] == pytest.approx(PERIOD / 1e6)


def test_layer_watch_treats_same_image_as_not_new():
    watch = LayerWatch("x", deadline_ns=10, grace_ns=10)
    image = Image(0, 2, 1)
    assert watch.update(image, 0) is LayerState.FRESH
    assert watch.update(Image(0, 2, 1), 15) is LayerState.REPROJECTED
    assert watch.update(Image(0, 4, 2), 16) is LayerState.FRESH  # same index, new seq


def test_schedule_takes_a_lead_up_to_two_periods_and_then_composes_every_second_slot():
    with pytest.raises(ValueError):
        DisplaySchedule(PERIOD, 0, compose_lead_ns=2 * PERIOD)
    assert DisplaySchedule(PERIOD, 0, compose_lead_ns=PERIOD - 1).slots_per_frame == 1
    assert DisplaySchedule(PERIOD, 0, compose_lead_ns=PERIOD).slots_per_frame == 2


def fresh_step(loop, sources):  # noqa: ANN001, ANN201
    for source in sources:
        source.publish()
    return loop.step()


def test_a_slow_composer_makes_the_lead_grow_until_presents_are_on_time():
    loop, _, sources, *_ = make_loop(compose_cost_ns=5_000_000, adapt=True)  # lead is 2 ms
    first = [fresh_step(loop, sources).on_time for _ in range(loop.ADAPT_EVERY)]
    assert not any(first)
    later = [fresh_step(loop, sources).on_time for _ in range(60)]
    assert all(later)
    assert loop.schedule.compose_lead_ns == 6_000_000  # 5 ms needed + 1 ms margin


def test_a_fast_composer_makes_the_lead_shrink_step_by_step_so_the_pose_is_fresher():
    loop, _, sources, *_ = make_loop(compose_cost_ns=0, adapt=True)
    loop.schedule = DisplaySchedule(PERIOD, PERIOD, compose_lead_ns=8_000_000)
    leads = []
    for _ in range(20):
        for _ in range(loop.ADAPT_EVERY):
            fresh_step(loop, sources)
        leads.append(loop.schedule.compose_lead_ns)
    assert leads[0] == 8_000_000 - loop.LEAD_SHRINK_STEP_NS  # not at once
    steps = zip([8_000_000, *leads[:-1]], leads, strict=True)
    assert all(a - b <= loop.LEAD_SHRINK_STEP_NS for a, b in steps)
    assert leads[-1] == 1_000_000


def test_a_composer_slower_than_a_period_runs_at_half_rate_with_every_frame_on_time():
    loop, _, sources, _, _, _, handoff = make_loop(compose_cost_ns=PERIOD + 3_000_000, adapt=True)
    for _ in range(4 * loop.ADAPT_EVERY):
        fresh_step(loop, sources)
    assert PERIOD <= loop.schedule.compose_lead_ns < 2 * PERIOD
    records = [fresh_step(loop, sources) for _ in range(30)]
    assert all(r.on_time for r in records)
    assert {b.slot - a.slot for a, b in zip(records, records[1:], strict=False)} == {2}
    # The game is asked for the slot the compositor will compose next, two refreshes on.
    assert handoff.published[-1].display_time_ns == loop.schedule.vsync(records[-1].slot + 2)


def test_rare_slow_frames_keep_full_rate_and_miss_alone():
    """Frames slower than a period miss whatever the lead: they neither pull the lead up
    to a period (an older pose for every frame) nor make the ordinary frames miss."""
    loop, _, sources, _, composer, _, _ = make_loop(adapt=True)
    records = []
    for i in range(6 * loop.ADAPT_EVERY):
        composer.cost_ns = PERIOD + 3_000_000 if i % 20 == 0 else 1_000_000  # 1 in 20
        records.append((composer.cost_ns, fresh_step(loop, sources)))
    assert loop.schedule.compose_lead_ns == 2_000_000  # 1 ms needed + 1 ms margin
    assert loop.schedule.slots_per_frame == 1
    late = [cost for cost, r in records[loop.ADAPT_EVERY :] if not r.on_time]
    assert late and set(late) == {PERIOD + 3_000_000}


def test_a_recurring_tail_is_covered_not_left_to_miss():
    """A frame twice as slow as the rest every 2 s is a tail a p99 over 3 s leaves to
    miss (about 0.5 % of refreshes, several times what the OS costs a bare loop): the
    lead covers it, so that once seen, such frames are on time too."""
    loop, _, sources, _, composer, _, _ = make_loop(adapt=True)
    records = []
    for i in range(900):  # 10 s
        composer.cost_ns = 4_000_000 if i % 180 == 90 else 2_000_000
        records.append(fresh_step(loop, sources))
    assert loop.schedule.compose_lead_ns == 5_000_000  # the slow frames + 1 ms margin
    assert all(r.on_time for r in records[2 * 180 :])


def test_half_rate_ends_once_nine_frames_in_ten_fit_a_period_again():
    loop, _, sources, _, composer, _, _ = make_loop(compose_cost_ns=PERIOD + 3_000_000, adapt=True)
    for _ in range(4 * loop.ADAPT_EVERY):
        fresh_step(loop, sources)
    assert loop.schedule.slots_per_frame == 2
    composer.cost_ns = 2_000_000
    for _ in range(loop.ADAPT_WINDOW + loop.ADAPT_EVERY):
        fresh_step(loop, sources)
    assert loop.schedule.slots_per_frame == 1
    assert all(fresh_step(loop, sources).on_time for _ in range(30))


def test_frames_without_every_layer_do_not_shrink_the_lead():
    """Before the game's first image (or while it restarts) frames are cheap; a lead
    shrunk to them would make the frame the layer comes back in late."""
    loop, _, sources, _, composer, _, _ = make_loop(layers=2, adapt=True)
    loop.schedule = DisplaySchedule(PERIOD, PERIOD, compose_lead_ns=8_000_000)
    loop.run(frames=3 * loop.ADAPT_EVERY)  # no layer at all
    sources[0].publish()
    for _ in range(3 * loop.ADAPT_EVERY):  # the base layer only
        sources[0].publish()
        loop.step()
    assert loop.schedule.compose_lead_ns == 8_000_000
    for _ in range(loop.ADAPT_EVERY):  # both: now the lead follows what they cost
        fresh_step(loop, sources)
    assert loop.schedule.compose_lead_ns == 8_000_000 - loop.LEAD_SHRINK_STEP_NS


def test_a_frame_composed_in_time_is_presented_at_its_vsync_and_a_late_one_at_once():
    loop, clock, *_ = make_loop(compose_cost_ns=1_000_000)
    record = loop.step()
    assert record.on_time and record.presented_ns == record.display_time_ns
    late, clock2, *_ = make_loop(compose_cost_ns=LEAD + 3_000_000)  # misses its vsync
    record = late.step()
    assert not record.on_time and record.presented_ns == record.display_time_ns + 3_000_000
    assert late.stats.missed == 1


# --- the preview layer ------------------------------------------------------------------


@dataclass
class DrawRecordingComposer:
    """Records every frame's draws; a frame that draws the preview (not shed) costs
    ``preview_cost_ns`` on the clock."""

    clock: ManualClock
    preview_cost_ns: int = 0
    calls: list[list] = field(default_factory=list)

    def compose(self, draws, eyes, fallback):  # noqa: ANN001
        self.calls.append(list(draws))
        if any(d.quad is not None and not d.shed for d in draws):
            self.clock.advance(self.preview_cost_ns)

    def finish(self) -> None:
        pass


class TurningPoseSource(RecordingPoseSource):
    """A head at 1.6 m that turns left 1 degree a frame."""

    def sample(self, frame: int, display_time_ns: int) -> PoseSample:
        import math

        from engine.render.camera import axis_angle

        head = Pose((0.0, 1.6, 0.0), tuple(axis_angle((0.0, 1.0, 0.0), math.radians(frame))))
        return PoseSample(frame, display_time_ns, head, (EyeView(head), EyeView(head)))


def make_preview_loop(preview_cost_ns: int = 0, grace_ns: int = 50 * PERIOD):
    clock = ManualClock(0)
    schedule = DisplaySchedule(PERIOD, origin_ns=PERIOD, compose_lead_ns=LEAD)
    game, preview = FakeLayer(), FakeLayer()
    composer = DrawRecordingComposer(clock, preview_cost_ns)
    loop = CompositorLoop(
        clock=clock,
        schedule=schedule,
        pose_source=TurningPoseSource(clock),
        layers=[("game", game), ("preview", preview)],
        composer=composer,
        sink=CountingSink(),
        deadline_ns=2 * PERIOD,
        grace_ns=grace_ns,
        preview_layer=1,
    )
    return loop, clock, game, preview, composer


def test_a_preview_layer_that_never_published_changes_nothing():
    loop, _, game, _, composer = make_preview_loop()
    for _ in range(5):
        game.publish()
        record = loop.step()
    assert [[d.layer for d in call] for call in composer.calls] == [[0]] * 5
    assert not record.fallback and loop.stats.missed == 0
    assert loop.stats_dict()["preview"]["exclusions_time_short"] == 0


def test_the_preview_is_drawn_last_as_a_panel_left_where_it_appeared():
    loop, _, game, preview, composer = make_preview_loop()
    for _ in range(3):
        game.publish()
        loop.step()
    for _ in range(5):
        game.publish()
        preview.publish()
        loop.step()
    first, last = composer.calls[3], composer.calls[-1]
    assert [d.layer for d in last] == [0, 1]
    assert last[0].quad is None and last[1].quad is not None  # the game: a projection layer
    # Placed 1.5 m ahead of the head as it was at frame 4 (turned 4 degrees left), at eye
    # height, and not moved since although the head went on turning.
    import math

    quad = first[1].quad
    assert last[1].quad == quad
    x, y, z = quad.center
    assert y == pytest.approx(1.6)
    assert math.hypot(x, z) == pytest.approx(1.5)
    assert math.degrees(math.atan2(-x, -z)) == pytest.approx(4.0)
    assert quad.width == pytest.approx(0.8)


def test_a_late_preview_is_excluded_before_the_game_layer():
    loop, _, game, preview, composer = make_preview_loop()
    game.publish()
    preview.publish()
    loop.step()
    states = [loop.step().states for _ in range(5)]  # neither publishes again
    # Past the deadline (2 periods) the game is reprojected through its grace; the preview
    # has none: it is gone.
    assert states[-1] == (LayerState.REPROJECTED, LayerState.EXCLUDED)
    assert [d.layer for d in composer.calls[-1]] == [0]
    assert loop.stats_dict()["preview"]["exclusions_late"] == 1
    # When it publishes again it appears again, placed anew.
    preview.publish()
    loop.step()
    assert composer.calls[-1][-1].quad is not None


def test_the_preview_is_shed_first_when_a_frame_misses_and_longer_when_it_relapses():
    # Drawing the preview makes a frame overrun its slot; the game alone fits.
    loop, _, game, preview, composer = make_preview_loop(preview_cost_ns=PERIOD)
    loop.shedding.base_frames = 10

    def run(frames: int) -> list[list[tuple[int, bool]]]:
        out = []
        for _ in range(frames):
            game.publish()
            preview.publish()
            loop.step()
            out.append([(d.layer, d.shed) for d in composer.calls[-1]])
        return out

    frames = run(12)
    assert frames[0] == [(0, False), (1, False)]  # drawn, and late
    # Then shed for 10 frames: still publishing (the mirror may show it), not in the eyes;
    # the game layer is drawn in every one of them and nothing more is missed.
    assert frames[1:11] == [[(0, False), (1, True)]] * 10
    assert frames[11] == [(0, False), (1, False)]  # tried again: late again at once
    assert loop.stats.missed == 2
    frames = run(25)
    assert frames[:20] == [[(0, False), (1, True)]] * 20  # relapsed: twice as long
    stats = loop.stats_dict()["preview"]
    assert stats["exclusions_time_short"] == 3
    assert stats["shed_frames"] == 30 + 4  # shed again after the second retry


def test_a_layers_frame_rate_is_what_it_published_over_the_last_second():
    loop, clock, game, preview, _ = make_preview_loop()
    for frame in range(200):  # 2 s at 100 Hz; the preview publishes every other frame
        game.publish()
        if frame % 2 == 0:
            preview.publish()
        loop.step()
    now = clock.now_ns()
    game_watch, preview_watch = loop.watches
    assert game_watch.published_fps(now) == pytest.approx(100, abs=1)
    assert preview_watch.published_fps(now) == pytest.approx(50, abs=1)
    layers = loop.stats_dict()["layers"]
    assert layers["preview"]["published_frames"] == 100
    assert layers["preview"]["published_fps"] == pytest.approx(50, abs=1)
    for _ in range(100):  # the preview stops: its rate falls to nothing within the second
        game.publish()
        loop.step()
    assert preview_watch.published_fps(clock.now_ns()) == 0


def test_the_start_lead_is_twice_the_timed_frame_within_full_rate_or_half_rate():
    from engine.compositor.process import start_lead_ns

    ms = 1_000_000
    assert start_lead_ns(2 * ms, PERIOD, 4 * ms) == 5 * ms  # 2 x 2 ms + 1 ms
    assert start_lead_ns(1 * ms, PERIOD, 4 * ms) == 4 * ms  # never below the configured
    assert start_lead_ns(6 * ms, PERIOD, 4 * ms) == PERIOD - ms  # fits: full rate, capped
    assert start_lead_ns(PERIOD, PERIOD, 4 * ms) == 2 * PERIOD - ms  # does not: half rate

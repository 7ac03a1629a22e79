"""Frame pacing with an injected clock: no sleeps, no dependence on this machine's speed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write
from engine import FrameInfo
from engine.scheduler.pacing import (
    FRAME_NS,
    ComposeTimes,
    FixedRatePacer,
    ManualClock,
    YieldingWriter,
    compose_times,
)


def test_pacer_waits_for_each_slot_and_skips_missed_ones() -> None:
    clock = ManualClock(1_000)
    pacer = FixedRatePacer(clock, 90.0)
    assert pacer.wait() == 1_000  # the first frame starts at once
    assert pacer.wait() == 1_000 + FRAME_NS
    assert clock.now_ns() == 1_000 + FRAME_NS
    clock.advance(5 * FRAME_NS + 10)  # a long stall: do not run 5 frames back to back
    deadline = pacer.wait()
    assert deadline > clock.now_ns() - FRAME_NS
    assert (deadline - 1_000) % FRAME_NS == 0
    assert pacer.skipped == 5


def test_dt_is_measured_then_clamped_after_a_stall(project, make_engine) -> None:
    write(
        project / "systems" / "probe.py",
        """
        import engine

        @engine.system
        def probe(world, dt):
            pass
    """,
    )
    clock = ManualClock()
    eng = make_engine(project, clock=clock, fixed_dt=None)
    eng.step()
    clock.advance(FRAME_NS)
    eng.step()
    assert eng.world.resources[FrameInfo].dt == FRAME_NS / 1e9
    clock.advance(3_000_000_000)  # a three second stall
    eng.step()
    assert eng.world.resources[FrameInfo].dt == eng.policy.max_dt_s


def test_run_paces_frames_on_the_injected_clock(project, make_engine) -> None:
    clock = ManualClock()
    eng = make_engine(project, clock=clock)
    eng.run(frames=90, watch=False)
    assert eng.frame == 90
    assert clock.now_ns() == 89 * FRAME_NS  # 90 frames span 89 periods: one second


# -- the checkpoint writer yields the memory bus to the compositor (issue 9, hole 9) -------

PERIOD = 11_111_111


def _busy(times: ComposeTimes, t: int, after_ns: int) -> bool:
    """Is ``t`` inside one of the compositor's busy stretches?"""
    since = (t - times.display_ns) % times.period_ns  # since the last display at or before t
    return since < after_ns or since > times.period_ns - times.busy_before_ns


@settings(max_examples=300, deadline=None)
@given(
    now=st.integers(0, 10 * PERIOD),
    busy_before=st.integers(0, 8_000_000),
    need=st.integers(1, 3_000_000),
    display=st.integers(0, PERIOD),
)
def test_work_starts_at_the_first_moment_it_ends_before_the_next_compose(
    now: int, busy_before: int, need: int, display: int
) -> None:
    times = ComposeTimes(display, PERIOD, busy_before)
    after = 300_000
    start = times.quiet_at(now, need, after)
    if need + busy_before + after >= PERIOD:
        assert start == now  # no stretch is long enough: never wait for ever
        return
    assert now <= start < now + PERIOD + after
    step = max(1, need // 50)
    assert not any(_busy(times, t, after) for t in range(start, start + need, step))
    assert not _busy(times, start + need - 1, after)
    if start > now:  # and not a moment earlier would have done
        earlier = start - 1
        assert (
            _busy(times, earlier, after)
            or any(_busy(times, t, after) for t in range(earlier, earlier + need, step))
            or _busy(times, earlier + need - 1, after)
        )


def test_the_pose_block_tells_when_the_compositor_composes() -> None:
    # Published 3 ms before the display it composed for (the one before the predicted).
    display = 10**12
    times = compose_times(display, PERIOD, display - PERIOD - 3_000_000, allowance_ns=2_000_000)
    assert times == ComposeTimes(display, PERIOD, 5_000_000)
    # Published after that display (a late compose): only the allowance is known.
    late = compose_times(display, PERIOD, display - PERIOD + 1_000, allowance_ns=2_000_000)
    assert late.busy_before_ns == 2_000_000


class _Recorder:
    """A file that notes when (on the manual clock) each write began, and how long."""

    def __init__(self, clock: ManualClock, ns_per_byte: float) -> None:
        self.clock, self.ns_per_byte = clock, ns_per_byte
        self.writes: list[tuple[int, int]] = []
        self.data = bytearray()

    def write(self, data) -> int:  # noqa: ANN001
        self.writes.append((self.clock.now_ns(), len(data)))
        self.data += data
        self.clock.advance(round(len(data) * self.ns_per_byte))
        return len(data)


def test_a_large_buffer_goes_out_in_pieces_between_composes_and_arrives_whole() -> None:
    clock = ManualClock(10**12 + 1_000)
    times = ComposeTimes(10**12, PERIOD, 5_000_000)
    file = _Recorder(clock, ns_per_byte=0.4)  # 1 MiB in 0.42 ms
    writer = YieldingWriter(file, lambda: times, clock=clock)
    payload = bytes(range(256)) * (40 * 4096 + 7)  # about 40 MiB, not a whole piece
    assert writer.write(payload) == len(payload)
    assert bytes(file.data) == payload
    assert writer.pieces == len(file.writes) == -(-len(payload) // YieldingWriter.PIECE)
    for start, size in file.writes:
        end = start + round(size * 0.4)
        assert not _busy(times, start, 300_000) and not _busy(times, end - 1, 300_000)
    assert writer.waited_ns > 0
    # Small writes (a pickle's frames) go straight through, whenever they come.
    file.writes.clear()
    writer.write(b"x" * 100)
    assert len(file.writes) == 1


def test_without_a_compositor_the_writer_writes_at_once() -> None:
    clock = ManualClock(0)
    file = _Recorder(clock, ns_per_byte=0.4)
    writer = YieldingWriter(file, lambda: None, clock=clock)
    writer.write(memoryview(bytearray(5 * YieldingWriter.PIECE + 3)))
    assert writer.waited_ns == 0 and len(file.writes) == 6
    assert sum(size for _, size in file.writes) == 5 * YieldingWriter.PIECE + 3

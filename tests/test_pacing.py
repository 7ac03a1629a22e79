"""Frame pacing with an injected clock: no sleeps, no dependence on this machine's speed."""

from __future__ import annotations

from conftest import write
from engine import FrameInfo
from engine.scheduler.pacing import FRAME_NS, FixedRatePacer, ManualClock


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

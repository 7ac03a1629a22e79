"""The supervisor's decisions, with time passed in: when a game counts as hung or silent,
and when restarting turns into backing off."""

from __future__ import annotations

from engine.contracts.handoff import Heartbeat
from engine.launcher.supervisor import GameWatch

MS = 1_000_000
S = 1000 * MS


def beat(frame: int, published: int | None = None) -> Heartbeat:
    return Heartbeat(1, frame, 0, frame if published is None else published, 0, 0, 0, 0)


def watch() -> GameWatch:
    return GameWatch(
        0, start_timeout_ns=10 * S, heartbeat_timeout_ns=500 * MS, publish_timeout_ns=1 * S
    )


def test_a_beating_publishing_game_is_fine():
    w = watch()
    for i in range(1, 200):
        assert w.observe(beat(i), i * 11 * MS) is None
    assert w.first_frame_ns == 11 * MS


def test_no_heartbeat_for_the_timeout_is_a_hang():
    w = watch()
    assert w.observe(beat(1), 1 * S) is None
    assert w.observe(beat(1), 1 * S + 500 * MS) is None  # exactly at the limit: still alive
    cause = w.observe(beat(1), 1 * S + 501 * MS)
    assert cause is not None and cause.startswith("hung: no heartbeat")


def test_a_missing_block_counts_as_silence_too():
    w = watch()
    w.observe(beat(1), 0)
    assert w.observe(None, 600 * MS) is not None


def test_a_slow_start_is_allowed_until_the_start_timeout():
    w = watch()
    assert w.observe(None, 9 * S) is None
    assert "no first frame" in w.observe(None, 10 * S + 1)


def test_beating_without_publishing_is_a_fault_of_its_own():
    w = watch()
    w.observe(beat(1, published=1), 0)
    t = 0
    for frame in range(2, 100):
        t = frame * 11 * MS
        if w.observe(beat(frame, published=1), t):
            break
    assert t > 1 * S
    assert w.observe(beat(frame + 1, published=1), t).startswith("not publishing")

"""The failure policy: one table decides what every fault costs."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import engine.policy
from engine.policy import Action, FailurePolicy, Fault, FaultKind, S, Settings, rules_table


def test_every_fault_kind_has_a_rule_that_always_applies():
    policy = FailurePolicy()
    for kind in FaultKind:
        bare = Fault(kind, "detail")
        assert policy.rule_for(bare).kind is kind


@pytest.mark.parametrize(
    ("fault", "action"),
    [
        (Fault(FaultKind.LOAD_ERROR, "SyntaxError"), Action.KEEP_OLD),
        (Fault(FaultKind.EXCEPTION, "E", on_probation=True), Action.ROLL_BACK),
        (Fault(FaultKind.EXCEPTION, "E", strikes=1), Action.STRIKE),
        (Fault(FaultKind.EXCEPTION, "E", strikes=3), Action.DISABLE),
        (Fault(FaultKind.HARD_LIMIT, "ran 20 ms"), Action.DISABLE),
        (Fault(FaultKind.HARD_LIMIT, "ran 20 ms", on_probation=True), Action.ROLL_BACK),
        (Fault(FaultKind.BUDGET, "late"), Action.DISABLE_AND_RETRY),
        (Fault(FaultKind.PROCESS_DIED, "SIGSEGV", module="bob", version=2), Action.RESTART_WITHOUT),
        (Fault(FaultKind.PROCESS_DIED, "SIGSEGV", phase="render"), Action.RESTART),
    ],
)
def test_the_table_decides(fault, action):
    assert FailurePolicy().decide(fault, 0).action is action


def test_a_system_disabled_for_time_is_retried_after_a_cool_down_that_doubles():
    policy = FailurePolicy(Settings(retry_ns=5 * S, max_retry_ns=15 * S))
    late = Fault(FaultKind.BUDGET, "late", module="bob", version=1, system="bob.move")
    at = [policy.decide(late, t * S).retry_at_ns for t in (0, 100, 200, 300)]
    assert at == [5 * S, 110 * S, 215 * S, 315 * S]  # 5, 10, then capped at 15 s
    policy.forget("bob.move")  # a new version: short again
    assert policy.decide(late, 400 * S).retry_at_ns == 405 * S


def test_the_same_game_fault_three_times_in_ten_seconds_is_a_crash_loop_with_back_off():
    policy = FailurePolicy()
    died = Fault(FaultKind.PROCESS_DIED, "exit 1", phase="start")
    decisions = [policy.decide(died, t * S) for t in (0, 1, 2, 3, 30)]
    assert [d.action for d in decisions] == [Action.RESTART] * 2 + [Action.BACK_OFF] * 2 + [
        Action.RESTART
    ]
    assert decisions[2].retry_at_ns == 4 * S and decisions[3].retry_at_ns == 7 * S
    assert "crash loop" in decisions[2].message


def test_a_crash_loop_waits_longer_each_time_until_the_game_runs_a_whole_window():
    """Each restart dies a second after its wait: 2, 4, 8, 16 s, then capped at 30 s; a
    game that then runs past the window is out of the loop."""
    policy = FailurePolicy()
    died = Fault(FaultKind.PROCESS_DIED, "exit 1", phase="start")
    now, waits = 0, []
    for _ in range(8):
        decision = policy.decide(died, now)
        wait = (decision.retry_at_ns - now) if decision.retry_at_ns else 0
        waits.append(wait // S)
        now += wait + 1 * S  # restarted after the wait, died a second later
    assert waits == [0, 0, 2, 4, 8, 16, 30, 30]
    quiet = now + 12 * S  # ran 12 s (past the 10 s window) before dying again
    assert policy.decide(died, quiet).action is Action.RESTART


def test_messages_name_the_place_the_culprit_and_what_was_done():
    fault = Fault(
        FaultKind.HARD_LIMIT,
        "ran 11.20 ms, over the hard limit of 11.11 ms",
        module="spin",
        version=2,
        system="spin.spin",
        location="systems/spin.py:4",
    )
    message = FailurePolicy().decide(fault, 0).message
    assert message.startswith("systems/spin.py:4: spin.spin v2 ran away: ran 11.20 ms")
    assert "disabled" in message and "\n" not in message


def test_the_docs_show_the_policy_table_as_it_is():
    page = Path(__file__).parent.parent / "docs" / "failure-policy.md"
    assert rules_table() in page.read_text()


def test_the_policy_module_examples_run():
    result = doctest.testmod(engine.policy)
    assert result.attempted > 0 and result.failed == 0


def test_every_action_has_words_for_messages():
    assert set(engine.policy.ACTION_TEXT) == set(Action)
    assert all(re.match(r"^[a-z]", text) for text in engine.policy.ACTION_TEXT.values())


def test_a_game_that_dies_or_hangs_in_setup_waits_for_an_edit_not_a_crash_loop():
    policy = FailurePolicy()
    for kind in (FaultKind.PROCESS_DIED, FaultKind.HUNG):
        fault = Fault(kind, "exit 3", phase="setup", location="game.py:7")
        decisions = [policy.decide(fault, t * S) for t in range(5)]
        assert {d.action for d in decisions} == {Action.WAIT_FOR_EDIT}
        assert all(d.retry_at_ns is None for d in decisions)
        assert decisions[0].message.startswith("game.py:7: setup ")
        assert decisions[0].message.endswith("the game starts again when game.py is saved")

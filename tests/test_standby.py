"""The warm standby game process: a restart takes it instead of starting a game cold.

Real processes throughout (supervisor, compositor, games). The project is the fault
suite's small one (tests/test_supervisor_faults.py): ``count`` adds one to a counter every
frame and logs ``pid value``, so the log tells the game processes apart and shows that the
standby went on from the checkpoint. Nothing here asserts how long anything took (the
restart time is measured by ``bench/restart.py``).
"""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

from engine.contracts.handoff import Phase
from engine.loader.history import VersionStatus
from test_supervisor_faults import (
    FAULT_V2,
    TIMEOUT_S,
    checkpointed_counter,
    counter_log,
    fault_history,
    make_project,
    make_supervisor,
)


def standby_ready(sup) -> bool:  # noqa: ANN001
    standby = sup.standby
    return standby is not None and standby.ready_ns is not None


def warmed_up(sup, project: Path) -> bool:  # noqa: ANN001
    v1 = fault_history(project).versions
    return (
        standby_ready(sup)
        and sup.checkpoint_path.exists()
        and len(counter_log(project)) > 30
        and bool(v1)
        and v1[0].status is VersionStatus.GOOD
    )


def rows_of(project: Path, pid: int) -> list[int]:
    return [value for p, value in counter_log(project) if p == pid]


def test_a_killed_game_is_replaced_by_the_warm_standby_which_goes_on_from_the_checkpoint(
    tmp_path,
):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, standby_delay_s=0.2) as sup:
        sup.start()
        assert sup.run_until(lambda: warmed_up(sup, project), TIMEOUT_S), messages
        first, standby = sup.game_pid, sup.standby.process.pid
        # The standby waits: it runs nothing of the project and says so.
        assert sup.standby.heartbeat.running_main_id() == Phase.STANDBY
        assert rows_of(project, standby) == []
        os.kill(first, signal.SIGKILL)
        assert sup.run_until(lambda: bool(sup.restarts), TIMEOUT_S), messages
        checkpointed = checkpointed_counter(sup.checkpoint_path)
        assert sup.game_pid == standby
        assert sup.run_until(lambda: len(rows_of(project, standby)) > 20, TIMEOUT_S), messages
        # And a new standby is made for the next failure.
        assert sup.run_until(
            lambda: standby_ready(sup) and sup.standby.process.pid != standby, TIMEOUT_S
        ), messages
        stats = sup.stop()
    restart = stats["restarts"][0]
    assert restart["from_standby"] and restart["new_pid"] == standby
    assert restart["first_frame_ms"] is not None
    assert stats["standby"]["promoted"] == 1 and stats["standby"]["spawned"] >= 2
    values = rows_of(project, standby)
    # Restored, not set up again: the counter goes on from the checkpoint.
    assert checkpointed > 0 and values[0] > checkpointed - 5, (checkpointed, values[:3])
    assert any("the warm standby" in m for m in messages), messages


def test_the_standby_runs_without_the_version_that_killed_the_game_before_it(tmp_path):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, standby_delay_s=0.2) as sup:
        sup.start()
        assert sup.run_until(lambda: warmed_up(sup, project), TIMEOUT_S), messages
        standby = sup.standby.process.pid
        # Saved while the standby waits: the live game loads it and dies of it.
        body = textwrap.indent("os._exit(3)", "    ")
        (project / "systems" / "fault.py").write_text(FAULT_V2.format(body=body))
        assert sup.run_until(lambda: bool(sup.restarts), TIMEOUT_S), messages
        assert sup.game_pid == standby
        assert sup.run_until(lambda: len(rows_of(project, standby)) > 30, TIMEOUT_S), messages
        stats = sup.stop()
    assert len(stats["restarts"]) == 1, stats["restarts"]  # it did not load v2 again
    assert stats["restarts"][0]["from_standby"]
    assert stats["restarts"][0]["blamed"] == "fault v2"
    assert fault_history(project).get(2).status is VersionStatus.BAD


def test_a_standby_that_dies_is_replaced_and_the_live_game_never_notices(tmp_path):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, standby_delay_s=0.2) as sup:
        sup.start()
        assert sup.run_until(lambda: warmed_up(sup, project), TIMEOUT_S), messages
        live, standby = sup.game_pid, sup.standby.process.pid
        os.kill(standby, signal.SIGKILL)
        assert sup.run_until(
            lambda: standby_ready(sup) and sup.standby.process.pid != standby, TIMEOUT_S
        ), messages
        assert sup.game_pid == live
        stats = sup.stop()
    assert stats["restarts"] == []
    assert stats["standby"]["failures"] == 1 and stats["standby"]["given_up"] is None


def test_without_a_standby_restarts_start_cold(tmp_path):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, standby=False) as sup:
        sup.start()
        assert sup.run_until(lambda: len(counter_log(project)) > 30, TIMEOUT_S), messages
        first = sup.game_pid
        os.kill(first, signal.SIGKILL)
        assert sup.run_until(
            lambda: bool(sup.restarts) and sup.restarts[0].first_frame_ms is not None, TIMEOUT_S
        ), messages
        assert sup.standby is None
        stats = sup.stop()
    assert not stats["restarts"][0]["from_standby"]
    assert stats["standby"]["spawned"] == 0

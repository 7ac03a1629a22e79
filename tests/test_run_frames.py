"""``engine run --frames N``: N display frames; the game's frame count goes on across a
restart (a real ``engine run``, a game that crashes once)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import COUNTER_GAME as GAME
from conftest import LOGGED_COUNTER as COUNT
from test_cli import engine_cmd

# Crashes the first game process once it has run 40 frames; never again (a marker file).
CRASH_ONCE = """
import os
from pathlib import Path
import engine

@engine.system(order=1)
def crash_once(world, dt):
    global frames
    frames = globals().get("frames", 0) + 1
    marker = Path({marker!r})
    if frames == 40 and not marker.exists():
        marker.touch()
        os._exit(3)
"""


def test_game_frames_are_counted_across_a_restart(tmp_path: Path) -> None:
    project = tmp_path / "game"
    (project / "systems").mkdir(parents=True)
    log = tmp_path / "counter.log"
    (project / "systems" / "count.py").write_text(COUNT.format(log=str(log)))
    (project / "systems" / "crash_once.py").write_text(
        CRASH_ONCE.format(marker=str(tmp_path / "crashed"))
    )
    (project / "game.py").write_text(GAME)
    stats_path = tmp_path / "stats.json"
    r = engine_cmd(
        "run",
        str(project),
        "--frames",
        "360",
        "--quiet",
        "--no-render",
        "--size",
        "64x64",
        "--stats-json",
        str(stats_path),
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    stats = json.loads(stats_path.read_text())
    assert len(stats["restarts"]) == 1, stats["restarts"]

    per_process: dict[str, int] = {}
    for line in log.read_text().splitlines():
        pid = line.split()[0]
        per_process[pid] = per_process.get(pid, 0) + 1
    assert len(per_process) == 2, per_process
    first, last = per_process.values()
    # The first process logged its 40th frame, then died in it: 39 frames finished.
    assert first == 40
    assert stats["game"]["last_process_frames"] == last
    assert stats["frames"] == first - 1 + last
    assert f"the game ran {stats['frames']} frames in 2 game processes" in r.stdout
    assert f"compositor presented {stats['compositor']['frames']} frames" in r.stdout


def test_help_says_what_frames_counts() -> None:
    r = engine_cmd("run", "--help")
    text = " ".join(r.stdout.split())
    assert "compositor has presented N display frames" in text
    assert "N game frames" in text

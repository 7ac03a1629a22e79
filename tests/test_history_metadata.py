"""The version history's metadata: where a version was vetted, and how many bytes a version
costs on disk (issue 12, "versions record where they were vetted"; issue 9, hole 7).

Real files in a real project folder; the ``engine history`` command run as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.loader.history import (
    COMPACT_MIN_LINES,
    ProjectHistory,
    VersionHistory,
    VersionStatus,
    Vetting,
    VettingResult,
)

ENV = {**os.environ, "PYGLET_HEADLESS": "1", "PYTHONUNBUFFERED": "1"}


def metadata_bytes(h: VersionHistory) -> tuple[int, int]:
    """Bytes of the snapshot and of the log (the sources are not metadata)."""
    return tuple(p.stat().st_size if p.exists() else 0 for p in (h.index_path, h.log_path))


def live_one_version(h: VersionHistory, i: int) -> None:
    """What an edit that goes well costs the history: recorded, on probation, active, good."""
    v = h.record(f"x = {i}\n")
    h.mark(v.number, VersionStatus.PROBATION, went_live="edit")
    h.activate(v.number)
    h.mark(v.number, VersionStatus.GOOD)


# -- vetting --------------------------------------------------------------------------------------
def test_where_a_version_was_vetted_is_kept_across_reopening_and_compaction(tmp_path) -> None:
    h = VersionHistory(tmp_path, "systems", "spin")
    for i in range(3):
        h.record(f"x = {i}\n")
    good = h.mark_vetted(2, frames=90, worst_ms=3.14159, result="promoted")
    bad = h.mark_vetted(
        3,
        frames=12,
        worst_ms=41.0,
        result=VettingResult.REJECTED,
        reason="systems/spin.py:4: ZeroDivisionError: division by zero",
    )
    assert good == Vetting("preview", 90, 3.142, VettingResult.PROMOTED)  # to the microsecond
    from_log = VersionHistory(tmp_path, "systems", "spin")
    assert [v.vetted for v in from_log.versions] == [None, good, bad]
    assert from_log.get(3).status is VersionStatus.PENDING  # vetting leaves the status alone
    from_log.save()  # the snapshot now holds it
    assert not from_log.log_path.read_text()
    again = VersionHistory(tmp_path, "systems", "spin")
    assert again.get(2).vetted == good
    assert again.get(3).vetted == bad
    assert again.get(3).vetted.describe() == (
        "vetted in preview: rejected after 12 frames (worst 41.0 ms): "
        "systems/spin.py:4: ZeroDivisionError: division by zero"
    )


def test_vetting_an_unknown_version_or_with_an_unknown_result_is_refused(tmp_path) -> None:
    h = VersionHistory(tmp_path, "systems", "spin")
    h.record("x = 1\n")
    with pytest.raises(KeyError):
        h.mark_vetted(2, frames=1, worst_ms=1.0, result="promoted")
    with pytest.raises(ValueError):
        h.mark_vetted(1, frames=1, worst_ms=1.0, result="fine")
    assert h.get(1).vetted is None
    assert VersionHistory(tmp_path, "systems", "spin").get(1).vetted is None  # nothing written


def test_engine_history_shows_where_each_version_was_vetted(tmp_path) -> None:
    unit = ProjectHistory(tmp_path).unit("systems", "spin")
    for i in range(3):
        unit.record(f"x = {i}\n")
    unit.mark_vetted(2, frames=90, worst_ms=3.1, result="promoted")
    unit.mark_vetted(3, frames=7, worst_ms=2.0, result="rejected", reason="systems/spin.py:9: boom")
    r = subprocess.run(
        [sys.executable, "-m", "engine.launcher.cli", "history", str(tmp_path), "spin"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr
    v1, v2, v3 = r.stdout.splitlines()
    assert "vetted" not in v1
    assert v2.endswith("(vetted in preview: promoted after 90 frames (worst 3.1 ms))")
    assert v3.endswith("rejected after 7 frames (worst 2.0 ms): systems/spin.py:9: boom)")


# -- size on disk ---------------------------------------------------------------------------------
def test_a_version_costs_a_bounded_few_bytes_of_metadata(tmp_path) -> None:
    """Measured with this test's 600 versions: 225 bytes a version in the snapshot (indented,
    every field written) and 195 bytes per status change in the log (a whole record) before;
    149 and 42 now."""
    h = VersionHistory(tmp_path, "systems", "spin")
    per_version = []
    for i in range(1, 601):
        live_one_version(h, i)
        if i % 100 == 0:
            h.save()  # compare snapshots, not where a log happens to be
            per_version.append(metadata_bytes(h)[0] / i)
    assert max(per_version) < 160, per_version
    assert max(per_version) - min(per_version) < 4  # a constant per version, not growing
    # The log between two compactions: a status change is a short line, not a whole record.
    before = metadata_bytes(h)[1]
    h.mark(600, VersionStatus.BAD, "systems/spin.py:1: boom")
    h.mark(600, VersionStatus.GOOD)
    assert metadata_bytes(h)[1] - before < 2 * 80
    # And the log never grows past its compaction limit, however many changes there are.
    for _ in range(3 * COMPACT_MIN_LINES):
        h.activate(600)
    assert len(h.log_path.read_text().splitlines()) < max(COMPACT_MIN_LINES, 600)


# Exactly what the engine wrote before this change: an indented snapshot with every field of
# every record, and a log whose every line held a whole record.
OLD_INDEX = """{
 "kind": "systems",
 "name": "spin",
 "active": 2,
 "disk": 3,
 "versions": [
  {
   "number": 1,
   "time": 1796066413.725908,
   "sha256": "9e26bf369911c45c243c684147b23fc9e1dcfcf257d299a1c632016a6fcd33f4",
   "status": "good",
   "why": "",
   "file_name": "v0001.py",
   "went_live": "load"
  },
  {
   "number": 2,
   "time": 1796066414.5,
   "sha256": "4205c4809ab1b080fd32b6bf9640e5feaa6d1b69bf9fa684954ab710157ec141",
   "status": "probation",
   "why": "",
   "file_name": "v0002.py",
   "went_live": "edit"
  }
 ]
}"""
OLD_LOG = (
    '{"version":{"number":3,"time":1796066415.25,"sha256":"6dba43e0","status":"pending",'
    '"why":"","file_name":"v0003.py","went_live":""},"disk":3}\n'
    '{"version":{"number":2,"time":1796066414.5,"sha256":"4205c4809ab1b080fd32b6bf9640e5feaa6d1'
    'b69bf9fa684954ab710157ec141","status":"bad","why":"systems/spin.py:2: boom","file_name":'
    '"v0002.py","went_live":"edit"}}\n'
)


def test_a_history_written_before_is_read_whole_and_rewritten_smaller(tmp_path) -> None:
    unit = tmp_path / ".engine" / "history" / "systems" / "spin"
    unit.mkdir(parents=True)
    (unit / "index.json").write_text(OLD_INDEX)
    (unit / "log.jsonl").write_text(OLD_LOG)
    for n in (1, 2, 3):
        (unit / f"v{n:04d}.py").write_text(f"x = {n}\n")
    old = VersionHistory(tmp_path, "systems", "spin")
    assert [(v.number, v.status, v.went_live, v.why, v.vetted) for v in old.versions] == [
        (1, VersionStatus.GOOD, "load", "", None),
        (2, VersionStatus.BAD, "edit", "systems/spin.py:2: boom", None),
        (3, VersionStatus.PENDING, "", "", None),
    ]
    assert (old.active_number, old.disk_number, old.source(3)) == (2, 3, "x = 3\n")
    old.mark_vetted(1, frames=90, worst_ms=1.0, result="promoted")
    old.save()
    # Three records and a vetting, in less than the old form took for three records.
    assert old.index_path.stat().st_size < len(OLD_INDEX) * 3 / 2
    again = VersionHistory(tmp_path, "systems", "spin")
    assert [v.to_json() for v in again.versions] == [v.to_json() for v in old.versions]
    assert again.get(1).time == 1796066413.726  # kept to the millisecond
    assert json.loads(again.index_path.read_text())["active"] == 2

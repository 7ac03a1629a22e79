"""What a user sees of the scheduler's numbers: the live table and the frame-time PNG."""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from engine.launcher.console import LiveConsole, SystemsTable, plain_line, priority_words
from engine.scheduler.plot import band_colors, plot_frame_times
from engine.scheduler.stats import FrameRecorder, FrameStats, SystemStats

MS = 1_000_000


def snapshot(frames: int = 5400) -> dict:
    physics = SystemStats("physics", budget_ns=2 * MS)
    for _ in range(90):
        physics.record(1 * MS)
    frame = FrameStats()
    for _ in range(frames):
        frame.record(6 * MS)
    return {
        "systems": [
            {**physics.snapshot(), "state": "enabled", "version": 3, "strikes": 0},
            {
                "name": "spinner",
                "state": "disabled",
                "version": 7,
                "mean_ms": 30.0,
                "p99_ms": 45.5,
                "share": 15.0,
                "strikes": 3,
                "reason": "over budget 3 frames in a row",
            },
            {"name": "esper cache rebuild", "state": "probation", "mean_ms": 0.1},
        ],
        "frame": frame.snapshot(),
        "swaps": [
            {"module": "old", "version": 1, "ok": True, "latency_ms": 9.0},
            {"module": "physics", "version": 3, "ok": True, "latency_ms": 12.5},
            {"module": "spinner", "version": 7, "ok": False, "latency_ms": 3.25,
             "error": "ZeroDivisionError"},
            {"module": "physics", "version": 4, "ok": True, "latency_ms": 8.0},
        ],
    }  # fmt: skip


def rendered(table, width: int = 100) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(table)
    return console.export_text()


def table_rows(text: str) -> dict[str, str]:
    """Rendered rows by system name (the second column), continuation lines joined."""
    rows: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        cells = line.split()
        if len(cells) >= 3 and cells[0] in "●◐○✖·":
            name = cells[2]
            rows[name] = line
        elif name is not None and line.startswith(" " * 20) and line.strip():
            rows[name] = " ".join(f"{rows[name]} {line}".split())
    return rows


def test_table_at_100_columns_has_a_lamp_version_times_budget_and_why_per_system():
    snap = snapshot()
    snap["systems"][0]["budget_ms"] = 2.0
    snap["systems"][1]["reason"] = {"limit": "budget", "detail": "over 3 frames", "retry_in_s": 12}
    text = rendered(SystemsTable().render(snap), width=100)
    assert max(len(line) for line in text.splitlines()) <= 100
    rows = table_rows(text)

    physics = rows["physics"]
    assert physics.split()[:4] == ["●", "running", "physics", "3"]
    assert "1.00" in physics and "2.00" in physics  # mean, budget
    spinner = rows["spinner"]
    assert spinner.split()[:2] == ["○", "disabled"]
    assert "45.50" in spinner and "budget: over 3 frames (retried in 12 s)" in spinner
    assert rows["esper"].split()[:2] == ["◐", "probation"]
    assert "—" not in text  # nothing missing is drawn as a dash


def test_a_system_that_raised_is_an_error_with_no_time_and_says_why():
    snap = {
        "systems": {
            "boom.run": {"state": "disabled", "version": 2, "mean_ms": None, "p99_ms": None,
                         "reason": {"limit": "exception", "detail": "ZeroDivisionError (x.py:3)"}},
        },
        "swaps": [{"module": "boom", "version": 3, "ok": False, "latency_ms": None,
                   "error": "SyntaxError (boom.py:1)"}],
    }  # fmt: skip
    text = rendered(SystemsTable(max_swaps=1).render(snap))
    row = table_rows(text)["boom.run"]
    assert row.split()[:4] == ["✖", "error", "boom.run", "2"]
    assert "exception: ZeroDivisionError (x.py:3)" in row
    assert "ms" not in row.split("boom.run")[1].split("exception")[0]
    assert "swap boom v3 failed: SyntaxError (boom.py:1)" in text
    assert "— ms" not in text


def test_priority_is_words_not_a_dict():
    words = priority_words({"cpu": "SCHED_FIFO 10", "gpu": "not offered", "gpu_reset": "x"})
    assert words == "CPU SCHED_FIFO 10; GPU not offered; on a GPU reset x"
    assert "{" not in words


def test_footer_has_frame_totals_and_latest_swaps():
    text = rendered(SystemsTable(max_swaps=3).render(snapshot()))
    assert "frames 5400" in text
    assert "frame p50 6.00 ms" in text and "p99 6.00 ms" in text
    assert "over budget 0" in text
    assert "physics v3 ok in 12.50 ms" in text
    assert "spinner v7 failed: ZeroDivisionError" in text
    assert "physics v4 ok in 8.00 ms" in text
    assert "old v1" not in text  # only the latest three


def test_names_and_reasons_are_not_parsed_as_markup():
    snap = {"systems": [{"name": "[bold]x[/bold]", "state": "disabled", "reason": "[red]KeyError"}]}
    text = rendered(SystemsTable().render(snap))
    assert "[bold]x[/bold]" in text and "[red]KeyError" in text


def test_scheduler_shaped_snapshot_with_systems_by_name_and_flat_frame_totals():
    physics = SystemStats("physics.step", budget_ns=2 * MS)
    physics.record(MS)
    cache = SystemStats("esper cache", budget_ns=11_111_111)
    cache.record(MS // 4)
    frame = FrameStats()
    frame.record(7 * MS)
    snap = {
        "systems": {
            "physics.step": {**physics.snapshot(), "state": "enabled", "version": 2,
                             "strikes": 1, "reason": None, "last_error": "KeyError: 'x'"},
            "spin.run": {"state": "disabled", "version": 5, "strikes": 0,
                         "reason": {"limit": "budget", "detail": "over 3 frames", "frame": 9}},
        },
        "esper_cache": cache.snapshot(),
        **frame.snapshot(),
    }  # fmt: skip

    text = rendered(SystemsTable().render(snap))
    rows = table_rows(text)

    assert "KeyError: 'x'" in rows["physics.step"]
    assert "budget: over 3 frames" in rows["spin.run"]
    assert "engine" in rows["esper"] and "0.25" in rows["esper"]
    assert "frames 1 | frame p50 7.00 ms" in text
    assert "spin.run disabled (budget: over 3 frames)" in plain_line(snap)


def test_empty_snapshot_renders_a_table_with_zero_frames():
    text = rendered(SystemsTable().render({}))
    assert "system" in text and "frames 0" in text


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def terminal_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=160), out


def test_updates_are_throttled_to_four_per_second():
    clock = FakeClock()
    console, out = terminal_console()
    drawn = []
    with LiveConsole(console=console, clock=clock, max_hz=4.0) as live:
        assert not live.plain
        for step in range(20):  # 2 s of updates at 10 Hz
            clock.now = 100.0 + step * 0.1
            drawn.append(live.update(snapshot(frames=step + 1)))
        draws_in_loop = live.draws

    assert drawn[:6] == [True, False, False, True, False, False]
    assert draws_in_loop == 7  # t = 0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8
    assert live.draws == 8  # the newest skipped snapshot is drawn on exit
    assert "frames 20" in out.getvalue()
    assert "spinner" in out.getvalue()


def test_not_a_terminal_prints_a_line_per_event_and_totals_every_few_seconds():
    clock = FakeClock()
    out = io.StringIO()
    console = Console(file=out, width=80)  # a StringIO is not a terminal
    with LiveConsole(console=console, clock=clock, plain_every_s=5.0) as live:
        assert live.plain
        for step in range(12):  # 12 s, one update a second
            clock.now = 100.0 + step
            snap = snapshot(frames=step + 1)
            if step >= 7:  # physics v4 swapped in, on probation
                snap["systems"][0].update(version=4, state="probation")
            live.update(snap)

    lines = out.getvalue().splitlines()
    assert lines == [
        "physics v3: running",
        "spinner v7: disabled (over budget 3 frames in a row)",
        "esper cache rebuild: probation",
        "frames 1 | frame p50 6.00 ms | p99 6.00 ms | over budget 0",
        "frames 6 | frame p50 6.00 ms | p99 6.00 ms | over budget 0",
        "physics v4: probation",
        "frames 11 | frame p50 6.00 ms | p99 6.00 ms | over budget 0",
        "frames 12 | frame p50 6.00 ms | p99 6.00 ms | over budget 0",  # on exit
    ]
    assert "\x1b[" not in out.getvalue()


def test_disabled_or_unentered_console_draws_nothing():
    out = io.StringIO()
    console = Console(file=out, width=80)
    idle = LiveConsole(console=console, clock=FakeClock())
    assert idle.update(snapshot()) is False  # outside `with`
    with LiveConsole(console=console, enabled=False) as off:
        assert off.update(snapshot()) is False
    assert out.getvalue() == "" and idle.draws == 0 and off.draws == 0


def recorder_with_three_bands() -> FrameRecorder:
    recorder = FrameRecorder(max_frames=1000)
    for frame in range(300):
        times = {"physics": 2 * MS, "render": 3 * MS, "audio": 4 * MS}
        if 100 <= frame < 150:
            del times["physics"]  # disabled for a while
        recorder.record(times)
    return recorder


def read_png(path: Path) -> np.ndarray:
    from matplotlib import image

    return image.imread(path)


def test_plot_writes_a_png_with_a_band_per_system(tmp_path):
    path = plot_frame_times(recorder_with_three_bands(), tmp_path / "out" / "frames.png")

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert (width, height) == (1000, 500)
    pixels = read_png(path)[:, :, :3]

    # Pixels per column painted in each band's colour: shape (3 bands, width).
    painted = np.stack(
        [
            np.all(np.abs(pixels - np.array(c[:3])) < 0.02, axis=2).sum(axis=0)
            for c in band_colors(3)
        ]
    )
    assert np.all(painted[:, width * 3 // 4] > 20)  # frame ~225: all three bands stacked
    physics_off = (painted[0] == 0) & (painted[1] > 20) & (painted[2] > 20)
    assert physics_off.sum() > 50  # frames 100-149: render and audio still drawn
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # not blank


def test_plot_of_nothing_recorded_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        plot_frame_times(FrameRecorder(10), tmp_path / "x.png")


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import` raise
    with pytest.raises(RuntimeError, match=r"pip install all-source-engine\[bench\]"):
        plot_frame_times(recorder_with_three_bands(), tmp_path / "x.png")

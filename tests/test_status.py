"""The status block: the live game's systems table reaches the mirror's HUD, across the
process boundary, and nothing a game writes there can hurt the compositor's reading."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contracts.shm import create_block_fd, read_only_fd
from engine.contracts.status import (
    HEADER_BYTES,
    MAX_LINES,
    TEXT_BYTES,
    StatusReader,
    StatusWriter,
    systems_lines,
)
from test_supervisor_faults import TIMEOUT_S, counter_log, make_project, make_supervisor


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=40))
def test_whatever_lines_are_published_a_reader_gets_a_bounded_prefix(lines):
    fd = create_block_fd("status")
    writer, reader = StatusWriter(fd), StatusReader(read_only_fd(fd))
    writer.publish(lines)
    got = reader.read()
    assert got is not None and len(got) <= MAX_LINES
    assert len("\n".join(got).encode()) <= TEXT_BYTES
    text = "\n".join(lines[:MAX_LINES])
    if len(text.encode()) <= TEXT_BYTES:
        assert list(got) == (text.split("\n")[:MAX_LINES] if text else [])


def test_a_lying_length_or_bad_bytes_never_break_the_reader():
    import mmap

    fd = create_block_fd("status")
    StatusWriter(fd).publish(["ok"])
    mm = mmap.mmap(fd, HEADER_BYTES + TEXT_BYTES)
    mm[8:12] = (1 << 31).to_bytes(4, "little")  # a length far past the block
    mm[HEADER_BYTES : HEADER_BYTES + 4] = b"\xff\xfe\n\x00"
    mm[0:8] = (10).to_bytes(8, "little")  # an even counter: a settled record
    lines = StatusReader(fd).read()
    assert lines is not None and len(lines) <= MAX_LINES
    mm.close()


def test_the_table_lists_the_slowest_systems_first_and_says_which_are_off():
    snapshot = {
        "systems": {
            "a.fast": {"mean_ms": 0.1, "p99_ms": 0.2, "budget_ms": 1.0, "state": "enabled"},
            "b.slow": {"mean_ms": 3.0, "p99_ms": 4.0, "budget_ms": 2.0, "state": "disabled"},
        }
    }
    lines = systems_lines(snapshot)
    assert lines[0].startswith("b.slow") and "[disabled]" in lines[0]
    assert lines[1].startswith("a.fast") and "[" not in lines[1]


def test_the_live_games_systems_reach_the_hud_block_across_processes(tmp_path):
    project = make_project(tmp_path / "game")
    messages: list[str] = []
    with make_supervisor(project, messages, standby=False) as sup:
        sup.start()
        assert sup.run_until(lambda: len(counter_log(project)) > 30, TIMEOUT_S), messages
        reader = StatusReader(read_only_fd(sup._status_fd))

        def shows_systems() -> bool:
            lines = reader.read() or ()
            return any(line.startswith("count.count") for line in lines)

        assert sup.run_until(shows_systems, TIMEOUT_S), (messages, reader.read())
        sup.stop()


def test_the_hud_shows_the_status_lines_under_its_own():
    from engine.compositor.mirror import MirrorText
    from test_compositor_loop import make_preview_loop

    fd = create_block_fd("status")
    StatusWriter(fd).publish(["count.count  0.10/0.20 ms of 5.5"])
    loop, clock, game, preview, _ = make_preview_loop()
    text = MirrorText(loop, status=StatusReader(read_only_fd(fd)))
    game.publish()
    loop.step()
    text.refresh()
    assert text.hud[2:] == ("count.count  0.10/0.20 ms of 5.5",)

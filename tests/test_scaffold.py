"""`engine new` makes a game whose first edit shows: a cube that moves, driven by a number
in systems/bob.py that changes the motion from the next frame on."""

from __future__ import annotations

import math
from pathlib import Path

from engine.launcher.cli import main
from engine.render.components import Transform


def cube_height(eng) -> float:
    ((_, t),) = eng.world.get_component(Transform)
    return t.position[1]


def test_the_scaffold_moves_and_an_edit_of_one_number_shows_next_frame(make_engine, tmp_path):
    project = tmp_path / "my_game"
    assert main(["new", str(project)]) == 0
    eng = make_engine(project)
    heights = []
    for _ in range(30):
        eng.step()
        heights.append(cube_height(eng))
    assert max(heights) - min(heights) > 0.1  # it visibly bobs

    bob = project / "systems" / "bob.py"
    bob.write_text(bob.read_text().replace("SPEED = 2.0", "SPEED = 0.0"))
    eng.loader.prepare({"bob": bob.read_text()})
    eng.step()  # the edit is live in this frame
    assert math.isclose(cube_height(eng), 1.5, abs_tol=1e-9)  # sin(0) * HEIGHT: at rest
    eng.step()
    assert math.isclose(cube_height(eng), 1.5, abs_tol=1e-9)


def test_the_scaffold_refuses_a_folder_that_is_not_empty(tmp_path: Path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    assert main(["new", str(tmp_path / "x")]) == 2
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"

"""The fast kinds of the fault suite (``bench/faults.py``), each in a real ``engine run``.

Every kind must be survived, keep the healthy counter ticking with its world, be contained
by its rule, name the fault's file and line, and leave no process behind. The compositor
column is timing, which the bench judges (against a bare pacing loop), not this test.

Kinds the engine fails today are xfail with the hole they show; the list lives in
``faults.KNOWN_HOLES``, so a fix flips them there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import faults  # noqa: E402

#: Kinds that need no long waits (no probation, no hang, no crash loop to sit out).
FAST = [kind for kind in faults.kinds() if kind.fast]


def fast_kinds() -> list:
    """One param per fast kind; a kind of ``KNOWN_HOLES`` is xfail with its hole."""
    params = []
    for kind in FAST:
        hole = faults.KNOWN_HOLES.get(kind.name)
        marks = [pytest.mark.xfail(strict=False, reason=hole)] if hole else []
        params.append(pytest.param(kind, id=kind.name, marks=marks))
    return params


@pytest.mark.parametrize("kind", fast_kinds())
def test_fault_is_survived_contained_named_and_leaves_nothing_running(kind) -> None:  # noqa: ANN001
    row = faults.run_kind(kind)
    judged = {name: cell for name, cell in row.cells().items() if name != "compositor"}
    failed = {name: cell.note for name, cell in judged.items() if cell.ok is False}
    assert not failed, failed

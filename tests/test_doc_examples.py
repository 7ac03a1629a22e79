"""The examples in docstrings run: a user who pastes one gets what it shows."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "engine.game",
    "engine.policy",
    "engine.world.world",
    "engine.contracts.seqlock",
    "engine.contracts.layer",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples left to run"
    assert result.failed == 0

"""docs/failure-policy.md shows the failure policy as it is: every rule of ``RULES`` and
no other, in order; every action; every setting with its default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from engine.policy import RULES, Action, S, Settings

PAGE = Path(__file__).parent.parent / "docs" / "failure-policy.md"


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of each row of the Markdown table that starts with ``header``."""
    lines = text.splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2 :]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def test_the_page_lists_every_rule_and_no_other_in_order():
    shown = [tuple(row) for row in table_rows(PAGE.read_text(), "| fault | when | action | why |")]
    rules = [(f"`{r.kind}`", r.when, f"**{r.action}**", r.why) for r in RULES]
    missing = [r for r in rules if r not in shown]
    unknown = [r for r in shown if r not in rules]
    assert not missing, f"rules missing from {PAGE.name}: {missing}"
    assert not unknown, f"{PAGE.name} lists rules that RULES does not have: {unknown}"
    assert shown == rules, "the page lists the rules in another order (first match wins)"


def test_the_page_describes_every_action_and_no_other():
    rows = table_rows(PAGE.read_text(), "| action | what the reporting box does |")
    shown = [re.fullmatch(r"\*\*(.+)\*\*", row[0]).group(1) for row in rows]
    assert sorted(shown) == sorted(a.value for a in Action)


def _shown(name: str, value: int) -> str:
    if not name.endswith("_ns"):
        return str(value)
    seconds = value / S
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def test_the_page_gives_every_setting_with_its_default():
    rows = table_rows(PAGE.read_text(), "| setting | default | meaning |")
    shown = {row[0].strip("`"): row[1] for row in rows}
    defaults = {f.name: _shown(f.name, f.default) for f in dataclasses.fields(Settings)}
    assert shown == defaults

"""docs/tutorial.md runs: every command of it, in order, as a user pastes them.

The page is read as a script (see :func:`steps`):

- a ``bash`` block runs in one shell in a fresh folder, with ``engine`` on the PATH; it
  must exit 0. The first one (the install) is not run: it must be the README's quick
  start install, which the fresh-machine check runs.
- ``bash title="terminal 1"`` starts in the background, as a second terminal would; the
  next blocks run once its game runs (its ``.engine/run.json`` is there).
  ``<!-- ctrl-c terminal 1 -->`` presses Ctrl-C in it (SIGINT) and expects exit status 0.
- a block with a ``title`` that is a path (``python title="my_game/systems/x.py"``)
  is a file the reader saves: the test writes it.
- a ``python`` block without a title quotes a file the tutorial made: it must appear in
  one of them, word for word.
- ``<!-- expect: TEXT -->`` must be in the output of the block before it;
  ``<!-- expect terminal 1: TEXT -->`` must appear in terminal 1's output (it is waited
  for, as a reader waits to see it).
- ``text`` blocks without a title are sample output, not checked.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
#: How long one command, or the wait for a line in terminal 1, may take on a busy machine.
STEP_TIMEOUT_S = 120.0

FENCE = re.compile(
    r'^```(?P<lang>\w+)(?:[ \t]+title="(?P<title>[^"]*)")?[ \t]*\n(?P<body>.*?)^```[ \t]*$',
    re.M | re.S,
)
COMMENT = re.compile(
    r"^<!--\s*(?P<what>expect|ctrl-c)(?P<where>[^:>]*?)(?::\s*(?P<text>.*?))?\s*-->", re.M
)


@dataclass
class Step:
    kind: str  # "block" | "expect" | "ctrl-c"
    lang: str = ""
    title: str | None = None
    body: str = ""
    terminal: str | None = None  # "terminal 1" for what happens there


def steps(markdown: str) -> list[Step]:
    """The page's code blocks and test comments, in the order they appear."""
    found: list[tuple[int, Step]] = []
    for m in FENCE.finditer(markdown):
        found.append((m.start(), Step("block", m["lang"], m["title"], m["body"])))
    for m in COMMENT.finditer(markdown):
        where = m["where"].strip() or None
        found.append((m.start(), Step(m["what"], body=(m["text"] or "").strip(), terminal=where)))
    return [s for _, s in sorted(found, key=lambda pair: pair[0])]


def engine_on_path(bin_dir: Path) -> str:
    """A PATH with ``engine`` on it: the installed command, else a shim of this Python's."""
    installed = Path(sys.executable).parent / "engine"
    if installed.exists():
        return f"{installed.parent}{os.pathsep}{os.environ['PATH']}"
    bin_dir.mkdir()
    shim = bin_dir / "engine"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m engine.launcher.cli "$@"\n')
    shim.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def _terminate_with_parent() -> None:
    """SIGTERM (a clean stop for `engine run`) when the test process dies, also when a
    timeout ends it without running any ``finally``: no game is left running."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Terminal:
    """A background shell, as in a second terminal window."""

    def __init__(self, script: str, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            ["bash", "-e", "-c", script],  # bash execs a one-command script itself
            cwd=cwd,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to its whole process group
            preexec_fn=_terminate_with_parent,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, cond, what: str) -> None:  # noqa: ANN001
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not cond():
            if self.process.poll() is not None:
                pytest.fail(
                    f"terminal 1 ended (exit {self.process.returncode}) before {what}:\n"
                    + self.output()
                )
            if time.monotonic() > deadline:
                pytest.fail(f"terminal 1 never showed {what}:\n{self.output()}")
            time.sleep(0.1)

    def ctrl_c(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=STEP_TIMEOUT_S)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._out.close()


@pytest.mark.timeout(900)  # a dozen engine runs, each starting two processes
def test_the_tutorial_commands_run_in_order(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("the tutorial's commands are bash")
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "PATH": engine_on_path(tmp_path / "bin"),
        "XDG_DATA_HOME": str(tmp_path / "data"),  # the demo's copy lands here, not in ~
        "PYGLET_HEADLESS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    readme = (ROOT / "README.md").read_text()
    terminal: Terminal | None = None
    last_output = ""
    ran_install = False
    try:
        for step in steps(TUTORIAL.read_text()):
            if step.kind == "ctrl-c":
                assert terminal is not None, "Ctrl-C with no terminal 1 running"
                rc = terminal.ctrl_c()
                assert rc == 0, f"terminal 1 exited {rc} on Ctrl-C:\n{terminal.output()}"
                last_output, terminal = terminal.output(), None
            elif step.kind == "expect" and step.terminal:
                assert terminal is not None, f"expects {step.body!r} of no terminal"
                shown = terminal.output
                terminal.wait_for(lambda t=step.body, shown=shown: t in shown(), repr(step.body))
            elif step.kind == "expect":
                assert step.body in last_output, f"expected {step.body!r} in:\n{last_output}"
            elif step.lang == "bash" and not ran_install:
                ran_install = True
                install = step.body.split("&& .")[0].strip()
                assert install in readme, "the tutorial installs as the README's quick start"
            elif step.lang == "bash" and step.title == "terminal 1":
                terminal = Terminal(step.body, work, env, tmp_path / "terminal1.log")
                terminal.wait_for(lambda: any(work.glob("*/.engine/run.json")), "a running game")
                time.sleep(1.0)  # the reader sees it run before editing
            elif step.lang == "bash":
                r = subprocess.run(
                    ["bash", "-e", "-c", step.body],
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=STEP_TIMEOUT_S,
                )
                last_output = r.stdout + r.stderr
                assert r.returncode == 0, f"{step.body!r} exited {r.returncode}:\n{last_output}"
            elif step.title:
                path = work / step.title
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(step.body)
            elif step.lang == "python":
                made = [p.read_text() for p in work.rglob("*.py") if ".engine" not in p.parts]
                assert any(step.body in text for text in made), (
                    f"this quoted code is in no file the tutorial made:\n{step.body}"
                )
    finally:
        if terminal is not None:
            terminal.stop()
    assert ran_install
    for picture in ("demo.png", "bob.png", "spin.png", "frames.png"):
        assert (work / picture).stat().st_size > 0

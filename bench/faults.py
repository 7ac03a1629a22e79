"""The fault suite: every way a user's code can break a game, each in a real ``engine run``.

    python bench/faults.py [--kinds a,b | --fast] [--json PATH] [--list] [--keep]
                           [--render] [--size WxH] [--bomb-gb GB]

Each *kind* runs in a fresh temporary project holding a healthy ``counter`` system (a
component incremented every frame, each value logged with its time and pid) beside the
faulty code, under the real process tree (``engine run``: supervisor, compositor, game).
The shader kinds run with the engine's render system, as ``engine run`` does by default;
the others with ``--no-render`` (the game publishes a CPU test pattern), so that what a
2-core machine's software GL costs does not blur what the fault did (``--render`` runs
every kind with the render system). Some faults are there from the start; others are
brought in by an edit while the game runs (after the healthy version passed probation), or
are signals sent to ``engine run`` itself. The run is then stopped the way a user stops it
(SIGTERM), and judged, one column each:

survived     ``engine run`` was still running when asked to stop, and exited 0 in time
             (a run that hangs is killed, supervisor first; it did not survive).
healthy      the counter kept ticking to the end, was never reset to an old value
             (allowing a restore from the checkpoint, 1 s), and the world's final
             checkpoint holds it.
contained    what the engine did, read from the stats JSON (systems table reasons, swaps,
             restarts and their causes) and the project history: the faulty version is no
             longer running at the end, by the kind's rule (see ``RULES``).
compositor   frames the compositor missed, against what a bare pacing loop misses on this
             machine (measured at the start and the end of this bench, scaled per frame).
message      one line of the engine's output names the fault's file and line
             (``fault.py:7``), where the fault has one.
leftovers    no process of the run (nor any child the user's code started) is alive 2 s
             after ``engine run`` exited. They are found by an environment marker every
             process of the run inherits, by their working folder, and by the parent chain
             seen while the run was going; they are killed after being recorded.

A kind is data (:class:`Kind`): its files at the start, its steps (edits, signals, engine
commands, at a moment relative to the game being ready, the healthy version passing
probation, or the previous step) and its containment rule. The faulty line of each file is
marked with a ``FAULT`` comment; the message column looks for that file and line.

Kinds the engine fails today are listed, with the hole of issue 9 they show, in
:data:`KNOWN_HOLES` (the one place; ``tests/test_faults.py`` runs the kinds marked
``fast`` and marks these xfail).

Other work on the machine shows in every column (a starved game is restarted, a starved
counter disabled): the load average is printed with the table. The memory bomb asks for
1 GiB a frame with ``np.zeros`` (mapped, never touched: only address space grows, so
without a memory limit in the engine it cannot take the machine down) and stops itself at
``--bomb-gb`` (default: twice this machine's memory). An engine that limits the game's
private memory (``RLIMIT_DATA`` counts mapped memory) turns it into the ``MemoryError``
the rule expects, in the system that made it.

Nothing is left running, also when the bench itself fails or is interrupted (Ctrl-C): each
run is killed and its processes are scanned for and killed before the next one starts.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

S = 1_000_000_000  # ns per second
RATE_HZ = 90
FRAME_MS = 1000 / RATE_HZ
MARK = "FAULT"  # the comment that marks a faulty line in a kind's files
RUN_MARKER = "ENGINE_FAULT_BENCH_RUN"  # every process of a run inherits it in its environment
ROOT = "@ROOT@"  # replaced in every file by the run's folder (logs and markers go there)

#: How far the counter may go back and still count as "not reset": a restore from the
#: newest checkpoint (taken every second) after a crash, plus a second of slack.
REWIND_ALLOWANCE = 2 * RATE_HZ
#: A counter ticking slower than this at the end has stalled (a third of the display rate:
#: a game paced by a loaded 2-core machine still makes it; one starved by a fault does not).
MIN_TICKS_PER_S = RATE_HZ // 3
READY_TIMEOUT_S = 40.0
PROBATION_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
LEFTOVER_AFTER_S = 2.0

# -- the project every kind runs in -----------------------------------------------------

GAME = '''\
"""A new world: the counter, and a cube for the render system to draw."""
from engine.render.components import Material, Mesh, Transform
from systems.counter import Counter


def setup(world):
    world.create_entity(Counter())
    world.create_entity(
        Transform(position=(0.0, 1.6, -2.0), scale=(1.5, 1.5, 1.5)), Mesh("cube"), Material()
    )
'''

COUNTER = '''\
"""The innocent bystander: +1 every frame, each value logged with its pid and time."""
import os
import time

import engine

LOG = "@ROOT@/counter.log"


@engine.component
class Counter:
    value: int = 0


@engine.system(order=0)
def count(world, dt):
    for _, c in world.get_component(Counter):
        c.value += 1
        # Opened per frame, so a fault that closes every fd cannot break the bystander.
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {c.value} {time.monotonic_ns()}\\n".encode())
        finally:
            os.close(fd)
'''

#: A new module saved after the fault: it must load and run (the watcher still works).
PROBE = """\
from pathlib import Path

import engine


@engine.system(order=2)
def probe(world, dt):
    Path("@ROOT@/probe.ran").touch()
"""

HEALTHY = """\
import engine


@engine.system(order=1)
def fault(world, dt):
    pass
"""


def module(body: str, head: str = "", imports: str = "") -> str:
    """A system module ``fault`` with one system, ``fault``, whose body is ``body``."""
    lines = ["import ctypes, os, signal, sys, threading, time", "from pathlib import Path"]
    if imports:
        lines.append(imports)
    lines += ["", "import engine", ""]
    if head:
        lines += [textwrap.dedent(head).strip("\n"), ""]
    lines += ["", "@engine.system(order=1)", "def fault(world, dt):"]
    lines.append(textwrap.indent(textwrap.dedent(body).strip("\n"), "    "))
    return "\n".join(lines) + "\n"


def once(body: str) -> str:
    """``body`` run on the first call only (per process)."""
    return "if not DONE:\n    DONE.append(1)\n" + textwrap.indent(textwrap.dedent(body), "    ")


def builtin_shader(name: str) -> str:
    """The text of one of the engine's built-in shader files."""
    import engine.render

    return (Path(engine.render.__file__).with_name("shaders") / name).read_text()


#: An essential system (``essential=True``, as the built-in render system) whose C call
#: runs past its hard limit every frame: a GPU wait, which holds the watchdog's signals
#: back until it returns as a driver call does. Each call counts the frames it finished.
ESSENTIAL_WAIT = """import ctypes, os, signal

import engine

libc = ctypes.CDLL(None)
HELD = ctypes.create_string_buffer(128)  # a sigset_t
libc.sigemptyset(HELD)
libc.sigaddset(HELD, int(signal.SIGALRM))
libc.sigaddset(HELD, int(signal.SIGURG))
FINISHED = os.open("@ROOT@/finished", os.O_WRONLY | os.O_CREAT, 0o644)
done = [0]
mask, HOLD, LET_GO = libc.pthread_sigmask, signal.SIG_BLOCK, signal.SIG_UNBLOCK


@engine.system(order=1, hard_limit_ms=8.0, budget_ms=2.0, essential=True)
def fault(world, dt):
    mask(HOLD, HELD, None); libc.usleep(16_000); mask(LET_GO, HELD, None)  # FAULT
    done[0] += 1  # the frame's picture, published
    os.pwrite(FINISHED, b"%12d" % done[0], 0)
"""


def five_megabyte_module() -> str:
    rows = "".join(f"    {i},\n" for i in range(600_000))  # about 5 MB of source
    return (
        "from pathlib import Path\n\nimport engine\n\nTABLE = [\n" + rows + "]\n\n\n"
        "@engine.system(order=1)\ndef fault(world, dt):\n"
        '    Path("@ROOT@/big.ran").touch()\n'
    )


# -- kinds as data ----------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """Save ``text`` to ``path`` (relative to the project) as editors do: temp + rename."""

    path: str
    text: str | bytes

    def apply(self, run: Run) -> None:
        target = run.project / self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.swp")
        data = run.fill(self.text)
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
        os.replace(tmp, target)


@dataclass(frozen=True)
class Remove:
    """Delete ``path``."""

    path: str

    def apply(self, run: Run) -> None:
        (run.project / self.path).unlink()


@dataclass(frozen=True)
class ReplaceByFolder:
    """Delete the file ``path`` and make a folder of the same name in its place."""

    path: str

    def apply(self, run: Run) -> None:
        target = run.project / self.path
        target.unlink()
        target.mkdir()
        (target / "README").write_text("a folder now\n")


@dataclass(frozen=True)
class Signal:
    """Send ``signum`` to ``engine run`` (its whole process group with ``group``, as Ctrl-C
    in a terminal does). The run is expected to end: no further stop is sent."""

    signum: int
    group: bool = False

    def apply(self, run: Run) -> None:
        run.t_stop = time.monotonic_ns()
        run.signalled = True
        if self.group:
            os.killpg(run.process.pid, self.signum)
        else:
            os.kill(run.process.pid, self.signum)


@dataclass(frozen=True)
class SignalChild:
    """Send ``signum`` to the processes of the run named ``name`` (``/proc/PID/comm``: the
    engine names its compositor ``compositor`` and its live game ``game``)."""

    name: str
    signum: int

    def apply(self, run: Run) -> None:
        found = [p.pid for p in descendants(run.process.pid) if process_name(p.pid) == self.name]
        if not found:
            raise RuntimeError(f"no process named {self.name!r} under engine run")
        for pid in found:
            os.kill(pid, self.signum)


@dataclass(frozen=True)
class GameCpu:
    """Measure how much of a CPU the live game uses over ``seconds`` (``game_cpu`` in the
    record): a runaway that escaped its interrupts keeps a CPU busy after it was refused."""

    seconds: float = 1.0

    def apply(self, run: Run) -> None:
        pids = [p.pid for p in descendants(run.process.pid) if process_name(p.pid) == "game"]
        before = {pid: cpu_ticks(pid) for pid in pids}
        t0 = time.monotonic()
        time.sleep(self.seconds)
        used = sum(cpu_ticks(pid) - before[pid] for pid in pids if before[pid] is not None)
        run.record.game_cpu = used / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class EngineCommand:
    """Run ``engine ARGS`` (``{project}`` is replaced) while the game runs."""

    args: tuple[str, ...]

    def apply(self, run: Run) -> None:
        args = [a.replace("{project}", str(run.project)) for a in self.args]
        t = time.monotonic_ns()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "engine.launcher.cli", *args],
                capture_output=True,
                text=True,
                timeout=20,
                env=run.env,
                cwd=run.root,
            )
            run.commands.append((args, done.returncode, done.stdout + done.stderr, t))
        except subprocess.TimeoutExpired:
            run.commands.append((args, None, "timed out after 20 s", t))


Action = Write | Remove | ReplaceByFolder | Signal | EngineCommand


@dataclass(frozen=True)
class Step:
    """Do ``action`` ``delay_s`` after ``after``: ``"start"`` (``engine run`` started),
    ``"ready"`` (the counter's first tick),
    ``"probation"`` (the first version of ``unit``, by default the file the action
    touches, is marked good) or ``"step"`` (the previous step)."""

    after: str
    delay_s: float
    action: Action
    unit: str | None = None  # a project path: whose probation "probation" waits for


@dataclass(frozen=True)
class Kind:
    """One fault kind: what the project holds, what happens while it runs, what containment
    means for it (a key of :data:`RULES`), and which modules must run (rule ``runs``)."""

    name: str
    what: str
    files: Mapping[str, str | bytes]
    steps: tuple[Step, ...] = ()
    rule: str = "stopped"
    runs: tuple[str, ...] = ()
    fast: bool = False
    hold_s: float = 1.0  # at least this long after the last step ...
    max_hold_s: float = 8.0  # ... and at most this long, waiting for the counter (and probe)
    rewind_s: float = 0.0  # a rewind of the world this far back is no reset
    render: bool = False  # draw with the engine's render system (else: --no-render)
    wait_for: tuple[str, ...] = ()  # marker files (in the run's folder) the hold waits for

    @property
    def texts(self) -> list[tuple[str, str | bytes]]:
        """Every text the kind puts in the project: (path, text), in order."""
        out = list(self.files.items())
        out += [(s.action.path, s.action.text) for s in self.steps if isinstance(s.action, Write)]
        return out

    @property
    def where(self) -> tuple[str, ...]:
        """``file:line`` of every line marked ``FAULT``: what the message must name."""
        found = []
        for path, text in self.texts:
            data = text.encode() if isinstance(text, str) else text
            for number, line in enumerate(data.split(b"\n"), 1):
                if MARK.encode() in line:
                    found.append(f"{Path(path).name}:{number}")
        return tuple(dict.fromkeys(found))

    @property
    def faulty(self) -> dict[tuple[str, str], list[str]]:
        """History unit ``(kind, name)`` -> the marked texts it is given (its faulty
        versions), decoded where they decode."""
        units: dict[tuple[str, str], list[str]] = {}
        for path, text in self.texts:
            data = text.encode() if isinstance(text, str) else text
            if MARK.encode() not in data:
                continue
            unit = history_unit(path)
            try:
                units.setdefault(unit, []).append(data.decode())
            except UnicodeDecodeError:
                units.setdefault(unit, [])
        return units


def history_unit(path: str) -> tuple[str, str]:
    """The history unit a project file is: ``systems/x.py`` -> ``("systems", "x")``."""
    p = Path(path)
    if p.parts[0] == "systems":
        return ("systems", p.stem)
    return (p.parts[0], p.name)


def after_probation(path: str, text: str | bytes, healthy: str = HEALTHY, **kw: Any) -> dict:
    """The keyword arguments of a kind whose fault is an edit of a module proven good."""
    return {
        "files": {path: healthy},
        "steps": (Step("probation", 0.2, Write(path, text)),),
        **kw,
    }


def probe_after(seconds: float = 1.0) -> Step:
    """Save a new module ``seconds`` after the previous step: it must load and run."""
    return Step("step", seconds, Write("systems/probe.py", PROBE))


SPIN = "while True:  # FAULT\n    pass\n"
# Each interrupt it swallows once switched the loader's trace hook off for good, and the
# call made the loop run on untraced, unstoppable, for the rest of the game.
SWALLOW_CALLING = """\
def tick():
    pass


while True:
    try:
        while True:  # FAULT
            tick()
    except BaseException:
        pass
"""
RENDER = "systems/render.py"  # the engine's render system (its history is the project's)
DONE = "DONE = []"
F = "systems/fault.py"

ON_LOAD_V1 = """\
import engine


@engine.component
class FaultState:
    ready: bool = True


def on_load(world):
    world.create_entity(FaultState())


def on_unload(world):
    for entity, _ in world.get_component(FaultState):
        world.delete_entity(entity, immediate=True)


@engine.system(order=1)
def fault(world, dt):
    if not world.get_component(FaultState):
        raise RuntimeError("my state is gone: on_unload ran, yet this version still runs")
"""

ON_LOAD_V2 = """\
import engine


@engine.component
class FaultState:
    ready: bool = True


def on_load(world):
    raise RuntimeError("on_load failed")  # FAULT


@engine.system(order=1)
def fault(world, dt):
    pass
"""

ON_UNLOAD_V1 = """\
import engine


def on_unload(world):
    raise RuntimeError("on_unload failed")  # FAULT


@engine.system(order=1)
def fault(world, dt):
    pass
"""

ON_UNLOAD_V2 = """\
from pathlib import Path

import engine


@engine.system(order=1)
def fault(world, dt):
    Path("@ROOT@/v2.ran").touch()
"""

PING = """\
from pathlib import Path

import engine
from systems import pong


def name():
    return "ping"


@engine.system(order=1)
def ping(world, dt):
    assert pong.name() == "pong"
    Path("@ROOT@/ping.ran").touch()
"""

PONG = PING.replace("ping", "PING").replace("pong", "ping").replace("PING", "pong")


def shader_with(before_main: str = "", at_start: str = "", at_end: str = "") -> str:
    """The built-in ``basic.frag`` with lines added before ``main``, at its start and at its
    end (``main`` is the file's last function). Raises ``ValueError`` if it has changed
    beyond that."""
    text = builtin_shader("basic.frag")
    head, found, body = text.partition("void main() {")
    body, closing, tail = body.rpartition("}")
    if not found or not closing or tail.strip():
        raise ValueError("basic.frag no longer ends with its main(): update the shader kinds")
    return f"{head}{before_main}void main() {{{at_start}{body}{at_end}}}{tail}"


SHADER_LOOP = shader_with(
    at_start="\n"
    "    // Never ends on a GPU (the driver resets it). llvmpipe stops any shader after\n"
    "    // 65535 loop iterations: here that makes each frame's draw take seconds.\n"
    "    float spin = 0.0;\n"
    "    while (u_ambient < 2.0) {  // FAULT: u_ambient is at most 1\n"
    "        spin += 1.0;\n"
    "        if (spin < 0.0) break;  // an exit the compiler cannot rule out\n"
    "    }",
    # the loop's result is used, so the compiler cannot drop the loop
    at_end="    frag_color += vec4(step(1e30, spin));\n",
)

SHADER_UNLINKED = shader_with(
    before_main="vec3 shade(vec3 color);  // FAULT: declared, never defined: compiles, "
    "does not link\n\n",
    at_end="    frag_color.rgb = shade(frag_color.rgb);\n",
)


def machine_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def kinds(bomb_gb: float | None = None) -> list[Kind]:
    """Every kind, in the order the bench runs them. ``bomb_gb``: where the memory bomb
    stops by itself if nothing stops it first (a guard for the machine, not a limit)."""
    bomb_gb = bomb_gb or 2 * machine_memory_gb()
    bomb_chunks = max(1, math.ceil(bomb_gb))
    return [
        Kind(
            "control",
            "no fault: the counter and a harmless module",
            {F: HEALTHY},
            rule="runs",
            runs=("fault",),
            fast=True,
        ),
        # -- rung 1: the module does not load --------------------------------------------
        Kind(
            "syntax-error",
            "a syntax error",
            {F: "import engine\n\n\n@engine.system\ndef fault(world, dt)  # FAULT\n    pass\n"},
            rule="refused",
            fast=True,
        ),
        Kind(
            "syntax-error-edit",
            "a syntax error saved while the game runs",
            **after_probation(
                F,
                "import engine\n\n\n@engine.system\ndef fault(world, dt)  # FAULT\n    pass\n",
                rule="refused",
            ),
        ),
        Kind(
            "missing-import",
            "an import of a module that does not exist",
            {F: module("pass", imports="import no_such_module_anywhere  # FAULT")},
            rule="refused",
            fast=True,
        ),
        Kind(
            "empty-file",
            "an empty module (no systems): harmless",
            {F: ""},
            rule="harmless",
        ),
        Kind(
            "nul-bytes",
            "NUL bytes in the source",
            {F: b"import engine\n\nx = 1  \x00\x00 # FAULT\n"},
            rule="refused",
        ),
        Kind(
            "invalid-utf8",
            "bytes that are not UTF-8",
            {F: b"import engine\n\nname = '\xff\xfe caf\xe9'  # FAULT\n"},
            rule="refused",
        ),
        Kind(
            "five-mb-module",
            "a 5 MB module saved while the game runs: loads, costs no frame",
            {},
            (Step("ready", 0.5, Write(F, five_megabyte_module())),),
            rule="runs",
            runs=("fault",),
            wait_for=("big.ran",),
            max_hold_s=15.0,
        ),
        Kind(
            "loop-at-import",
            "a module saved while running that loops at import",
            {},
            (
                Step("ready", 0.5, Write(F, "import engine\n\n" + SPIN)),
                Step("step", 3.0, GameCpu()),
            ),
            rule="refused",
            max_hold_s=10.0,
        ),
        Kind(
            "swallow-at-import",
            "a module saved while running that loops at import, catching BaseException "
            "and calling a function",
            {},
            (
                Step("ready", 0.5, Write(F, "import engine\n\n" + SWALLOW_CALLING)),
                Step("step", 3.0, GameCpu()),
            ),
            rule="refused",
            fast=True,
            max_hold_s=10.0,
        ),
        Kind(
            "circular-import",
            "two modules importing each other (valid Python)",
            {"systems/ping.py": PING, "systems/pong.py": PONG},
            rule="runs",
            runs=("ping", "pong"),
            fast=True,
        ),
        Kind(
            "on-load-raises",
            "a new version whose on_load raises",
            **after_probation(F, ON_LOAD_V2, healthy=ON_LOAD_V1, rule="refused"),
        ),
        Kind(
            "on-unload-raises",
            "the old version's on_unload raises at a swap",
            {F: ON_UNLOAD_V1},
            (Step("probation", 0.2, Write(F, ON_UNLOAD_V2)),),
            rule="swapped",
        ),
        # -- rung 2: exceptions --------------------------------------------------------------
        Kind(
            "raise-every-frame",
            "raise RuntimeError every frame",
            {F: module("raise RuntimeError('boom')  # FAULT")},
            fast=True,
        ),
        Kind(
            "raise-after-probation",
            "a new version that raises, after the old one passed",
            **after_probation(F, module("raise RuntimeError('boom')  # FAULT"), rule="rolled-back"),
        ),
        Kind(
            "keyboard-interrupt",
            "raise KeyboardInterrupt",
            {F: module("raise KeyboardInterrupt  # FAULT")},
            fast=True,
        ),
        Kind(
            "raise-systemexit",
            "raise SystemExit",
            {F: module("raise SystemExit(3)  # FAULT")},
        ),
        Kind("sys-exit-0", "sys.exit(0)", {F: module("sys.exit(0)  # FAULT")}),
        Kind(
            "infinite-recursion",
            "a function that calls itself forever",
            {F: module("deeper(0)", head="def deeper(n):\n    return deeper(n + 1)  # FAULT")},
        ),
        # -- rung 3 and 4: runaways ------------------------------------------------------
        Kind("while-true", "while True: pass", {F: module(SPIN)}, fast=True),
        Kind(
            "swallow-interrupts",
            "a loop that catches BaseException",
            {
                F: module(
                    "while True:\n    try:\n        while True:  # FAULT\n            pass\n"
                    "    except BaseException:\n        pass"
                )
            },
        ),
        Kind("sleep-5", "time.sleep(5)", {F: module("time.sleep(5)  # FAULT")}, fast=True),
        Kind(
            "long-c-call",
            "a 3000x3000 numpy matmul every frame",
            {
                F: module(
                    "A @ A  # FAULT", imports="import numpy as np", head="A = np.ones((3000, 3000))"
                )
            },
        ),
        Kind(
            "essential-c-call",
            "an essential system (as the render system) whose C call, a GPU wait, runs past "
            "its hard limit every frame: kept on, every frame's work finished",
            {F: ESSENTIAL_WAIT},
            rule="finished",
            runs=("fault",),
            fast=True,
        ),
        Kind(
            "c-call-then-loop",
            "a long C call, then a runaway loop in the next system",
            {
                "systems/heavy.py": module(
                    "A @ A  # FAULT", imports="import numpy as np", head="A = np.ones((3000, 3000))"
                ),
                "systems/spin.py": module(SPIN).replace("order=1", "order=2"),
            },
            max_hold_s=10.0,
        ),
        Kind(
            "thread-spins",
            "a thread started at import that spins forever",
            {
                F: "import os, threading\n\n\ndef spin():\n    n = 0\n"
                "    while True:  # FAULT\n        n += 1\n        if n % 2_000_000 == 0:\n"
                "            os.utime('@ROOT@/thread.alive')\n\n\n"
                "open('@ROOT@/thread.alive', 'w').close()\n"
                "threading.Thread(target=spin, daemon=True).start()\n"
            },
            rule="thread-stopped",
        ),
        Kind(
            "thread-swallows-stops",
            "a thread started at import that spins and swallows every stop",
            {
                F: "import os, threading\n\n\ndef spin():\n    n = 0\n    while True:\n"
                "        try:\n            while True:  # FAULT\n                n += 1\n"
                "                if n % 2_000_000 == 0:\n"
                "                    os.utime('@ROOT@/thread.alive')\n"
                "        except BaseException:\n            pass\n\n\n"
                "open('@ROOT@/thread.alive', 'w').close()\n"
                "threading.Thread(target=spin, daemon=True).start()\n"
            },
            rule="thread-stopped",
            fast=True,
            hold_s=3.0,  # stopped 3 times (0.25 s apart), then the game restarts without it
        ),
        Kind(
            "sigalrm-ignored",
            "signal(SIGALRM, SIG_IGN), then a loop",
            **after_probation(F, module("signal.signal(signal.SIGALRM, signal.SIG_IGN)\n" + SPIN)),
        ),
        Kind(
            "itimer-off",
            "setitimer(ITIMER_REAL, 0), then a loop",
            **after_probation(F, module("signal.setitimer(signal.ITIMER_REAL, 0)\n" + SPIN)),
        ),
        # -- rung 5: the process dies or hangs ----------------------------------------------
        Kind("os-exit", "os._exit(1) (from the start)", {F: module("os._exit(1)  # FAULT")}),
        Kind(
            "segfault",
            "a segfault through ctypes (from the start)",
            {F: module("ctypes.string_at(0)  # FAULT")},
        ),
        Kind(
            "os-exit-after-probation",
            "os._exit(1) in a new version",
            **after_probation(F, module("os._exit(1)  # FAULT")),
        ),
        Kind(
            "segfault-after-probation",
            "a segfault in a new version",
            **after_probation(F, module("ctypes.string_at(0)  # FAULT")),
        ),
        Kind(
            "abort",
            "os.abort() in a new version",
            **after_probation(F, module("os.abort()  # FAULT")),
        ),
        Kind(
            "c-stack-overflow",
            "a C-level recursion past the C stack (limit raised)",
            {
                # The recursion is json's decoder (C), and so is building its input: nothing
                # heavy runs at import, where a loaded machine's loader would refuse it.
                F: module(
                    "json.loads('[' * 2_000_000 + ']' * 2_000_000)  # FAULT",
                    imports="import json",
                    head="sys.setrecursionlimit(10_000_000)",
                )
            },
        ),
        Kind(
            "memory-bomb",
            f"1 GiB more every frame, never touched (stops itself at {bomb_gb:.0f} GiB)",
            {
                F: module(
                    f"if len(HOARD) < {bomb_chunks}:\n"
                    "    HOARD.append(np.zeros(1 << 30, np.uint8))  # FAULT",
                    imports="import numpy as np",
                    head="HOARD = []",
                )
            },
            rule="out-of-memory",
            hold_s=2.5,
        ),
        # -- the world and its checkpoints --------------------------------------------------
        Kind(
            "clear-database",
            "world.clear_database() once; then `engine rewind PROJECT 2`",
            {F: HEALTHY},
            (
                # 2.5 s after probation: checkpoints from before the fault are there to go to
                Step("probation", 2.5, Write(F, module(once("world.clear_database()"), head=DONE))),
                Step("step", 1.0, EngineCommand(("rewind", "{project}", "2"))),
            ),
            rule="rewound",
            rewind_s=3.0,
        ),
        Kind(
            "delete-every-entity",
            "every entity deleted once; then `engine rewind PROJECT 2`",
            {F: HEALTHY},
            (
                Step(
                    "probation",
                    2.5,
                    Write(
                        F,
                        module(
                            once(
                                "for entity in list(world.get_entities()):\n"
                                "    world.delete_entity(entity)"
                            ),
                            head=DONE,
                        ),
                    ),
                ),
                Step("step", 1.0, EngineCommand(("rewind", "{project}", "2"))),
            ),
            rule="rewound",
            rewind_s=3.0,
        ),
        Kind(
            "unpicklable-component",
            "a component holding a lambda (the checkpoint)",
            {
                F: module(
                    once("world.create_entity(Handle(callback=lambda: 0))"),
                    head="@engine.component\nclass Handle:  # FAULT\n"
                    "    callback: object = None\n\n\n" + DONE,
                )
            },
            rule="checkpoints",
            hold_s=2.5,  # the first checkpoints come 1 s and 2 s after the start
        ),
        Kind(
            "huge-component",
            "a component holding a 200 MB array (the checkpoint)",
            {
                F: module(
                    once("world.create_entity(Blob(np.zeros(25_000_000)))"),
                    imports="import numpy as np",
                    head="@engine.component\nclass Blob:\n    data: object = None\n\n\n" + DONE,
                )
            },
            rule="light-checkpoints",
            runs=("fault",),
            hold_s=3.0,
        ),
        # -- rung 7 and the side doors --------------------------------------------------------
        Kind(
            "kill-supervisor",
            "os.kill(os.getppid(), SIGKILL)",
            {F: module("os.kill(os.getppid(), signal.SIGKILL)  # FAULT")},
            rule="untouched",
        ),
        Kind(
            "kill-supervisor-raw",
            "the kill system call through ctypes, and a `kill` command, to the supervisor",
            {
                F: module(
                    once("subprocess.run(['kill', '-KILL', str(os.getppid())])\n")
                    + "libc = ctypes.CDLL(None, use_errno=True)\n"
                    "if libc.syscall(SYS_KILL, os.getppid(), signal.SIGKILL):\n"
                    "    raise OSError(ctypes.get_errno(), 'kill')  # FAULT\n",
                    imports="import subprocess\n\nimport pyseccomp\n\n"
                    "SYS_KILL = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, 'kill')",
                    head=DONE,
                )
            },
            rule="untouched",
            fast=True,
        ),
        Kind(
            "setup-hangs",
            "game.py's setup() loops forever in a new world; game.py is fixed 4 s later",
            {
                "game.py": GAME.replace(
                    "def setup(world):\n",
                    "def setup(world):\n    while True:  # FAULT\n        pass\n",
                )
            },
            (Step("start", 4.0, Write("game.py", GAME)),),
            rule="waited-for-edit",
            hold_s=3.0,
            max_hold_s=20.0,
        ),
        Kind(
            "compositor-hangs",
            "the compositor stops presenting (SIGSTOP: as a driver call that never returns)",
            {F: HEALTHY},
            (Step("ready", 0.5, SignalChild("compositor", signal.SIGSTOP)),),
            rule="compositor-restarted",
            hold_s=6.0,
            max_hold_s=12.0,
        ),
        Kind(
            "killpg-sigterm",
            "os.killpg(0, SIGTERM)",
            {F: module("os.killpg(0, signal.SIGTERM)  # FAULT")},
            rule="untouched",
        ),
        Kind(
            "closerange",
            "os.closerange(3, 1024) once; then a new module is saved",
            {F: HEALTHY},
            (
                Step("probation", 0.2, Write(F, module(once("os.closerange(3, 1024)"), head=DONE))),
                probe_after(),
            ),
            rule="watching",
        ),
        Kind(
            "stdout-closed",
            "sys.stdout.close() once; then a new module is saved",
            {F: HEALTHY},
            (
                Step("probation", 0.2, Write(F, module(once("sys.stdout.close()"), head=DONE))),
                probe_after(),
            ),
            rule="watching",
        ),
        Kind(
            "spawn-child",
            "subprocess.Popen(['sleep', '300']) once",
            {
                F: module(
                    # The child writes its own pid: the watchdog may interrupt the parent
                    # right after the (slow) spawn.
                    once(
                        "subprocess.Popen(['sh', '-c', 'echo $$ > @ROOT@/child.pid; "
                        "exec sleep 300'])"
                    ),
                    imports="import subprocess",
                    head=DONE,
                )
            },
            rule="no-orphans",
            fast=True,
        ),
        Kind(
            "fork-child",
            "os.fork() once; the child sleeps 300 s",
            {
                F: module(
                    once(
                        "if os.fork() == 0:  # the child says who it is, sleeps, never returns\n"
                        "    Path('@ROOT@/child.pid').write_text(str(os.getpid()))\n"
                        "    time.sleep(300)\n"
                        "    os._exit(0)"
                    ),
                    head=DONE,
                )
            },
            rule="no-orphans",
        ),
        # -- the files themselves -----------------------------------------------------------
        Kind(
            "module-deleted",
            "the module's file deleted while it runs",
            {F: HEALTHY},
            (Step("probation", 0.2, Remove(F)), probe_after()),
            rule="removed",
        ),
        Kind(
            "module-becomes-folder",
            "the module's file replaced by a folder of that name",
            {F: HEALTHY},
            (Step("probation", 0.2, ReplaceByFolder(F)), probe_after()),
            rule="watching",  # unloading it or keeping the running version both do
        ),
        # -- shaders (the render system) ------------------------------------------------------
        Kind(
            "shader-infinite-loop",
            "a fragment shader that never ends (a GPU hang)",
            {"shaders/basic.frag": builtin_shader("basic.frag")},
            (Step("probation", 0.5, Write("shaders/basic.frag", SHADER_LOOP), RENDER),),
            max_hold_s=10.0,
            render=True,
        ),
        Kind(
            "shader-link-error",
            "a fragment shader that compiles but does not link",
            {"shaders/basic.frag": builtin_shader("basic.frag")},
            (Step("probation", 0.5, Write("shaders/basic.frag", SHADER_UNLINKED), RENDER),),
            rule="refused",
            render=True,
        ),
        # -- signals to `engine run` itself ------------------------------------------------
        Kind(
            "sigterm-engine",
            "SIGTERM to engine run",
            {F: HEALTHY},
            (Step("ready", 1.0, Signal(signal.SIGTERM)),),
            rule="clean-stop",
            fast=True,
        ),
        Kind(
            "sigint-engine",
            "Ctrl-C: SIGINT to engine run's process group",
            {F: HEALTHY},
            (Step("ready", 1.0, Signal(signal.SIGINT, group=True)),),
            rule="clean-stop",
            fast=True,
        ),
        Kind(
            "sigkill-engine",
            "SIGKILL to engine run (what a test runner's timeout does)",
            {F: HEALTHY},
            (Step("ready", 1.0, Signal(signal.SIGKILL)),),
            rule="children-follow",
            fast=True,
        ),
    ]


#: Kinds the engine fails today, with the hole of issue 9 each shows. The one list: the
#: bench prints it under the table and tests/test_faults.py marks these xfail.
KNOWN_HOLES: dict[str, str] = {}


# -- the processes of a run -------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A process seen alive: ``start`` (clock ticks since boot) tells a reused pid apart."""

    pid: int
    start: int

    def alive(self) -> bool:
        stat = proc_stat(self.pid)
        return stat is not None and stat[1] == self.start and stat[2] != "Z"

    def describe(self) -> str:
        try:
            argv = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return f"{self.pid} (gone)"
        text = " ".join(a.decode(errors="replace") for a in argv if a)
        for hint, name in (
            ("spawn_main", "engine child (multiprocessing)"),
            ("resource_tracker", "multiprocessing resource tracker"),
            ("engine.launcher.cli", "engine run"),
        ):
            if hint in text:
                return f"{self.pid} {name}"
        return f"{self.pid} {text[:50]}"


def proc_stat(pid: int) -> tuple[int, int, str] | None:
    """``(ppid, starttime, state)`` of a process, or None if there is none."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0].decode()


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root_pid: int) -> set[Proc]:
    """Every living process below ``root_pid`` (itself included), by the parent chain."""
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None and stat[2] != "Z":
            children.setdefault(stat[0], []).append((pid, stat[1]))
    found: set[Proc] = set()
    root = proc_stat(root_pid)
    if root is not None and root[2] != "Z":
        found.add(Proc(root_pid, root[1]))
    todo = [root_pid]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            found.add(Proc(pid, start))
            todo.append(pid)
    return found


def processes_of_run(token: str, folder: Path, known: Iterable[Proc] = ()) -> set[Proc]:
    """Living processes of one run: marked in their environment, working in or naming its
    folder, or seen below it while it ran. Never this process."""
    marker = f"{RUN_MARKER}={token}".encode()
    folder_text = str(folder)
    out = {p for p in known if p.alive()}
    for pid in all_pids():
        if pid == os.getpid():
            continue
        stat = proc_stat(pid)
        if stat is None or stat[2] == "Z" or Proc(pid, stat[1]) in out:
            continue
        try:
            mine = marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if not mine:
                cwd = os.readlink(f"/proc/{pid}/cwd")
                mine = cwd == folder_text or cwd.startswith(folder_text + "/")
            if not mine:
                mine = folder_text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if mine:
            out.add(Proc(pid, stat[1]))
    return out


def kill_all(procs: Iterable[Proc], wait_s: float = 5.0) -> None:
    """SIGKILL each process (if it is still the same one), then wait until all are gone."""
    procs = list(procs)
    for p in procs:
        if p.alive():
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGKILL)
    give_up = time.monotonic() + wait_s
    while any(p.alive() for p in procs) and time.monotonic() < give_up:
        time.sleep(0.02)


def _engine_child_setup() -> None:
    """In ``engine run`` before exec: Ctrl-C acts (a background bench ignores SIGINT), and
    it dies if the bench dies (the bench then cannot sweep up after it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# -- one run ------------------------------------------------------------------------------


@dataclass
class Options:
    size: str = "128x96"
    render: bool = False  # every kind with the render system, not only those that need it
    keep: bool = False
    floor_missed_per_frame: float | None = None  # None: the compositor column is not judged
    report: Callable[[str], None] = lambda line: None


@dataclass
class Tick:
    pid: int
    value: int
    t_ns: int


@dataclass
class RunRecord:
    """Everything one run left behind, gathered before its folder is removed."""

    kind: str
    root: str = ""
    rc: int | None = None
    early_exit: bool = False  # ended before it was asked to (or signalled)
    stop_timed_out: bool = False
    signalled: bool = False
    t_start: int = 0
    t_ready: int | None = None
    t_fault: int | None = None
    t_stop: int | None = None
    t_exit: int | None = None
    output: str = ""
    stats: dict[str, Any] | None = None
    ticks: list[Tick] = field(default_factory=list)
    checkpoint_counter: int | None = None
    checkpoint_note: str = ""
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    commands: list[tuple[list[str], int | None, str, int]] = field(default_factory=list)
    markers: dict[str, int] = field(default_factory=dict)  # file name -> mtime_ns
    finished: int = 0  # the count an essential-c-call system wrote (its finished calls)
    children_alive: list[int] = field(default_factory=list)  # user-spawned, at the scan
    children: list[int] = field(default_factory=list)
    alive_after_1s: list[str] = field(default_factory=list)  # rule children-follow only
    leftovers: list[str] = field(default_factory=list)
    steps_done: int = 0
    seconds: float = 0.0
    game_cpu: float | None = None  # share of a CPU the game used, where a GameCpu step ran


class Run:
    """One kind in one ``engine run``: start, steps, stop, the leftover scan, the record.

    :meth:`execute` never leaves a process behind: whatever happens (a bench bug, Ctrl-C),
    its ``finally`` kills the run's processes and removes the folder (unless ``keep``).
    """

    def __init__(self, kind: Kind, options: Options) -> None:
        self.kind = kind
        self.options = options
        self.root = Path(tempfile.mkdtemp(prefix=f"fault-{kind.name}-"))
        self.project = self.root / "game"
        self.token = f"{os.getpid()}-{self.root.name}"
        self.env = {
            **os.environ,
            "PYGLET_HEADLESS": "1",
            "PYTHONUNBUFFERED": "1",
            RUN_MARKER: self.token,
        }
        self.record = RunRecord(kind.name, str(self.root))
        self.process: subprocess.Popen | None = None
        self.known: set[Proc] = set()
        self.signalled = False
        self.t_stop: int | None = None
        self.commands = self.record.commands
        self._tick_offset = 0
        self._tracked_ns = 0

    def fill(self, text: str | bytes) -> str | bytes:
        if isinstance(text, bytes):
            return text.replace(ROOT.encode(), str(self.root).encode())
        return text.replace(ROOT, str(self.root))

    # -- the steps ---------------------------------------------------------------------
    def execute(self) -> RunRecord:
        global _CURRENT
        _CURRENT = self
        t0 = time.monotonic()
        try:
            self._materialize()
            self._start()
            steps = self.kind.steps
            self._do_steps([s for s in steps if s.after == "start"])  # before any tick
            if self._wait(self._ready, READY_TIMEOUT_S):
                self.record.t_ready = time.monotonic_ns()
                self._do_steps([s for s in steps if s.after != "start"])
                self._hold()
            self._stop()
            self._sweep()
            self._collect()
        finally:
            self._kill_everything()
            self.record.seconds = time.monotonic() - t0
            if not self.options.keep:
                shutil.rmtree(self.root, ignore_errors=True)
            _CURRENT = None
        return self.record

    def _materialize(self) -> None:
        (self.project / "systems").mkdir(parents=True)
        files = {"game.py": GAME, "systems/counter.py": COUNTER, **self.kind.files}
        for path, text in files.items():
            target = self.project / path
            target.parent.mkdir(parents=True, exist_ok=True)
            data = self.fill(text)
            target.write_bytes(data if isinstance(data, bytes) else data.encode())

    def _start(self) -> None:
        self.record.t_start = time.monotonic_ns()
        command = [
            sys.executable,
            "-m",
            "engine.launcher.cli",
            "run",
            str(self.project),
            "--quiet",
            "--size",
            self.options.size,
            "--stats-json",
            str(self.root / "stats.json"),
        ]
        if not (self.kind.render or self.options.render):
            command.append("--no-render")
        self._output = open(self.root / "output.txt", "wb")  # noqa: SIM115 - closed in _collect
        self.process = subprocess.Popen(
            command,
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a fault's killpg(0) never hits the bench
            preexec_fn=_engine_child_setup,
        )

    def _wait(self, cond: Callable[[], bool], timeout_s: float) -> bool:
        """Poll until ``cond()`` (True), the engine exits or ``timeout_s`` passes (False)."""
        give_up = time.monotonic() + timeout_s
        while True:
            self._track()
            if cond():
                return True
            if self.process.poll() is not None:
                self._exited()
                return cond()
            if time.monotonic() >= give_up:
                return False
            time.sleep(0.02)

    def _track(self) -> None:
        """Remember every process below the engine, once a second (a scan of /proc costs
        tens of ms of CPU here, taken from the run it watches)."""
        now = time.monotonic_ns()
        if now - self._tracked_ns >= S and self.process.poll() is None:
            self._tracked_ns = now
            self.known |= descendants(self.process.pid)
        self._read_ticks()

    def _exited(self) -> None:
        if self.record.t_exit is None:
            self.record.t_exit = time.monotonic_ns()
            self.record.rc = self.process.returncode
            self.record.early_exit = self.t_stop is None

    def _read_ticks(self) -> None:
        try:
            with open(self.root / "counter.log", "rb") as f:
                f.seek(self._tick_offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self._tick_offset += end
        for line in data[:end].splitlines():
            parts = line.split()
            if len(parts) == 3:
                self.record.ticks.append(Tick(*(int(p) for p in parts)))

    def _ready(self) -> bool:
        return bool(self.record.ticks)

    def _good(self, path: str) -> bool:
        """Whether the first version of ``path``'s unit has passed probation."""
        kind, name = history_unit(path)
        versions = read_history(self.project, kind, name).get("versions", [])
        return bool(versions) and versions[0]["status"] == "good"

    def _do_steps(self, steps: list[Step]) -> None:
        previous = self.record.t_ready
        for step in steps:
            if step.after == "probation":
                target = step.unit or getattr(step.action, "path", F)
                if not self._wait(lambda t=target: self._good(t), PROBATION_TIMEOUT_S):
                    return
                base = time.monotonic_ns()
            elif step.after == "ready":
                base = self.record.t_ready
            elif step.after == "start":
                base = self.record.t_start
            else:
                base = previous
            due = base + round(step.delay_s * S)
            if not self._wait(lambda d=due: time.monotonic_ns() >= d, step.delay_s + 1.0):
                return  # the engine is gone
            if self.process.poll() is not None:
                self._exited()
                return
            step.action.apply(self)
            previous = time.monotonic_ns()
            if self.record.t_fault is None:
                self.record.t_fault = previous
            self.record.steps_done += 1
            self.options.report(f"    {type(step.action).__name__} at {self._since(previous)}")

    def _since(self, t_ns: int) -> str:
        return f"{(t_ns - self.record.t_start) / S:.1f} s"

    def _hold(self) -> None:
        """Let the game run on after the last step (or the first tick): at least
        ``hold_s``, then until the counter ticks at half the display rate or more over the
        last second (a game being restarted gets the time to come back) and the kind's
        markers exist (a probe module saved by a step has run); at most ``max_hold_s``."""
        if self.signalled:
            return
        since = time.monotonic_ns() if self.kind.steps else self.record.t_ready
        markers = list(self.kind.wait_for)
        if any(
            isinstance(s.action, Write) and s.action.path == "systems/probe.py"
            for s in self.kind.steps
        ):
            markers.append("probe.ran")

        def settled() -> bool:
            now = time.monotonic_ns()
            if now - since < self.kind.hold_s * S:
                return False
            recent = sum(1 for t in self.record.ticks[-RATE_HZ:] if t.t_ns > now - S)
            return recent >= RATE_HZ // 2 and all((self.root / m).exists() for m in markers)

        self._wait(settled, self.kind.max_hold_s)

    def _stop(self) -> None:
        """Stop the run as a user does (SIGTERM), unless a step already signalled it; a run
        that does not end in time has its ``engine run`` killed, as a test runner would."""
        if self.process.poll() is None and not self.signalled:
            self.t_stop = time.monotonic_ns()
            self.process.send_signal(signal.SIGTERM)
        self.record.t_stop = self.t_stop
        self.record.signalled = self.signalled
        if not self._wait(lambda: self.process.poll() is not None, STOP_TIMEOUT_S):
            self.record.stop_timed_out = True
            self.process.kill()
            self.process.wait()
        self._exited()

    def _sweep(self) -> None:
        """2 s after the exit: record what of the run is still alive, then kill it."""
        if self.kind.rule == "children-follow":
            delay = self.record.t_exit + S - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / S)
            alive = processes_of_run(self.token, self.root, self.known)
            self.record.alive_after_1s = sorted(p.describe() for p in alive)
        delay = self.record.t_exit + round(LEFTOVER_AFTER_S * S) - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / S)
        children = []
        with contextlib.suppress(OSError, ValueError):
            children.append(int((self.root / "child.pid").read_text()))
        self.record.children = children
        left = processes_of_run(self.token, self.root, self.known)
        self.record.leftovers = sorted(p.describe() for p in left)
        self.record.children_alive = [p.pid for p in left if p.pid in children]
        kill_all(left)

    def _collect(self) -> None:
        rec = self.record
        self._output.close()
        rec.output = (self.root / "output.txt").read_text(errors="replace")
        with contextlib.suppress(OSError, ValueError):
            rec.stats = json.loads((self.root / "stats.json").read_text())
        self._read_ticks()
        rec.checkpoint_counter, rec.checkpoint_note = checkpoint_counter(
            self.project / ".engine" / "checkpoint.bin"
        )
        units = {history_unit(p) for p, _ in self.kind.texts}
        units |= {history_unit(s.action.path) for s in self.kind.steps if hasattr(s.action, "path")}
        for kind, name in units:
            rec.history[f"{kind}/{name}"] = read_history(self.project, kind, name)
        for name in ("probe.ran", "thread.alive", "v2.ran", "big.ran", "ping.ran", "pong.ran"):
            with contextlib.suppress(OSError):
                rec.markers[name] = (self.root / name).stat().st_mtime_ns
        with contextlib.suppress(OSError, ValueError):
            rec.finished = int((self.root / "finished").read_text().strip())
        # mtimes are wall-clock: keep them relative to the stop, on the monotonic clock
        offset = time.time_ns() - time.monotonic_ns()
        rec.markers = {k: v - offset for k, v in rec.markers.items()}

    def _kill_everything(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.kill()
        kill_all(processes_of_run(self.token, self.root, self.known))
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        if getattr(self, "_output", None) is not None and not self._output.closed:
            self._output.close()


_CURRENT: Run | None = None


@atexit.register
def _sweep_current() -> None:
    """A bench that dies between a run's start and its own clean-up still kills the run."""
    if _CURRENT is not None:
        _CURRENT._kill_everything()


def read_history(project: Path, kind: str, name: str) -> dict[str, Any]:
    """``{"active": n, "versions": [{number, status, sha256, why}]}`` of one history unit
    (empty when the engine recorded none)."""
    from engine.loader.history import ProjectHistory

    try:
        suffix = ".py" if kind == "systems" else Path(name).suffix
        unit = ProjectHistory(project).unit(kind, name, suffix=suffix)
        return {
            "active": unit.active_number,
            "versions": [
                {"number": v.number, "status": str(v.status), "sha256": v.sha256, "why": v.why}
                for v in unit.versions
            ],
        }
    except Exception as exc:  # a history the engine left half-written is a finding too
        return {"error": repr(exc), "versions": []}


def checkpoint_counter(path: Path) -> tuple[int | None, str]:
    """The counter's value in the checkpoint file, and a note when there is none."""
    try:
        data = path.read_bytes()
    except OSError:
        return None, "no checkpoint"
    from engine.world.checkpoint import PendingComponent
    from engine.world.world import World

    try:
        world = World.restore(data, resolve=lambda key: None)
    except Exception as exc:
        return None, f"unreadable checkpoint: {exc!r}"
    try:
        for entity in world.get_entities():
            for component in world.components_for_entity(entity):
                if isinstance(component, PendingComponent) and component.key.endswith(":Counter"):
                    return int(component.fields["value"]), ""
    finally:
        world.delete()
    return None, "no Counter in the checkpoint"


# -- judging a run ------------------------------------------------------------------------


@dataclass
class Cell:
    """One column of a row: ``ok`` (None: does not apply to this kind) and why."""

    ok: bool | None
    note: str = ""


@dataclass
class Row:
    kind: str
    survived: Cell
    healthy: Cell
    contained: Cell
    compositor: Cell
    message: Cell
    leftovers: Cell
    seconds: float
    missed: tuple[int, int] | None = None  # compositor (missed, frames), for a re-judge
    #: The compositor's last misses, each saying where its time went (``recent_misses``).
    misses: list[dict[str, Any]] = field(default_factory=list)
    #: The compositor's compose time (ms: p50, p99, max) and its lead at the end.
    compose_ms: tuple[float, float, float, float] | None = None

    COLUMNS = ("survived", "healthy", "contained", "compositor", "message", "leftovers")

    def cells(self) -> dict[str, Cell]:
        return {name: getattr(self, name) for name in self.COLUMNS}


def judge(kind: Kind, rec: RunRecord, options: Options) -> Row:
    """The row of one run (see the module docstring for what each column means)."""
    cells = {
        "survived": judge_survived(kind, rec),
        "healthy": judge_healthy(kind, rec),
        "contained": judge_contained(kind, rec),
        "compositor": judge_compositor(kind, rec, options.floor_missed_per_frame),
        "message": judge_message(kind, rec),
        "leftovers": Cell(not rec.leftovers, ", ".join(rec.leftovers) or "none"),
    }
    if rec.steps_done < len(kind.steps):
        missed = f"only {rec.steps_done} of {len(kind.steps)} steps happened"
        if rec.t_ready is None:
            missed = "the counter never ticked"
        for name in ("healthy", "contained"):
            cells[name] = Cell(False, f"{missed}; {cells[name].note}")
    comp = (rec.stats or {}).get("compositor") or {}
    missed = (comp.get("missed", 0), comp["frames"]) if comp.get("frames") else None
    misses = list(comp.get("recent_misses") or [])
    compose = None
    if comp.get("frames"):
        keys = ("compose_ms_p50", "compose_ms_p99", "compose_ms_max", "compose_lead_ms")
        compose = tuple(comp.get(k) for k in keys)
    return Row(
        kind.name, seconds=rec.seconds, missed=missed, misses=misses, compose_ms=compose, **cells
    )


def judge_survived(kind: Kind, rec: RunRecord) -> Cell:
    if rec.stop_timed_out:
        return Cell(False, f"did not stop within {STOP_TIMEOUT_S:g} s; killed")
    if rec.early_exit:
        after = (rec.t_exit - rec.t_start) / S
        return Cell(False, f"ended by itself after {after:.1f} s ({describe_rc(rec.rc)})")
    if kills_engine(kind):
        return Cell(None, "n/a (killed)")
    if rec.rc != 0:
        return Cell(False, describe_rc(rec.rc))
    took = (rec.t_exit - rec.t_stop) / S if rec.t_stop else 0.0
    return Cell(True, f"exit 0, stopped in {took:.1f} s")


def kills_engine(kind: Kind) -> bool:
    """Whether a step SIGKILLs ``engine run`` (it then cannot exit 0 or write stats)."""
    return any(
        isinstance(s.action, Signal) and s.action.signum == signal.SIGKILL for s in kind.steps
    )


def describe_rc(rc: int | None) -> str:
    if rc is None:
        return "no exit code"
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
    return f"exit {rc}"


def judge_healthy(kind: Kind, rec: RunRecord) -> Cell:
    ticks = rec.ticks
    if not ticks:
        return Cell(False, "never ticked")
    allowance = REWIND_ALLOWANCE + round(kind.rewind_s * RATE_HZ)
    top = 0
    for tick in ticks:
        if tick.value < top - allowance:
            return Cell(False, f"reset: {top} -> {tick.value}")
        top = max(top, tick.value)
    table = (rec.stats or {}).get("systems") or {}
    counter = table.get("counter.count") or {}
    if counter.get("state") == "disabled":
        reason = counter.get("reason") or {}
        return Cell(False, f"disabled ({reason.get('limit')}): {reason.get('detail', '')[:60]}")
    end = rec.t_stop or rec.t_exit or ticks[-1].t_ns
    recent = sum(1 for t in ticks if end - S <= t.t_ns <= end)
    quiet = (end - ticks[-1].t_ns) / S
    if quiet > 0.5 or recent < MIN_TICKS_PER_S:
        return Cell(
            False, f"{recent} ticks in the last second, the last {quiet:.1f} s before the end"
        )
    if rec.checkpoint_counter is None:
        return Cell(False, f"world lost: {rec.checkpoint_note}")
    last = ticks[-1].value
    if rec.checkpoint_counter < last - allowance:
        return Cell(False, f"checkpoint holds {rec.checkpoint_counter}, counter reached {last}")
    return Cell(True, f"{len(ticks)} ticks, {last} in the world")


def judge_compositor(kind: Kind, rec: RunRecord, floor_per_frame: float | None) -> Cell:
    if kills_engine(kind):
        return Cell(None, "n/a (killed)")
    comp = (rec.stats or {}).get("compositor") or {}
    frames = comp.get("frames") or 0
    if not frames:
        return Cell(False, "no compositor stats")
    missed = comp.get("missed", 0)
    restarts = (rec.stats or {}).get("compositor_restarts") or []
    note = f"{missed} of {frames} missed"
    if kind.rule == "compositor-restarted":  # the fault is the compositor's own
        return Cell(None, f"{note} by the new compositor")
    if restarts:
        return Cell(False, f"{note}; restarted: {restarts[0].get('cause')}")
    if floor_per_frame is None:
        return Cell(None, note)
    allowed = allowed_misses(frames, floor_per_frame)
    return Cell(missed <= allowed, f"{note} (bare loop: {allowed})")


def allowed_misses(frames: int, floor_per_frame: float) -> int:
    """What the bare loop would have missed over ``frames``, with 2 frames of slack for the
    compositor's own start and stop."""
    return math.ceil(floor_per_frame * frames) + 2


def judge_message(kind: Kind, rec: RunRecord) -> Cell:
    if not kind.where:
        return Cell(None, "n/a")
    lines = rec.output.splitlines()
    for cmd in rec.commands:
        lines += cmd[2].splitlines()
    found = []
    for where in kind.where:
        pattern = re.compile(rf"(?<![\w.]){re.escape(where)}(?!\d)")
        line = next((ln.strip() for ln in lines if pattern.search(ln)), None)
        if line is None:
            return Cell(False, f"no line names {where}")
        found.append(line.replace(f"{rec.root}/game/", ""))
    return Cell(True, " | ".join(short(line, 70) for line in found))


def short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# -- containment ----------------------------------------------------------------------------


def faulty_numbers(kind: Kind, rec: RunRecord) -> dict[tuple[str, str], set[int]]:
    """For each faulty unit: the history numbers of its faulty versions (matched by the
    hash of the text as written, with the run's folder filled in)."""
    from engine.loader.history import source_hash

    out = {}
    for (unit_kind, name), texts in kind.faulty.items():
        hashes = {source_hash(t.replace(ROOT, rec.root)) for t in texts}
        versions = rec.history.get(f"{unit_kind}/{name}", {}).get("versions", [])
        out[(unit_kind, name)] = {v["number"] for v in versions if v["sha256"] in hashes}
    return out


def systems_of(rec: RunRecord, module: str) -> dict[str, dict[str, Any]] | None:
    """The module's rows of the game's final systems table (None: no table)."""
    table = (rec.stats or {}).get("systems")
    if table is None:
        return None
    return {k: v for k, v in table.items() if k.split(".", 1)[0] == module}


def still_running(kind: Kind, rec: RunRecord) -> list[str]:
    """Faulty versions running at the end: by the systems table where the unit is a system
    module and the table exists, else by the history (active and not marked bad)."""
    running = []
    for (unit_kind, name), numbers in faulty_numbers(kind, rec).items():
        hist = rec.history.get(f"{unit_kind}/{name}", {})
        rows = systems_of(rec, name) if unit_kind == "systems" else None
        if rows is not None:
            running += [
                f"{key} v{row['version']} ({row['state']})"
                for key, row in rows.items()
                if row["state"] != "disabled" and row["version"] in numbers
            ]
            continue
        active = hist.get("active")
        statuses = {v["number"]: v["status"] for v in hist.get("versions", [])}
        if active in numbers and statuses.get(active) not in ("bad", "error"):
            running.append(f"{name} v{active} active ({statuses.get(active)})")
    return running


def engine_actions(kind: Kind, rec: RunRecord) -> list[str]:
    """What the engine did about the fault, as recorded in the stats and the history."""
    stats = rec.stats or {}
    modules = {name for (k, name) in kind.faulty if k == "systems"}
    modules |= {history_unit(p)[1] for p, _ in kind.texts if p.startswith("systems/")}
    out = []
    for key, row in (stats.get("systems") or {}).items():
        if key.split(".", 1)[0] in modules and row.get("state") == "disabled":
            out.append(f"{key} disabled ({(row.get('reason') or {}).get('limit')})")
    for swap in stats.get("swaps") or []:
        if swap.get("module") not in modules:
            continue
        if not swap.get("ok"):
            out.append(f"{swap['module']} v{swap.get('version')} refused")
        elif swap.get("kind") in ("rollback", "undo"):
            out.append(f"{swap['module']} rolled back to v{swap.get('version')}")
    restarts = stats.get("restarts") or []
    if restarts:
        out.append(f"{len(restarts)} restart(s), first: {restarts[0].get('cause')}")
    if stats.get("crash_loop"):
        out.append("crash loop")
    for (unit_kind, name), numbers in faulty_numbers(kind, rec).items():
        for v in rec.history.get(f"{unit_kind}/{name}", {}).get("versions", []):
            if v["number"] in numbers and v["status"] in ("bad", "error"):
                out.append(f"{name} v{v['number']} {v['status']}")
    return list(dict.fromkeys(out))


def _restarts(rec: RunRecord) -> list[dict]:
    return (rec.stats or {}).get("restarts") or []


def rule_stopped(kind: Kind, rec: RunRecord) -> Cell:
    running = still_running(kind, rec)
    actions = engine_actions(kind, rec)
    if running:
        return Cell(False, "still running: " + ", ".join(running))
    if not actions:
        return Cell(False, "nothing recorded")
    return Cell(True, "; ".join(actions))


#: The share of a CPU the game may use once a runaway import was refused (the counter and
#: the CPU test pattern take a few percent; a loop that escaped its interrupts takes ~100%).
GAME_CPU_AFTER_REFUSAL = 0.5


def rule_refused(kind: Kind, rec: RunRecord) -> Cell:
    actions = "; ".join(engine_actions(kind, rec)) or "left out (no version recorded)"
    if _restarts(rec):
        return Cell(False, actions)
    running = still_running(kind, rec)
    if running:
        return Cell(False, "running: " + ", ".join(running))
    if rec.game_cpu is not None and rec.game_cpu > GAME_CPU_AFTER_REFUSAL:
        return Cell(False, f"the game kept {rec.game_cpu:.0%} of a CPU busy after the refusal")
    for (unit_kind, name), numbers in faulty_numbers(kind, rec).items():
        hist = rec.history.get(f"{unit_kind}/{name}", {})
        ran = [v for v in hist.get("versions", []) if v["number"] in numbers]
        if any(v["status"] != "error" for v in ran):
            return Cell(False, f"{name}: the faulty version ran ({ran[0]['status']}); {actions}")
        healthy = [v["number"] for v in hist.get("versions", []) if v["number"] not in numbers]
        if healthy:  # the version that ran before the fault must still be running
            if unit_kind == "systems":
                rows = systems_of(rec, name) or {}
                ok = any(
                    r["version"] == healthy[0] and r["state"] != "disabled" for r in rows.values()
                )
                if not ok:
                    return Cell(False, f"v{healthy[0]} no longer runs: {_states(rows)}")
            elif hist.get("active") != healthy[0]:
                return Cell(False, f"{name}: v{hist.get('active')} active, not v{healthy[0]}")
    return Cell(True, actions)


def _states(rows: Mapping[str, Mapping[str, Any]]) -> str:
    if not rows:
        return "no systems"
    parts = []
    for key, r in rows.items():
        why = (r.get("reason") or {}).get("detail") or r.get("last_error") or ""
        parts.append(f"{key} v{r['version']} {r['state']} {short(why, 60)}".strip())
    return ", ".join(parts)


def rule_rolled_back(kind: Kind, rec: RunRecord) -> Cell:
    cell = rule_stopped(kind, rec)
    if not cell.ok:
        return cell
    if _restarts(rec):
        return Cell(False, cell.note)
    for (_, name), numbers in faulty_numbers(kind, rec).items():
        rows = systems_of(rec, name) or {}
        if not any(r["state"] != "disabled" and r["version"] not in numbers for r in rows.values()):
            return Cell(False, f"the good version does not run: {_states(rows)}")
    return cell


def rule_runs(kind: Kind, rec: RunRecord) -> Cell:
    table = (rec.stats or {}).get("systems")
    if table is None:
        return Cell(False, "no systems table (the game did not stop cleanly)")
    if _restarts(rec):
        return Cell(False, "; ".join(engine_actions(kind, rec)))
    disabled = {k: v for k, v in table.items() if v.get("state") == "disabled"}
    if disabled:
        return Cell(False, "disabled: " + _states(disabled))
    for name in kind.runs:
        rows = systems_of(rec, name) or {}
        if not any(r.get("calls", 0) > 0 for r in rows.values()):
            return Cell(False, f"{name} never ran: {_states(rows)}")
    note = "all ran"
    checkpoint_ms = ((rec.stats or {}).get("game") or {}).get("checkpoint_ms_max")
    if checkpoint_ms:
        note += f"; checkpoint up to {checkpoint_ms:.0f} ms"
    return Cell(True, note)


def rule_finished(kind: Kind, rec: RunRecord) -> Cell:
    """Runs (nothing disabled or restarted), and every call of ``fault`` finished its work:
    none was interrupted after its C call (the count it wrote against its calls)."""
    cell = rule_runs(kind, rec)
    if not cell.ok:
        return cell
    calls = sum(r.get("calls", 0) for r in (systems_of(rec, "fault") or {}).values())
    finished = rec.finished
    note = f"{finished} of {calls} calls finished their work"
    return Cell(calls > 0 and finished >= calls - 1, note)


def rule_light_checkpoints(kind: Kind, rec: RunRecord) -> Cell:
    cell = rule_runs(kind, rec)
    spent = ((rec.stats or {}).get("game") or {}).get("checkpoint_ms_max") or 0.0
    if cell.ok and spent > FRAME_MS:
        return Cell(False, f"a checkpoint took {spent:.0f} ms of the frame thread")
    return cell


def rule_harmless(kind: Kind, rec: RunRecord) -> Cell:
    table = (rec.stats or {}).get("systems")
    if table is None:
        return Cell(False, "no systems table (the game did not stop cleanly)")
    disabled = {k: v for k, v in table.items() if v.get("state") == "disabled"}
    if _restarts(rec) or disabled:
        return Cell(False, "; ".join(engine_actions(kind, rec)) or _states(disabled))
    return Cell(True, "nothing to do")


def rule_swapped(kind: Kind, rec: RunRecord) -> Cell:
    for unit_kind, name in kind.faulty:
        hist = rec.history.get(f"{unit_kind}/{name}", {})
        latest = max((v["number"] for v in hist.get("versions", [])), default=None)
        rows = systems_of(rec, name) or {}
        if not any(r["version"] == latest and r["state"] != "disabled" for r in rows.values()):
            return Cell(False, f"v{latest} does not run: {_states(rows)}")
    if _restarts(rec):
        return Cell(False, "; ".join(engine_actions(kind, rec)))
    return Cell(True, "the new version runs")


def rule_thread_stopped(kind: Kind, rec: RunRecord) -> Cell:
    alive = rec.markers.get("thread.alive")
    end = rec.t_stop or rec.t_exit
    if alive is None:
        return Cell(True, "the thread never ran")
    if end is not None and alive < end - S:
        return Cell(True, f"thread stopped {(end - alive) / S:.1f} s before the end")
    return Cell(False, "the thread still spun at the end")


def rule_out_of_memory(kind: Kind, rec: RunRecord) -> Cell:
    cell = rule_stopped(kind, rec)
    text = " ".join(
        [cell.note]
        + [
            str((r.get("reason") or {}).get("detail"))
            for r in ((rec.stats or {}).get("systems") or {}).values()
        ]
        + [str(r.get("cause")) for r in _restarts(rec)]
    )
    if cell.ok and "memory" not in text.lower():
        return Cell(False, f"not reported as out of memory: {cell.note}")
    return cell


def rule_rewound(kind: Kind, rec: RunRecord) -> Cell:
    rewinds = [c for c in rec.commands if c[0] and c[0][0] == "rewind"]
    if not rewinds:
        return Cell(False, "no rewind was run")
    args, rc, out, t = rewinds[-1]
    if rc != 0:
        return Cell(False, f"`engine {' '.join(args[:1])}` failed ({rc}): {short(out.strip(), 60)}")
    after = [tick for tick in rec.ticks if tick.t_ns > t]
    if len(after) < RATE_HZ // 2:
        return Cell(False, f"the counter did not come back ({len(after)} ticks after the rewind)")
    return Cell(True, f"rewound; the counter went on from {after[0].value}")


def rule_checkpoints(kind: Kind, rec: RunRecord) -> Cell:
    game = (rec.stats or {}).get("game") or {}
    if _restarts(rec):
        return Cell(False, "; ".join(engine_actions(kind, rec)))
    if game.get("checkpoints", 0) < 2:
        return Cell(False, f"{game.get('checkpoints', 0)} checkpoints taken")
    if rec.checkpoint_counter is None:
        return Cell(False, rec.checkpoint_note)
    return Cell(True, f"{game['checkpoints']} checkpoints; {'; '.join(engine_actions(kind, rec))}")


def rule_untouched(kind: Kind, rec: RunRecord) -> Cell:
    stats = rec.stats or {}
    if rec.early_exit or not stats:
        return Cell(False, f"engine run ended ({describe_rc(rec.rc)})")
    if stats.get("compositor_restarts"):
        return Cell(False, f"compositor restarted: {stats['compositor_restarts'][0].get('cause')}")
    return Cell(True, "; ".join(engine_actions(kind, rec)) or "engine unharmed")


def rule_waited_for_edit(kind: Kind, rec: RunRecord) -> Cell:
    stats = rec.stats or {}
    restarts = stats.get("restarts") or []
    if not restarts:
        return Cell(False, "no restart recorded")
    if restarts[0].get("action") != "wait-for-edit":
        return Cell(False, f"{restarts[0].get('action')}: {restarts[0].get('message')}")
    if len(restarts) > 1 or stats.get("crash_loop"):
        return Cell(False, f"{len(restarts)} restarts; crash loop: {stats.get('crash_loop')}")
    if not rec.ticks:
        return Cell(False, "no game ran after the edit")
    return Cell(True, "waited for game.py; the fixed game runs")


def rule_compositor_restarted(kind: Kind, rec: RunRecord) -> Cell:
    stats = rec.stats or {}
    if rec.early_exit or not stats:
        return Cell(False, f"engine run ended ({describe_rc(rec.rc)})")
    restarts = stats.get("compositor_restarts") or []
    if not restarts:
        return Cell(False, "the compositor was not restarted")
    if stats.get("compositor_failure"):
        return Cell(False, stats["compositor_failure"])
    return Cell(True, f"restarted: {restarts[0].get('cause')}")


def rule_watching(kind: Kind, rec: RunRecord) -> Cell:
    if "probe.ran" not in rec.markers:
        return Cell(False, "a module saved after the fault never ran (edits ignored)")
    if (rec.stats or {}).get("crash_loop"):
        return Cell(False, "crash loop")
    return Cell(True, "; ".join(["edits still load", *engine_actions(kind, rec)]))


def rule_removed(kind: Kind, rec: RunRecord) -> Cell:
    table = (rec.stats or {}).get("systems")
    if table is None:
        return Cell(False, "no systems table (the game did not stop cleanly)")
    rows = systems_of(rec, "fault")
    if rows:
        return Cell(False, f"still scheduled: {_states(rows)}")
    if _restarts(rec):
        return Cell(False, "; ".join(engine_actions(kind, rec)))
    if "probe.ran" not in rec.markers:
        return Cell(False, "unloaded, but a module saved later never ran (edits ignored)")
    return Cell(True, "unloaded; edits still load")


def rule_no_orphans(kind: Kind, rec: RunRecord) -> Cell:
    if not rec.children:
        return Cell(False, "the child was never started")
    if rec.children_alive:
        return Cell(False, f"child {rec.children_alive[0]} outlived the engine")
    return Cell(True, "the child ended with the game")


def rule_clean_stop(kind: Kind, rec: RunRecord) -> Cell:
    stats = rec.stats or {}
    if rec.rc != 0:
        return Cell(False, describe_rc(rec.rc))
    if not (stats.get("compositor") or {}).get("frames"):
        return Cell(False, "no stats written")
    if "systems" not in stats:
        return Cell(False, "the game's own stats are missing (it did not stop cleanly)")
    if _restarts(rec):
        return Cell(False, "; ".join(engine_actions(kind, rec)))
    return Cell(True, "stopped cleanly, stats written")


def rule_children_follow(kind: Kind, rec: RunRecord) -> Cell:
    if rec.t_stop is None or not rec.ticks:
        return Cell(False, "no kill happened")
    late = (rec.ticks[-1].t_ns - rec.t_stop) / S
    if late > 1.0:
        return Cell(False, f"the game ran on {late:.1f} s after engine run died")
    if rec.alive_after_1s:
        return Cell(False, "alive 1 s after engine run died: " + ", ".join(rec.alive_after_1s))
    return Cell(True, f"the game stopped {max(late, 0):.2f} s after engine run died")


#: Containment rules: name -> (what it checks, the check).
RULES: dict[str, tuple[str, Callable[[Kind, RunRecord], Cell]]] = {
    "stopped": ("the faulty version no longer runs, and the engine recorded why", rule_stopped),
    "refused": ("the faulty version never ran; the one before it still runs", rule_refused),
    "rolled-back": ("the faulty version was stopped and the good one runs", rule_rolled_back),
    "runs": ("valid code: it loads and runs; nothing disabled or restarted", rule_runs),
    "harmless": ("nothing disabled or restarted", rule_harmless),
    "finished": (
        "kept on, and every call finished its work after its C call",
        rule_finished,
    ),
    "light-checkpoints": (
        "runs, and no checkpoint takes a frame's time on the frame thread",
        rule_light_checkpoints,
    ),
    "swapped": ("the new version runs despite the old one's hook", rule_swapped),
    "thread-stopped": ("the runaway thread no longer runs at the end", rule_thread_stopped),
    "out-of-memory": ("stopped, and reported as out of memory", rule_out_of_memory),
    "rewound": ("`engine rewind` brought the world back", rule_rewound),
    "checkpoints": ("checkpoints go on (without what cannot be saved)", rule_checkpoints),
    "untouched": ("supervisor and compositor unharmed", rule_untouched),
    "waited-for-edit": (
        "no game until game.py is saved (no crash loop); then it runs",
        rule_waited_for_edit,
    ),
    "compositor-restarted": (
        "the compositor is restarted, the game with it from its checkpoint",
        rule_compositor_restarted,
    ),
    "watching": ("hot reload still works after the fault", rule_watching),
    "removed": ("the module is unloaded; hot reload still works", rule_removed),
    "no-orphans": ("a child the game started does not outlive the engine", rule_no_orphans),
    "clean-stop": ("rc 0, stats written, nothing restarted", rule_clean_stop),
    "children-follow": (
        "every process of the run ends within 1 s of engine run's death",
        rule_children_follow,
    ),
}


def judge_contained(kind: Kind, rec: RunRecord) -> Cell:
    return RULES[kind.rule][1](kind, rec)


# -- the bench ---------------------------------------------------------------------------------


def run_kind(kind: Kind, options: Options | None = None) -> Row:
    """Run one kind in a real ``engine run`` and judge it. Leaves nothing running."""
    options = options or Options()
    rec = Run(kind, options).execute()
    return judge(kind, rec, options)


def measure_floor(seconds: float) -> float:
    """Frames a bare pacing loop misses per frame on this machine now (bench/compositor.py)."""
    from compositor import run_floor

    from engine.compositor.process import CompositorConfig

    result = run_floor(seconds, CompositorConfig().compose_lead_ns)
    return result["missed"] / max(1, result["frames"])


def totals(rows: list[Row]) -> dict[str, tuple[int, int]]:
    """Per column: (passed, judged), kinds where a column does not apply left out."""
    out = {}
    for name in Row.COLUMNS:
        judged = [r.cells()[name].ok for r in rows if r.cells()[name].ok is not None]
        out[name] = (sum(judged), len(judged))
    return out


def print_table(rows: list[Row], floor: float | None, wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fault suite: each kind in a real engine run", show_lines=False)
    table.add_column("kind", no_wrap=True)
    for name in Row.COLUMNS:
        table.add_column(name, overflow="fold", max_width=38)
    table.add_column("s", justify="right")
    for row in rows:
        cells = [row.kind]
        for cell in row.cells().values():
            mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]-[/]"}[cell.ok]
            cells.append(f"{mark} {escape(cell.note)}")
        cells.append(f"{row.seconds:.0f}")
        table.add_row(*cells)
    console = Console(width=max(200, shutil.get_terminal_size().columns))
    console.print(table)
    full = sum(all(c.ok is not False for c in r.cells().values()) for r in rows)
    counts = ", ".join(f"{name} {ok}/{n}" for name, (ok, n) in totals(rows).items())
    console.print(f"{full}/{len(rows)} kinds passed every column; {counts}")
    if floor is not None:
        console.print(
            f"bare pacing loop: {floor * 100:.2f} % of frames missed (worst of the start "
            f"and the end of the bench); bench took {wall_s:.0f} s; load average now "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
    holes = [r for r in rows if r.kind in KNOWN_HOLES]
    if holes:
        console.print("known holes (KNOWN_HOLES):")
        for r in holes:
            console.print(f"  {r.kind}: {KNOWN_HOLES[r.kind]}")


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", help="comma-separated kinds to run (default: all)")
    parser.add_argument("--fast", action="store_true", help="only the kinds pytest runs")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--list", action="store_true", help="list the kinds and exit")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder")
    parser.add_argument("--size", default=Options.size, help="per-eye render size")
    parser.add_argument(
        "--render",
        action="store_true",
        help="every kind with the render system (default: the shader kinds only)",
    )
    parser.add_argument("--floor-seconds", type=float, default=3.0)
    parser.add_argument(
        "--bomb-gb", type=float, default=None, help="where the bomb stops (default: 2x memory)"
    )
    args = parser.parse_args(argv)
    catalogue = kinds(args.bomb_gb)
    if args.list:
        for k in catalogue:
            flags = " [fast]" if k.fast else ""
            hole = f"  (known hole: {KNOWN_HOLES[k.name]})" if k.name in KNOWN_HOLES else ""
            print(f"{k.name:<24} {k.what}; contained = {RULES[k.rule][0]}{flags}{hole}")
        return 0
    chosen = catalogue
    if args.kinds:
        names = [n.strip() for n in args.kinds.split(",") if n.strip()]
        by_name = {k.name: k for k in catalogue}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            parser.error(f"unknown kinds: {', '.join(unknown)} (see --list)")
        chosen = [by_name[n] for n in names]
    if args.fast:
        chosen = [k for k in chosen if k.fast]

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with `&`
    t0 = time.monotonic()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    log(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work on this "
        f"machine shows in every column); bare pacing loop for {args.floor_seconds:g} s ..."
    )
    floor = measure_floor(args.floor_seconds)
    options = Options(
        size=args.size,
        render=args.render,
        keep=args.keep,
        floor_missed_per_frame=floor,
        report=log,
    )
    rows: list[Row] = []
    try:
        for i, kind in enumerate(chosen, 1):
            log(f"[{i}/{len(chosen)}] {kind.name}: {kind.what}")
            row = run_kind(kind, options)
            rows.append(row)
            verdict = " ".join(
                f"{name}={'-' if c.ok is None else 'ok' if c.ok else 'FAIL'}"
                for name, c in row.cells().items()
            )
            log(f"    {row.seconds:.1f} s: {verdict}")
        options.floor_missed_per_frame = max(floor, measure_floor(args.floor_seconds))
    except KeyboardInterrupt:
        log("interrupted: the runs so far")
    for row in rows:  # against the worse of the two floors
        if row.missed is not None and row.compositor.ok is not None:
            missed, frames = row.missed
            allowed = allowed_misses(frames, options.floor_missed_per_frame)
            row.compositor = Cell(
                missed <= allowed, f"{missed} of {frames} missed (bare loop: {allowed})"
            )
    print_table(rows, options.floor_missed_per_frame, time.monotonic() - t0)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "floor_missed_per_frame": options.floor_missed_per_frame,
                    "totals": totals(rows),
                    "known_holes": KNOWN_HOLES,
                    "rows": [asdict(r) for r in rows],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

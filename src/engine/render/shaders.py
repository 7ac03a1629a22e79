"""Live-editable GLSL shader programs, versioned in the project history.

A *program* has a name (``basic``) and two stages, each read from the first file found:

1. the project's ``shaders/<name>.vert`` (vertex) or ``shaders/<name>.frag`` (fragment);
2. the project's ``shaders/<name>.glsl``: both stages in one file, compiled twice with
   ``#define VERTEX_SHADER`` or ``#define FRAGMENT_SHADER`` inserted after ``#version``;
3. the same names among the built-in shaders (``engine/render/shaders/``);
4. the built-in ``basic`` stage, so a project may write only a fragment shader.

Edits arrive from a watcher thread through :meth:`ShaderLibrary.queue_change` and are
applied on the GL thread, between frames, by :meth:`ShaderLibrary.apply_pending`. A new
program is compiled and linked *beside* the running one and swapped in only if both
stages compile and link, so a broken edit never reaches the screen: the last good program
keeps drawing, the version is marked ``error`` in the history, and the driver's message is
printed and returned with the file and line it points at.

Every project shader file is a history unit (kind ``shaders``, name = file name);
:meth:`ShaderLibrary.undo` / :meth:`ShaderLibrary.redo` move its active version and swap.

A shader that never ends hangs inside the driver, where no watchdog reaches. While the
GPU may be running the library's programs (:meth:`ShaderLibrary.drawing`), the game's
running-now words name the project shader stage most likely at fault: of the programs
handed out, the stage whose version was recorded last, with the line of its first loop. A
hang then is blamed on that version; the supervisor marks it bad, and the restarted game
draws with the version before it (or the built-in), as for a system module. A drawing
interrupted (the watchdog stopping the render system) after more than ``draw_limit_ns``
while a version swapped in live (an edit, not a start-up load: on a busy machine a proven
shader's frame can be slow too) was named in its first :data:`WATCHED_DRAWS` draws leaves
that version out in this process too: the next :meth:`ShaderLibrary.apply_pending` marks
it bad and swaps the version before it in. Drawings that finished over the limit do the
same once there are :data:`SLOW_DRAWS_TO_BLAME` of them.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

# context first: it picks headless EGL before pyglet.gl is loaded by anyone.
from engine.render.context import gl, offscreen_context

# isort: split
from pyglet.graphics.shader import Shader, ShaderException, ShaderProgram

from engine.contracts.handoff import CodeKind, RunningNow
from engine.loader.history import ProjectHistory, VersionHistory, VersionStatus, report_to_stderr
from engine.loader.loader import leave_out

BUILTIN_DIR = Path(__file__).with_name("shaders")
#: File suffix -> the stages it provides.
STAGE_SUFFIXES = {".vert": ("vertex",), ".frag": ("fragment",), ".glsl": ("vertex", "fragment")}
STAGES = ("vertex", "fragment")
_STAGE_SUFFIX = {"vertex": ".vert", "fragment": ".frag"}
_STAGE_DEFINE = {"vertex": "VERTEX_SHADER", "fragment": "FRAGMENT_SHADER"}
DEFAULT_PROGRAM = "basic"
#: Draws a new shader version is watched for (a second at 90 Hz): a drawing over the limit
#: in this time (finished or interrupted) leaves it out; later, a slow frame is not its
#: fault alone.
WATCHED_DRAWS = 90
#: The longest a drawing may take before it blames the shader (the built-in render
#: system's hard limit).
DRAW_LIMIT_NS = 50_000_000
#: Drawings that *finished* over the limit it takes to blame a new version: a shader too
#: heavy for the frame is slow every draw, while one slow draw is also what a busy machine
#: or the driver compiling the program at its first use looks like. One interrupted
#: drawing is enough.
SLOW_DRAWS_TO_BLAME = 2

# Info-log line formats: Mesa "0:12(3): error: ...", NVIDIA "0(12) : error C0000: ...",
# AMD/Intel "ERROR: 0:12: ...".
_LOG_LINE = re.compile(r"^\s*(?:ERROR:\s*)?\d+[:(](\d+)\)?(?:\(\d+\))?\s*:\s*(.*)$")
# Names a link error quotes: Mesa `u_model', NVIDIA (named u_model) or "vec3 shade(vec3);",
# others 'u_model' or "u_model".
_QUOTED_NAME = re.compile(
    r"`(\w+)'|\(named (\w+)\)|\"[\w\s]*?\b(\w+)\s*\([^\"]*\)\s*;?\"|'(\w+)'|\"(\w+)\""
)
# NVIDIA heads each stage's part of a link log with "Vertex info" / "Fragment info".
_STAGE_HEADING = re.compile(r"^\s*(vertex|fragment)\s+info\b", re.IGNORECASE)
# GLSL comments (kept as newlines, so line numbers hold) and the loop keywords.
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_LOOP = re.compile(r"\b(?:for|while|do)\b")


@dataclass(frozen=True)
class ShaderError:
    """Why a shader did not compile or link: where (file, line) and the driver's words.

    ``line`` is the line in ``path`` as the user sees it (1-based), or ``None`` when the
    driver gave none (link errors). ``log`` is the driver's whole info log.
    """

    path: Path
    line: int | None
    message: str
    log: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else f"{self.path}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ShaderSwap:
    """What happened to one program after an edit, an undo or a redo.

    ``ok`` means the new program is drawing now; otherwise ``error`` says why and the
    previous program is still drawing. ``versions`` maps each project file involved to the
    history version that was tried. ``event_time_ns`` is when the watcher saw the edit
    (``None`` for undo/redo); ``applied_ns`` when the swap (or the refusal) happened.
    """

    program: str
    ok: bool
    versions: dict[str, int] = field(default_factory=dict)
    error: ShaderError | None = None
    event_time_ns: int | None = None
    applied_ns: int = 0


@dataclass(frozen=True)
class _Stage:
    """The source one stage of a program was (or is about to be) built from."""

    stage: str
    path: Path
    source: str
    version: int | None = None  # history version; None for built-ins

    @property
    def file_name(self) -> str:
        return self.path.name

    def text(self) -> tuple[str, Callable[[int], int]]:
        """The text to compile, and a map from compiled line numbers back to the file's.

        pyglet strips leading blank lines (and needs ``#version`` first); a ``.glsl`` file
        gets one ``#define`` line inserted after ``#version``. Both shift line numbers.
        """
        leading = len(self.source) - len(self.source.lstrip())
        skipped = self.source[:leading].count("\n")
        if self.path.suffix != ".glsl":
            return self.source, lambda n: n + skipped
        first, _, rest = self.source.lstrip().partition("\n")
        text = f"{first}\n#define {_STAGE_DEFINE[self.stage]} 1\n{rest}"
        return text, lambda n: (n - 1 if n > 2 else n) + skipped


@dataclass
class _Suspect:
    """The project stage a hang while drawing with one program is blamed on."""

    program: str
    stage: _Stage
    recorded: float  # when its version was recorded: the newest change is the likeliest fault
    line: int  # its first loop (0: none)
    running_id: int = 0  # its name-table entry (0: not registered yet)
    live: bool = False  # swapped in while the game ran (an edit, undo, redo), not loaded
    draws: int = 0  # drawings finished while it was named
    overran_ns: int = 0  # how long the drawing that left it out took
    slow: int = 0  # drawings that finished over the limit
    end_seen: bool = True  # False: that drawing's way out was cut short (overran_ns: at most)
    interrupted: bool = True  # False: that drawing finished, only too slowly


@dataclass
class _Running:
    """A program that is drawing now, the stages it was built from, and which of them a
    hang while it draws is blamed on (``None``: only built-in stages)."""

    program: ShaderProgram
    stages: dict[str, _Stage]
    suspect: _Suspect | None = None


class _Drawing:
    """One use of :meth:`ShaderLibrary.drawing`: a context manager of its own, not a
    generator's, so a way out cut short leaves nothing suspended to run later (a generator
    closed whenever it is collected would put back a stale running-now word mid-frame)."""

    __slots__ = ("library", "frame", "lasti", "before", "t0")

    def __init__(self, library: ShaderLibrary) -> None:
        self.library = library
        self.frame: FrameType | None = None  # where the outermost drawing was entered
        self.lasti = -1
        self.before = 0  # the running-now word before
        self.t0 = 0

    def __enter__(self) -> None:
        self.library._enter_drawing(self, sys._getframe(1))

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.library._leave_drawing(self, failed=kind is not None)

    def encloses(self, frame: FrameType) -> bool:
        """Whether code entering a drawing at ``frame`` runs inside this open one: the
        frame that entered this one is ``frame`` or a caller of it, still running. The
        same ``with`` entered again (a loop) is not inside itself; another ``with`` in the
        function that entered this one is taken to be (it cannot be told from one after
        a way out cut short there, which only a function that catches the interrupt and
        goes on drawing would see)."""
        mine = self.frame
        if mine is frame:
            return frame.f_lasti != self.lasti
        f = frame.f_back
        while f is not None:
            if f is mine:
                return True
            f = f.f_back
        return False


def first_loop_line(source: str) -> int:
    """The 1-based line of the first ``for``/``while``/``do`` outside comments; 0 if none.

    Where a hang inside the driver is reported: the driver cannot say which line ran away,
    and a shader without a loop does not run long enough to hang.
    """
    code = _COMMENT.sub(lambda m: "\n" * m.group().count("\n"), source)
    found = _LOOP.search(code)
    return code.count("\n", 0, found.start()) + 1 if found else 0


class _BuildFailed(Exception):
    def __init__(self, error: ShaderError, stage: _Stage | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.stage = stage  # the stage at fault; None for a link error


def parse_info_log(log: str) -> tuple[int | None, str]:
    """The line number and message of the first error in a GLSL info log.

    Understands Mesa's ``0:12(3): error: ...``, NVIDIA's ``0(12) : error ...`` and
    AMD/Intel's ``ERROR: 0:12: ...``. Without a recognisable line, returns ``None`` and the
    first non-empty line of the log.
    """
    found: list[tuple[int, str]] = []
    for raw in log.splitlines():
        m = _LOG_LINE.match(raw)
        if m:
            found.append((int(m.group(1)), m.group(2).strip()))
    for line, message in found:
        if "error" in message.lower():
            return line, message
    if found:
        return found[0]
    first = next((s.strip() for s in log.splitlines() if s.strip()), "unknown shader error")
    return None, first


def names_in_link_log(log: str) -> list[str]:
    """The names a link error log quotes (uniforms, varyings, functions), in order.

    Understands Mesa's ``uniform `u_model' declared as type ...``, NVIDIA's ``... for
    uniform (named u_model)`` and ``call to undefined function "vec3 shade(vec3);"``,
    and plain quotes. GLSL keywords and type names are left out.
    """
    found = []
    for match in _QUOTED_NAME.finditer(log):
        name = next(g for g in match.groups() if g)
        if name not in _GLSL_WORDS and name not in found:
            found.append(name)
    return found


#: Quoted words in link logs that name no declaration of the user's.
_GLSL_WORDS = frozenset(
    "float int uint bool vec2 vec3 vec4 ivec2 ivec3 ivec4 uvec2 uvec3 uvec4 bvec2 bvec3 bvec4 "
    "mat2 mat3 mat4 sampler2D samplerCube main in out uniform".split()
)


def first_use_line(source: str, name: str) -> int:
    """The 1-based line where ``name`` first appears as a whole word outside comments;
    0 if it does not."""
    code = _COMMENT.sub(lambda m: "\n" * m.group().count("\n"), source)
    found = re.search(rf"(?<![\w.]){re.escape(name)}\b", code)
    return code.count("\n", 0, found.start()) + 1 if found else 0


def _link_error_lines(log: str, stages: list[_Stage]) -> list[tuple[_Stage, int]]:
    """Where a link error points, most likely first: ``(stage, file line)`` pairs.

    A line the driver gives under a stage heading (NVIDIA) is taken at its word; else each
    name the log quotes is looked up in each stage, in the order given (new stages first).
    """
    by_stage = {s.stage: s for s in stages}
    heading: _Stage | None = None
    for raw in log.splitlines():
        m = _STAGE_HEADING.match(raw)
        if m:
            heading = by_stage.get(m.group(1).lower())
            continue
        m = _LOG_LINE.match(raw)
        if heading is not None and m and "error" in m.group(2).lower():
            return [(heading, heading.text()[1](int(m.group(1))))]
    found = []
    for name in names_in_link_log(log):
        for stage in stages:
            line = first_use_line(stage.source, name)
            if line:
                found.append((stage, line))
        if found:
            return found
    return found


def _driver_log(exc: BaseException) -> str:
    """The driver's info log inside one of pyglet's ShaderException messages."""
    text = str(exc)
    for marker in ("shader: \n", "Error linking shader program:\n"):
        if marker in text:
            return text.split(marker, 1)[1].strip()
    return text.strip()


def _compile(stages: dict[str, _Stage]) -> ShaderProgram:
    """Compile both stages and link them; raises :class:`_BuildFailed` saying where.

    A program :func:`prebuild` made from the same texts is taken instead (once).
    """
    if gl.current_context is None:
        offscreen_context()
    ready = _prebuilt.pop(_texts(stages), None)
    if ready is not None:
        return ready
    shaders = []
    for stage in stages.values():
        text, to_file_line = stage.text()
        try:
            shaders.append(Shader(text, stage.stage))
        except ShaderException as exc:  # a BaseException: must be caught by name
            log = _driver_log(exc)
            line, message = parse_info_log(log)
            line = to_file_line(line) if line is not None else None
            raise _BuildFailed(ShaderError(stage.path, line, message, log), stage) from None
    try:
        return ShaderProgram(*shaders)
    except ShaderException as exc:
        log = _driver_log(exc)
        _, message = parse_info_log(log)
        # Which file to name is up to the caller (it knows which stage is new).
        raise _BuildFailed(ShaderError(stages["fragment"].path, None, message, log), None) from None
    finally:
        for shader in shaders:
            shader.delete()  # a linked program keeps its own copy


def _placed_link_error(error: ShaderError, new: list[_Stage], stages: list[_Stage]) -> ShaderError:
    """A link error with the file and line it points at, preferring the new stages; where
    it points into the other stage too (a mismatch between two), the message says so."""
    order = new + [s for s in stages if s not in new]
    places = _link_error_lines(error.log, order)
    if not places:
        return replace(error, path=new[0].path)  # no line: name the new file
    (stage, line), others = places[0], places[1:]
    message = error.message
    also = [f"{s.file_name}:{n}" for s, n in others if s.path != stage.path or n != line]
    if also:
        message += f" (also {', '.join(also)})"
    return replace(error, path=stage.path, line=line, message=message)


class ShaderLibrary:
    """The shader programs of one project (or the built-ins alone), live-editable.

    Thread use: :meth:`queue_change` and :meth:`handles` from any thread; everything else
    on the thread that owns the GL context, between frames.

    Example:
        >>> shaders = ShaderLibrary(Path("my_game"))              # doctest: +SKIP
        >>> shaders.program("basic").use()                         # doctest: +SKIP
        >>> shaders.queue_change(Path("my_game/shaders/basic.frag"), 0)  # doctest: +SKIP
        >>> [swap.ok for swap in shaders.apply_pending()]                  # doctest: +SKIP
        [True]
    """

    def __init__(
        self,
        project_dir: Path | None = None,
        history: ProjectHistory | None = None,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        report: Callable[[str], None] = report_to_stderr,
        draw_limit_ns: int = DRAW_LIMIT_NS,
    ) -> None:
        """``history`` defaults to the project's own; without a project only built-ins exist.
        ``report`` takes each message (a failed compile, a missing program, a deleted file).
        ``draw_limit_ns``: see :meth:`drawing`."""
        self.project_dir = Path(project_dir) if project_dir is not None else None
        self.shader_dir = self.project_dir / "shaders" if self.project_dir is not None else None
        if history is None and self.project_dir is not None:
            history = ProjectHistory(self.project_dir)
        self.history = history
        self._clock = clock
        self.report = report
        self._running: dict[str, _Running] = {}
        self._unknown: set[str] = set()  # names reported as missing, to report once
        self._errors: dict[str, ShaderError] = {}
        self._lock = threading.Lock()
        self._pending: dict[Path, int] = {}
        #: The game's running-now words (see :meth:`drawing`); ``None``: nobody watches.
        self.running: RunningNow | None = None
        self.draw_limit_ns = draw_limit_ns
        self._open: _Drawing | None = None  # the outermost drawing, until it is left
        self._named: _Suspect | None = None  # what the running-now word names while drawing
        self._overran: list[_Suspect] = []  # to leave out at the next apply_pending

    # -- lookups ----------------------------------------------------------------------
    def program(self, name: str) -> ShaderProgram:
        """The program drawing as ``name`` now, built on first use.

        A name with no shader files, or whose files have never compiled, gets the
        ``basic`` program (reported once). Raises ``RuntimeError`` only if the built-in
        ``basic`` program itself cannot be built.
        """
        running = self._running.get(name)
        if running is not None:
            if self._open is not None:
                self._suspect(running)
            return running.program
        if name not in self._unknown:
            self._update(name, changed=set(), event_time_ns=None)
            running = self._running.get(name)
            if running is not None:
                if self._open is not None:
                    self._suspect(running)
                return running.program
            self._unknown.add(name)
            self.report(
                f"engine: shader program {name!r} unavailable; drawing with {DEFAULT_PROGRAM!r}"
            )
        if name == DEFAULT_PROGRAM:
            raise RuntimeError(f"the built-in {DEFAULT_PROGRAM!r} shader program does not build")
        return self.program(DEFAULT_PROGRAM)

    def drawing(self) -> _Drawing:
        """Draw inside this: from the first draw call until the pixels have arrived.

        While inside, each program :meth:`program` hands out is *in use*, and the calling
        thread's running-now word (:attr:`running`, if set) names the project shader stage
        most likely at fault should the GPU never finish: among the programs in use, the
        stage whose version was recorded last. Built-in stages are never named. On leaving,
        the word goes back to what it held before. Nested use is part of the outer one.

        A drawing that took more than :attr:`draw_limit_ns`, while the stage named was
        swapped in live and is in its first :data:`WATCHED_DRAWS` draws, marks that stage
        for leaving out: :meth:`apply_pending` does it. That holds for a drawing that
        finished (the watchdog lets an essential render system's GPU wait return and the
        frame be shown) and for one an exception left (the watchdog's interrupt of a
        render system that is not essential, or of a runaway after the wait); the
        exception goes on unchanged.

        Leaving may never run: an exception can land at the first Python line of the way
        out (a repeat :class:`~engine.scheduler.watchdog.Overrun` for code that swallowed
        the first, a signal's handler raising). The next :meth:`apply_pending` or drawing
        then finds this one still open, though the code that entered it is no longer
        running, and finishes it as interrupted (its end unseen: timed up to then); a
        drawing starts afresh, rather than taking itself for part of a stale one and
        naming nothing.
        """
        return _Drawing(self)

    def _enter_drawing(self, drawing: _Drawing, frame: FrameType) -> None:
        open_ = self._open
        if open_ is not None:
            if open_.encloses(frame):
                return  # nested: part of the outer drawing
            self._cut_short(open_)
        running = self.running
        drawing.frame, drawing.lasti = frame, frame.f_lasti
        drawing.before = running.now() if running is not None else 0
        drawing.t0 = self._clock()
        self._open, self._named = drawing, None

    def _leave_drawing(self, drawing: _Drawing, failed: bool) -> None:
        if self._open is not drawing:
            return  # nested, or finished as cut short meanwhile
        try:
            elapsed = self._clock() - drawing.t0
            if failed or elapsed > self.draw_limit_ns:
                self._note_overrun(elapsed, interrupted=failed)
            if not failed and self._named is not None:
                self._named.draws += 1
        finally:
            self._finish(drawing)

    def _cut_short(self, drawing: _Drawing) -> None:
        """Finish ``drawing``, whose way out an exception cut short (see :meth:`drawing`)."""
        try:
            self._note_overrun(self._clock() - drawing.t0, end_seen=False)
        finally:
            # Not the word: what ran after the drawing has stored its own since.
            self._finish(drawing, restore=False)

    def _finish(self, drawing: _Drawing, restore: bool = True) -> None:
        self._open, self._named = None, None
        drawing.frame = None  # a cut-short one held its caller's frame until now
        if restore and self.running is not None:
            self.running.leave(drawing.before)

    def _note_overrun(
        self, elapsed_ns: int, end_seen: bool = True, interrupted: bool = True
    ) -> None:
        # May run as an interrupt unwinds the render system: only note it, GL work later.
        named = self._named
        if named is None or not named.live or elapsed_ns <= self.draw_limit_ns:
            return
        if named.draws >= WATCHED_DRAWS:
            return
        if not interrupted and end_seen:
            named.slow += 1
            if named.slow < SLOW_DRAWS_TO_BLAME:
                return
        if named.overran_ns == 0:
            named.overran_ns = elapsed_ns
            named.end_seen = end_seen
            named.interrupted = interrupted
            self._overran.append(named)

    def _suspect(self, program: _Running) -> None:
        """``program`` is in use: name its suspect if it is newer than the one named."""
        suspect = program.suspect
        if suspect is None:
            return
        if self._named is not None and self._named.recorded >= suspect.recorded:
            return
        self._named = suspect
        running = self.running
        if running is None:
            return
        if not suspect.running_id or not running.is_fresh(suspect.running_id):
            stage = suspect.stage
            suspect.running_id = running.register(
                CodeKind.SHADER,
                stage.file_name,
                stage.version,
                None,
                stage.path,
                suspect.line,
                user=True,
            )
        running.enter(suspect.running_id)

    def _suspect_of(self, name: str, stages: dict[str, _Stage]) -> _Suspect | None:
        """The project stage of ``stages`` recorded last (``None``: all built-in)."""
        found = []
        for stage in stages.values():
            unit = self._unit(stage.path)
            if unit is None or stage.version is None:
                continue
            recorded = unit.get(stage.version).time
            found.append(_Suspect(name, stage, recorded, first_loop_line(stage.source)))
        return max(found, key=lambda s: (s.recorded, s.stage.version or 0), default=None)

    def rebuild(self) -> None:
        """Build every running program again, from the stages it runs, in the current context.

        For after the GL context was lost and replaced: the old programs went with it. A
        program that does not build again is dropped (the next :meth:`program` call
        builds it from its files, or falls back to ``basic``).
        """
        for name, running in list(self._running.items()):
            try:
                program = _compile(running.stages)
                self._running[name] = _Running(program, running.stages, running.suspect)
            except _BuildFailed:
                del self._running[name]

    def last_error(self, name: str) -> ShaderError | None:
        """The error of the last failed build of program ``name``, cleared by a good one."""
        return self._errors.get(name)

    def names(self) -> list[str]:
        """Program names with a shader file, built-in or in the project."""
        dirs = [BUILTIN_DIR] + ([self.shader_dir] if self.shader_dir else [])
        found = {p.stem for d in dirs if d.is_dir() for p in d.iterdir() if self._is_shader(p)}
        return sorted(found)

    def handles(self, path: Path | str) -> bool:
        """Whether ``path`` is a shader file of this project (``shaders/*.vert|frag|glsl``).

        The file need not exist (a deletion is a change too).
        """
        if self.shader_dir is None:
            return False
        path = Path(path)
        return path.suffix in STAGE_SUFFIXES and _same_path(path.parent, self.shader_dir)

    @staticmethod
    def _is_shader(path: Path) -> bool:
        return path.suffix in STAGE_SUFFIXES and not path.name.startswith(".")

    # -- changes ----------------------------------------------------------------------
    def queue_change(self, path: Path | str, event_time_ns: int) -> None:
        """Note that ``path`` changed (or was created or deleted); cheap and thread-safe.

        Paths this library does not handle are ignored. Several events for one file before
        the next :meth:`apply_pending` count once, with the earliest time.
        """
        path = Path(path)
        if not self.handles(path):
            return
        with self._lock:
            self._pending[path] = min(event_time_ns, self._pending.get(path, event_time_ns))

    def apply_pending(self) -> list[ShaderSwap]:
        """Rebuild every program whose files changed since the last call; GL thread only.

        Returns one :class:`ShaderSwap` per rebuilt program (failures included, after
        printing them). A deleted file changes nothing: its program keeps drawing as it was.
        A drawing still open here, between frames, had its way out cut short (see
        :meth:`drawing`): it is finished as interrupted first.
        """
        open_ = self._open
        if open_ is not None and not open_.encloses(sys._getframe(1)):
            self._cut_short(open_)
        swaps = [swap for suspect in self._take_overran() if (swap := self._leave_out(suspect))]
        with self._lock:
            pending, self._pending = self._pending, {}
        by_program: dict[str, dict[str, int]] = {}
        for path, t in pending.items():
            if not path.exists():
                if path.stem in self._running:
                    self.report(f"engine: shader {path} deleted; keeping the last good program")
                continue
            by_program.setdefault(path.stem, {})[path.name] = t
            # A program without its own stage borrows basic's file: rebuild it too.
            for name, running in self._running.items():
                if any(_same_path(st.path, path) for st in running.stages.values()):
                    by_program.setdefault(name, {})[path.name] = t
        for name, files in sorted(by_program.items()):
            self._unknown.discard(name)
            swap = self._update(name, changed=set(files), event_time_ns=min(files.values()))
            if swap is not None:
                swaps.append(swap)
        return swaps

    def _take_overran(self) -> list[_Suspect]:
        overran, self._overran = self._overran, []
        return overran

    def _leave_out(self, suspect: _Suspect) -> ShaderSwap | None:
        """Mark ``suspect`` bad and draw its program with the version before it (or the
        built-in stage); ``None`` if its program no longer runs that version."""
        stage = suspect.stage
        running = self._running.get(suspect.program)
        unit = self._unit(stage.path)
        if unit is None or stage.version is None or running is None:
            return None
        if running.stages.get(stage.stage) != stage:
            return None
        limit_ms, took_ms = self.draw_limit_ns / 1e6, suspect.overran_ns / 1e6
        if not suspect.interrupted:  # only the SLOW_DRAWS_TO_BLAME-th finished drawing
            why = (
                f"{suspect.slow} drawings with it took over {limit_ms:.0f} ms "
                f"(the last {took_ms:.0f} ms)"
            )
        else:
            took = "took" if suspect.end_seen else "took up to"
            why = (
                f"a drawing with it {took} {took_ms:.0f} ms (over {limit_ms:.0f} ms) "
                "and was interrupted"
            )
        before = leave_out(unit, stage.version, why)
        stages = dict(running.stages)
        for key, old in running.stages.items():
            if old == stage:
                stages[key] = (
                    _Stage(key, stage.path, unit.source(before.number), before.number)
                    if before is not None
                    else self._last_good(stage.path, key)
                )
        where = f"{stage.path}:{suspect.line}" if suspect.line else f"{stage.path}"
        instead = f"v{before.number}" if before is not None else "the built-in stage"
        self.report(
            f"engine: {where}: {stage.file_name} v{stage.version} {why}; left out, "
            f"{instead} draws instead"
        )
        return self._report(self._try(suspect.program, stages, None))

    def undo(self, file_name: str) -> ShaderSwap | None:
        """Run the previous runnable version of project shader ``file_name`` (``basic.frag``).

        Returns ``None`` when there is nothing to undo to; a failed swap (the other stage no
        longer fits this version) leaves everything as it was and says why.
        """
        return self._move(file_name, "undo")

    def redo(self, file_name: str) -> ShaderSwap | None:
        """Run the next runnable version of ``file_name`` after an undo; ``None`` if none."""
        return self._move(file_name, "redo")

    # -- internals --------------------------------------------------------------------
    def _unit(self, path: Path) -> VersionHistory | None:
        if self.history is None or not self._in_project(path):
            return None
        return self.history.unit("shaders", path.name, suffix=path.suffix)

    def _in_project(self, path: Path) -> bool:
        return self.shader_dir is not None and _same_path(path.parent, self.shader_dir)

    def _resolve(self, name: str, stage: str) -> Path | None:
        """The file stage ``stage`` of program ``name`` comes from (see the module doc)."""
        candidates = []
        for directory in [self.shader_dir, BUILTIN_DIR]:
            if directory is not None:
                candidates += [
                    directory / f"{name}{_STAGE_SUFFIX[stage]}",
                    directory / f"{name}.glsl",
                ]
        for path in candidates:
            if path.is_file():
                return path
        return None

    def _disk_stage(self, path: Path, stage: str, *, first_load: bool) -> _Stage:
        """The stage as the file on disk has it, recorded in the history if it is the project's.

        On first load an unchanged file resumes its active version, so an undo survives a
        restart, and one left out as ``bad`` (it hung the game) is not drawn again: with no
        active version, the built-in stage stands in until the file is edited. Raises
        ``OSError``/``UnicodeDecodeError`` if the file cannot be read.
        """
        source = path.read_text(encoding="utf-8")
        unit = self._unit(path)
        if unit is None:
            return _Stage(stage, path, source)
        previous = unit.latest
        version = unit.record(source)
        if first_load and version is previous and unit.active is not None:
            version = unit.active
            source = unit.source(version.number)
        elif first_load and version is previous and version.status is VersionStatus.BAD:
            return self._last_good(path, stage)
        return _Stage(stage, path, source, version.number)

    def _untried(self, stage: _Stage) -> _Stage:
        """A running project stage, or the untried version on disk beside it.

        When both stages are saved together and one fails, the other stays ``pending``;
        it is tried again along with the next edit of its companion.
        """
        unit = self._unit(stage.path)
        if unit is None or unit.disk_number is None or unit.disk_number == stage.version:
            return stage
        disk = unit.get(unit.disk_number)
        if disk.status is not VersionStatus.PENDING:
            return stage
        return _Stage(stage.stage, stage.path, unit.source(disk.number), disk.number)

    def _update(self, name: str, changed: set[str], event_time_ns: int | None) -> ShaderSwap | None:
        """Build program ``name`` from the changed files plus its running stages, then swap.

        Returns ``None`` when there is nothing to build (no file of that name, or files
        saved without changes).
        """
        if name != DEFAULT_PROGRAM and not any(self._resolve(name, s) for s in STAGES):
            return None
        running = self._running.get(name)
        stages: dict[str, _Stage] = {}
        fallback: dict[str, _Stage] = {}
        try:
            for stage in STAGES:
                path = self._resolve(name, stage) or self._resolve(DEFAULT_PROGRAM, stage)
                if path is None:
                    raise FileNotFoundError(f"no {stage} shader for {name!r}")
                if running is not None and path.name not in changed:
                    stages[stage] = self._untried(running.stages[stage])
                    continue
                stages[stage] = self._disk_stage(path, stage, first_load=running is None)
                fallback[stage] = self._last_good(path, stage)
        except (OSError, UnicodeDecodeError) as exc:
            path = Path(getattr(exc, "filename", None) or name)
            return self._report(
                ShaderSwap(
                    name,
                    False,
                    {},
                    ShaderError(path, None, str(exc), str(exc)),
                    event_time_ns,
                    self._clock(),
                )
            )
        if running is not None and all(stages[s] == running.stages[s] for s in STAGES):
            return None
        swap = self._try(name, stages, event_time_ns)
        if not swap.ok and running is None and fallback and fallback != stages:
            # First load failed: run the last good versions (or the built-ins) meanwhile.
            self._try(name, fallback, event_time_ns)
        return self._report(swap)

    def _last_good(self, path: Path, stage: str) -> _Stage:
        """What a stage falls back to on first load: its active version, else the built-in."""
        unit = self._unit(path)
        if unit is not None and unit.active is not None:
            return _Stage(stage, path, unit.source(unit.active_number), unit.active_number)
        builtin = BUILTIN_DIR / path.name
        if not builtin.is_file():
            builtin = self._resolve(DEFAULT_PROGRAM, stage) or builtin
        return _Stage(stage, builtin, builtin.read_text(encoding="utf-8"))

    def _try(self, name: str, stages: dict[str, _Stage], event_time_ns: int | None) -> ShaderSwap:
        """Build ``stages``; swap and mark them good, or mark the culprit ``error``."""
        versions = {s.file_name: s.version for s in stages.values() if s.version is not None}
        try:
            program = _compile(stages)
        except _BuildFailed as failed:
            running = self._running.get(name)
            # The running stages compiled and linked before: only new ones are to blame.
            new = [
                s for s in stages.values() if running is None or running.stages.get(s.stage) != s
            ]
            at_fault = [failed.stage] if failed.stage is not None else new
            error = failed.error
            if failed.stage is None and new:
                error = _placed_link_error(error, new, list(stages.values()))
            for stage in at_fault:
                unit = self._unit(stage.path)
                if unit is not None and stage.version is not None:
                    unit.mark(stage.version, VersionStatus.ERROR, str(error))
            return ShaderSwap(name, False, versions, error, event_time_ns, self._clock())
        for stage in stages.values():
            unit = self._unit(stage.path)
            if unit is not None and stage.version is not None:
                unit.mark(stage.version, VersionStatus.GOOD)
                unit.activate(stage.version)
        old = self._running.get(name)
        suspect = self._suspect_of(name, stages)
        if suspect is not None and old is not None:
            suspect.live = old.stages.get(suspect.stage.stage) != suspect.stage
        self._running[name] = _Running(program, dict(stages), suspect)
        if old is not None:
            old.program.delete()
        return ShaderSwap(name, True, versions, None, event_time_ns, self._clock())

    def _report(self, swap: ShaderSwap) -> ShaderSwap:
        """Remember and print a failed swap's error; clear it after a good one."""
        if swap.ok or swap.error is None:
            self._errors.pop(swap.program, None)
            return swap
        self._errors[swap.program] = swap.error
        keeping = (
            "keeps drawing its last good version"
            if swap.program in self._running
            else "is not available"
        )
        self.report(
            f"engine: shader error: {swap.error}\n        (program {swap.program!r} {keeping})"
        )
        return swap

    def _move(self, file_name: str, direction: str) -> ShaderSwap | None:
        if self.shader_dir is None or self.history is None:
            return None
        path = self.shader_dir / file_name
        if path.suffix not in STAGE_SUFFIXES:
            raise ValueError(f"{file_name!r} is not a shader file name")
        name = path.stem
        self.program(name)  # make sure it is running, so there is something to move from
        running = self._running.get(name)
        unit = self._unit(path)
        if running is None or unit is None:
            return None
        target = unit.undo_target() if direction == "undo" else unit.redo_target()
        if target is None:
            return None
        source = unit.source(target.number)
        stages = dict(running.stages)
        for stage in STAGE_SUFFIXES[path.suffix]:
            if stages[stage].path == path:
                stages[stage] = _Stage(stage, path, source, target.number)
        if stages == running.stages:
            return None  # this file does not feed the running program
        return self._report(self._try(name, stages, None))


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# -- built ahead: a warm standby game ------------------------------------------------------

#: Programs built before the game that uses them existed, by the texts of their stages.
_prebuilt: dict[tuple[tuple[str, str], ...], ShaderProgram] = {}


def _texts(stages: dict[str, _Stage]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, stage.text()[0]) for name, stage in stages.items()))


def prebuild(project_dir: Path | None, history: ProjectHistory | None = None) -> list[str]:
    """Compile every program a game of ``project_dir`` starting now would build, and keep
    them for that game's :class:`ShaderLibrary` (the first build of the same texts takes
    one instead of compiling). Returns the names built.

    For a warm standby game process: it has a GL context but no game yet, and another game
    process may be running the project. So nothing is recorded in the history (a file that
    differs from its newest version is compiled from disk, as a game would first try it);
    a file that does not build is skipped here and fails again, reported, in the game.
    Call again after the project changed: stale programs are deleted. GL thread only.
    """
    if project_dir is not None and history is None:
        history = ProjectHistory(project_dir)
    library = ShaderLibrary(project_dir, history, report=lambda message: None)
    wanted: dict[tuple[tuple[str, str], ...], str] = {}
    for name in library.names():
        stages = {}
        for stage in STAGES:
            path = library._resolve(name, stage) or library._resolve(DEFAULT_PROGRAM, stage)
            if path is None:
                break
            try:
                stages[stage] = _Stage(stage, path, _first_source(library, path))
            except (OSError, UnicodeDecodeError):
                break
        else:
            wanted[_texts(stages)] = name
            if _texts(stages) not in _prebuilt:
                try:
                    _prebuilt[_texts(stages)] = _compile(stages)
                except _BuildFailed:
                    del wanted[_texts(stages)]
    for key in [k for k in _prebuilt if k not in wanted]:
        _prebuilt.pop(key).delete()
    return sorted(wanted.values())


def _first_source(library: ShaderLibrary, path: Path) -> str:
    """What a new game's first build of ``path`` compiles (see ``_disk_stage``), unrecorded."""
    source = path.read_text(encoding="utf-8")
    unit = library._unit(path)
    if unit is None or unit.latest is None or unit.active is None:
        return source
    if unit.source(unit.latest.number) != source:
        return source  # an edit not yet recorded: it is tried first
    return unit.source(unit.active_number)

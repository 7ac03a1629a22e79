"""The failure policy: every decision about what a fault costs, in one table.

The boxes that *see* faults — the loader, the scheduler and its watchdog, the supervisor —
describe each one as a :class:`Fault` (what happened, where: module, version, system or
engine phase, file and line) and ask :meth:`FailurePolicy.decide` what follows. None of
them decides on its own, and none of them writes another box's state: the answer is a
:class:`Decision` whose :class:`Action` the asking box carries out. Three rows are not
asked at run time: the shader library (``shader-error``), ``game.py``'s setup
(``setup-error``) and the checkpointer (``checkpoint-error``) act on their own faults as
their rows say.

The rules are data (:data:`RULES`), first match wins, and read as a table
(:func:`rules_table`, printed in ``docs/failure-policy.md``)::

    >>> policy = FailurePolicy()
    >>> fault = Fault(FaultKind.EXCEPTION, "ZeroDivisionError", module="bob", version=3,
    ...               system="bob.move", location="bob.py:7", on_probation=True,
    ...               has_good_version=True)
    >>> d = policy.decide(fault, now_ns=0)
    >>> d.action
    <Action.ROLL_BACK: 'roll-back'>
    >>> print(d.message)
    bob.py:7: bob.move v3 raised ZeroDivisionError; rolled back to its last good version

Time is an argument (``now_ns``), so back-off and cool-down are tested on a manual clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

S = 1_000_000_000  # nanoseconds per second


class FaultKind(StrEnum):
    """What went wrong. Each kind has a row (or several) in :data:`RULES`."""

    LOAD_ERROR = "load-error"  # syntax, import or execution error, unreadable file
    LOAD_TIMEOUT = "load-timeout"  # module-level code ran past the load limit
    HOOK_ERROR = "hook-error"  # on_load / on_unload raised or ran over
    SETUP_ERROR = "setup-error"  # game.py's setup(world) raised
    EXCEPTION = "exception"  # a system call raised
    HARD_LIMIT = "hard-limit"  # runaway Python interrupted by the watchdog
    C_CALL = "c-call"  # a call returned over the hard limit (long C code)
    BUDGET = "budget"  # the system made frames late
    MEMORY = "memory"  # MemoryError under the game's memory limit
    SHADER_ERROR = "shader-error"  # a shader failed to compile or link
    CHECKPOINT_ERROR = "checkpoint-error"  # the world could not be checkpointed
    RUNAWAY_THREAD = "runaway-thread"  # a thread user code started keeps a CPU busy
    UNSTOPPABLE = "unstoppable"  # such a thread ran away again after every stop
    PROCESS_DIED = "process-died"  # the game process exited or was killed by a signal
    HUNG = "hung"  # no heartbeat, no first frame, or interrupts swallowed
    NOT_PUBLISHING = "not-publishing"  # beating, but no layer image for too long
    COMPOSITOR_DIED = "compositor-died"  # must never happen; contained anyway
    COMPOSITOR_HUNG = "compositor-hung"  # alive, but no frame presented for too long


class Action(StrEnum):
    """What the box that reported a fault does about it."""

    KEEP_OLD = "keep-old"  # refuse the new version; the running one stays live
    STRIKE = "strike"  # abandon this call, count a strike; the frame goes on
    ROLL_BACK = "roll-back"  # back to the last good version (disabled if there is none)
    DISABLE = "disable"  # off until a new version or `engine enable`
    DISABLE_AND_RETRY = "disable-and-retry"  # off, retried after a cool-down (back-off)
    RESTART = "restart"  # restart the process from its checkpoint, code unchanged
    RESTART_WITHOUT = "restart-without"  # restart without the version that was running
    BACK_OFF = "back-off"  # the same fault keeps coming back: wait, then restart
    STOP_THREAD = "stop-thread"  # stop the thread (an exception raised in it); the rest runs
    WAIT_FOR_EDIT = "wait-for-edit"  # no restart until the file at fault is saved again


#: The words a message uses for each action.
ACTION_TEXT = {
    Action.KEEP_OLD: "the running version stays live",
    Action.STRIKE: "call abandoned, the frame goes on",
    Action.ROLL_BACK: "rolled back to its last good version",
    Action.DISABLE: "disabled until it is edited or `engine enable`d",
    Action.DISABLE_AND_RETRY: "disabled",
    Action.RESTART: "restarting the game from its checkpoint",
    Action.RESTART_WITHOUT: "restarting the game from its checkpoint without it",
    Action.BACK_OFF: "restart held back",
    Action.STOP_THREAD: "the thread is stopped; its module's systems run on",
    Action.WAIT_FOR_EDIT: "the game starts again when game.py is saved",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault, as the box that saw it describes it.

    Attributes:
        kind: what went wrong.
        detail: the error in a few words (``"ZeroDivisionError: division by zero"``).
        module / version: the system module version at fault, if any.
        system: the system (``module.name``) or hook (``module.on_load``) at fault.
        phase: the engine phase it happened in (``load``, ``on_load``, ``setup``,
            ``system``, ``render``, ``shader``, ``checkpoint``, ``thread``, ``process``).
        location: ``file:line`` where it happened, when known.
        on_probation: the module version is new and has not yet run its probation.
        strikes: for exceptions, how many frames in a row the system has now raised.
        has_good_version: the module has a last good version to fall back to.
        essential: the system is one the game's picture depends on (the render system;
            see :class:`~engine.scheduler.spec.SystemSpec`).
    """

    kind: FaultKind
    detail: str
    module: str | None = None
    version: int | None = None
    system: str | None = None
    phase: str = "system"
    location: str | None = None
    on_probation: bool = False
    strikes: int = 0
    has_good_version: bool = False
    essential: bool = False

    @property
    def culprit(self) -> str:
        """``bob.move v3``, ``bob v3``, or the phase when no code is named."""
        name = self.system or self.module
        if name is None:
            return self.phase
        return f"{name} v{self.version}" if self.version is not None else name


@dataclass(frozen=True, slots=True)
class Settings:
    """The policy's numbers, in one place.

    Attributes:
        strikes: frames in a row a system may raise before it is disabled (past probation).
        retry_ns: first cool-down of a system disabled for time; doubles per repeat.
        max_retry_ns: longest cool-down.
        loop_faults / loop_window_ns: this many process faults (of any kinds in
            :data:`PROCESS_FAULTS`) within the window, counted from each fault's time, is
            a crash loop.
        backoff_ns / max_backoff_ns: first and longest wait before a restart in a loop;
            the wait doubles with each fault while the loop lasts.
    """

    strikes: int = 3
    retry_ns: int = 5 * S
    max_retry_ns: int = 5 * 60 * S
    loop_faults: int = 3
    loop_window_ns: int = 10 * S
    backoff_ns: int = 2 * S
    max_backoff_ns: int = 30 * S


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the policy table: for ``kind``, when ``applies``, do ``action``."""

    kind: FaultKind
    when: str
    action: Action
    why: str
    applies: Callable[[Fault, Settings], bool] = lambda fault, settings: True


def _new(f: Fault, s: Settings) -> bool:
    return f.on_probation


def _struck_out(f: Fault, s: Settings) -> bool:
    return f.strikes >= s.strikes


def _leaving(f: Fault, s: Settings) -> bool:
    return f.phase == "on_unload"


def _names_code(f: Fault, s: Settings) -> bool:
    return f.module is not None


def _in_setup(f: Fault, s: Settings) -> bool:
    return f.phase == "setup"


def _essential(f: Fault, s: Settings) -> bool:
    return f.essential


#: The policy, first match per kind wins. ``docs/failure-policy.md`` prints this table.
RULES: tuple[Rule, ...] = (
    Rule(FaultKind.LOAD_ERROR, "always", Action.KEEP_OLD,
         "nothing of a version that fails to load has touched the world"),
    Rule(FaultKind.LOAD_TIMEOUT, "always", Action.KEEP_OLD,
         "module code that runs away at import is refused like a syntax error"),
    Rule(FaultKind.HOOK_ERROR, "`on_unload` of the version being replaced", Action.STRIKE,
         "what it changed is undone and the swap goes on: a broken `on_unload` cannot pin "
         "its version", _leaving),
    Rule(FaultKind.HOOK_ERROR, "otherwise (`on_load`)", Action.KEEP_OLD,
         "the world is restored to before the swap; the old version stays"),
    Rule(FaultKind.SETUP_ERROR, "always", Action.STRIKE,
         "the game starts with what setup made; systems load and can be fixed live"),
    Rule(FaultKind.EXCEPTION, "the version is on probation", Action.ROLL_BACK,
         "a new version that raises is presumed wrong", _new),
    Rule(FaultKind.EXCEPTION, "it raised `strikes` frames in a row", Action.DISABLE,
         "an error that repeats every frame will not go away by itself", _struck_out),
    Rule(FaultKind.EXCEPTION, "otherwise", Action.STRIKE,
         "one bad frame (a rare input) should not cost the system"),
    Rule(FaultKind.MEMORY, "the version is on probation", Action.ROLL_BACK,
         "a new version that exhausts memory is presumed wrong", _new),
    Rule(FaultKind.MEMORY, "otherwise", Action.DISABLE,
         "the allocation was refused; the process and the world are intact"),
    Rule(FaultKind.HARD_LIMIT, "the version is on probation", Action.ROLL_BACK,
         "a new version that runs away is presumed wrong", _new),
    Rule(FaultKind.HARD_LIMIT, "otherwise", Action.DISABLE,
         "runaway code does not fix itself; a new version retries at once"),
    Rule(FaultKind.C_CALL, "an essential system (the picture depends on it)", Action.STRIKE,
         "a late picture is shown reprojected; none at all would restart the game",
         _essential),
    Rule(FaultKind.C_CALL, "the version is on probation", Action.ROLL_BACK,
         "a new version whose C call overruns the frame is presumed wrong", _new),
    Rule(FaultKind.C_CALL, "otherwise", Action.DISABLE_AND_RETRY,
         "the input may shrink; retried after a cool-down that doubles each time"),
    Rule(FaultKind.BUDGET, "an essential system (the picture depends on it)", Action.STRIKE,
         "a slow picture is better than none, which would restart the game", _essential),
    Rule(FaultKind.BUDGET, "otherwise", Action.DISABLE_AND_RETRY,
         "it made frames late; retried after a cool-down that doubles each time"),
    Rule(FaultKind.SHADER_ERROR, "always", Action.KEEP_OLD,
         "the last program that linked keeps drawing"),
    Rule(FaultKind.CHECKPOINT_ERROR, "always", Action.STRIKE,
         "the previous checkpoint stays and the game goes on; a component that cannot be "
         "pickled is left out of the checkpoint and named"),
    Rule(FaultKind.RUNAWAY_THREAD, "always", Action.STOP_THREAD,
         "a thread that never lets go of a CPU starves the frame loop and the compositor; "
         "the module version that started it is named; a new version starts afresh"),
    Rule(FaultKind.UNSTOPPABLE, "always", Action.RESTART_WITHOUT,
         "a thread that swallows every stop keeps a CPU for the rest of the game and takes "
         "the GIL from frames; only a new process is rid of it: the game ends itself after "
         "its final checkpoint, naming the version, and restarts without it"),
    Rule(FaultKind.PROCESS_DIED, "the heartbeat named project code", Action.RESTART_WITHOUT,
         "the code running when the process died is blamed, also before the first frame",
         _names_code),
    Rule(FaultKind.PROCESS_DIED, "in `setup` (game.py)", Action.WAIT_FOR_EDIT,
         "game.py has no versions to leave out, and a new world runs `setup` again: it would "
         "die the same way", _in_setup),
    Rule(FaultKind.PROCESS_DIED, "otherwise (an engine phase)", Action.RESTART,
         "nothing of the user's was running; the crash loop rule still applies"),
    Rule(FaultKind.HUNG, "the heartbeat named project code", Action.RESTART_WITHOUT,
         "code that swallows interrupts or blocks in C is stopped from outside",
         _names_code),
    Rule(FaultKind.HUNG, "in `setup` (game.py)", Action.WAIT_FOR_EDIT,
         "game.py has no versions to leave out, and a new world runs `setup` again: it would "
         "hang the same way", _in_setup),
    Rule(FaultKind.HUNG, "otherwise", Action.RESTART,
         "the game stopped beating in engine code"),
    Rule(FaultKind.NOT_PUBLISHING, "always", Action.RESTART,
         "a game that beats but shows nothing is as good as hung"),
    Rule(FaultKind.COMPOSITOR_DIED, "always", Action.RESTART,
         "the game stops cleanly (it did nothing wrong) and both start again"),
    Rule(FaultKind.COMPOSITOR_HUNG, "always", Action.RESTART,
         "a compositor that presents nothing is as good as dead: it is killed, and the "
         "game stops cleanly and both start again"),
)  # fmt: skip

#: Process faults that count towards a crash loop (and are then held back).
PROCESS_FAULTS = frozenset(
    {
        FaultKind.PROCESS_DIED,
        FaultKind.HUNG,
        FaultKind.NOT_PUBLISHING,
        FaultKind.COMPOSITOR_DIED,
        FaultKind.COMPOSITOR_HUNG,
    }
)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one fault.

    Attributes:
        action: what the reporting box does.
        rule: the row of :data:`RULES` that decided.
        message: one line for the user: where, what, and what the engine did.
        retry_at_ns: for :attr:`Action.DISABLE_AND_RETRY`, when to enable it again; for
            :attr:`Action.BACK_OFF`, when to restart.
    """

    action: Action
    rule: Rule
    message: str
    retry_at_ns: int | None = None


@dataclass
class _Backoff:
    """How often one key (a system, or the game process) has faulted, and when."""

    count: int = 0
    times: deque[int] = field(default_factory=lambda: deque(maxlen=64))


class FailurePolicy:
    """Decides what every fault costs (see :data:`RULES`) and remembers repeats.

    State kept between decisions: how often each system was disabled for time (its next
    cool-down doubles; :meth:`forget` resets it when a new version arrives) and recent
    process faults (the crash-loop rule).
    """

    def __init__(self, settings: Settings | None = None, rules: tuple[Rule, ...] = RULES):
        self.settings = settings or Settings()
        self.rules = rules
        self._retries: dict[str, _Backoff] = {}
        self._process = _Backoff()
        self._streak = 0
        self._wait_ns = 0  # the last crash-loop wait

    def rule_for(self, fault: Fault) -> Rule:
        """The first rule of ``fault.kind`` that applies. Raises ``LookupError`` if none."""
        for rule in self.rules:
            if rule.kind is fault.kind and rule.applies(fault, self.settings):
                return rule
        raise LookupError(f"no rule for {fault.kind}")

    def decide(self, fault: Fault, now_ns: int) -> Decision:
        """The decision for ``fault`` seen at ``now_ns`` (also updates the repeat counts)."""
        rule = self.rule_for(fault)
        action, retry_at = rule.action, None
        text = ACTION_TEXT[action]
        if action is Action.DISABLE_AND_RETRY:
            backoff = self._retries.setdefault(fault.system or fault.culprit, _Backoff())
            wait = min(self.settings.max_retry_ns, self.settings.retry_ns << backoff.count)
            backoff.count += 1
            retry_at = now_ns + wait
            text = f"disabled, retried in {wait / S:g} s"
        elif action is Action.WAIT_FOR_EDIT:
            pass  # no restart to hold back: the next game starts when the file is saved
        elif fault.kind in PROCESS_FAULTS:
            wait = self._process_fault(now_ns)
            if wait:
                action, retry_at = Action.BACK_OFF, now_ns + wait
                text = (
                    f"crash loop ({self.settings.loop_faults} game faults within "
                    f"{self.settings.loop_window_ns / S:g} s): next start in {wait / S:g} s"
                    + (" without it" if rule.action is Action.RESTART_WITHOUT else "")
                )
        elif action is Action.ROLL_BACK and not fault.has_good_version:
            text = "no good version to fall back to: disabled until it is edited"
        elif action is Action.STRIKE and fault.kind in (FaultKind.C_CALL, FaultKind.BUDGET):
            text = "it stays on: the compositor shows its last picture reprojected meanwhile"
        elif action is Action.STRIKE and fault.kind is FaultKind.EXCEPTION:
            text = f"strike {fault.strikes} of {self.settings.strikes}; the frame goes on"
        where = f"{fault.location}: " if fault.location else ""
        message = f"{where}{fault.culprit} {_verb(fault)}; {text}"
        return Decision(action, rule, message, retry_at)

    def forget(self, key: str) -> None:
        """A new version of ``key`` (a system) arrived: its next cool-down starts short."""
        self._retries.pop(key, None)

    def _process_fault(self, now_ns: int) -> int:
        """Record a process fault; the wait before the next start (0: at once).

        A loop starts at ``loop_faults`` faults within ``loop_window_ns``. Once in one, a
        fault that comes within the window *after the last wait* is the loop going on,
        however long the waits have grown, so the wait keeps doubling up to
        ``max_backoff_ns``; a game that then runs a whole window without a fault is out
        of the loop.
        """
        s = self.settings
        times = self._process.times
        last = times[-1] if times else None
        times.append(now_ns)
        looping = (
            self._streak > 0
            and last is not None
            and now_ns - last <= self._wait_ns + s.loop_window_ns
        )
        recent = sum(1 for t in times if now_ns - t <= s.loop_window_ns)
        if not looping and recent < s.loop_faults:
            self._streak = self._wait_ns = 0
            return 0
        self._streak += 1
        self._wait_ns = min(s.max_backoff_ns, s.backoff_ns << (self._streak - 1))
        return self._wait_ns


#: What happened, after the culprit's name; ``{}`` is the fault's detail.
_VERBS = {
    FaultKind.LOAD_ERROR: "failed to load: {}",
    FaultKind.LOAD_TIMEOUT: "ran past the load limit at import: {}",
    FaultKind.HOOK_ERROR: "failed: {}",
    FaultKind.SETUP_ERROR: "failed: {}",
    FaultKind.EXCEPTION: "raised {}",
    FaultKind.MEMORY: "ran out of memory: {}",
    FaultKind.HARD_LIMIT: "ran away: {}",
    FaultKind.C_CALL: "overran the frame in a C call: {}",
    FaultKind.BUDGET: "made frames late: {}",
    FaultKind.SHADER_ERROR: "failed to build: {}",
    FaultKind.CHECKPOINT_ERROR: "could not be checkpointed: {}",
    FaultKind.RUNAWAY_THREAD: "started a thread that ran away: {}",
    FaultKind.UNSTOPPABLE: "started a thread that cannot be stopped: {}",
    FaultKind.PROCESS_DIED: "was running when the game died ({})",
    FaultKind.HUNG: "was running when the game hung ({})",
    FaultKind.NOT_PUBLISHING: "was running when the game stopped publishing ({})",
    FaultKind.COMPOSITOR_DIED: "was running when the compositor died ({})",
    FaultKind.COMPOSITOR_HUNG: "was running when the compositor hung ({})",
}


def _verb(fault: Fault) -> str:
    return _VERBS[fault.kind].format(fault.detail or "no detail")


def rules_table(rules: tuple[Rule, ...] = RULES) -> str:
    """The policy as a Markdown table (what ``docs/failure-policy.md`` shows)."""
    lines = ["| fault | when | action | why |", "|---|---|---|---|"]
    for r in rules:
        lines.append(f"| `{r.kind}` | {r.when} | **{r.action}** | {r.why} |")
    return "\n".join(lines)

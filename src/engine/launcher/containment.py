"""Keeping the process tree contained: nothing outlives the engine, and a game reaches
nothing outside its own tree.

What each side does (``docs/process-model.md`` has the whole picture):

**Every child** (compositor, game) calls :func:`die_with_parent` first thing: the kernel
sends it SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), a parent that died before
that call is noticed at once (``getppid()`` is no longer the parent), and a thread waits
on multiprocessing's parent sentinel (a pipe whose other end only the parent holds) as a
second line.

**The game** also calls :func:`contain_game`: it becomes the leader of its own session and
process group (``setsid``), so ``os.killpg(0, SIGTERM)`` in user code reaches only the
game and what it started; an audit hook (:func:`refuse_signals_outside_session`) refuses
signals to any process outside that session with ``PermissionError``; and it runs under a
memory limit (:func:`limit_memory`), so a memory bomb is a ``MemoryError`` in the system
that made it, not the OOM killer. Its messages go out through a :class:`ReportChannel`
that owns its own fd, so user code closing ``sys.stdout`` or fds cannot silence or break
the engine's reports.

**The supervisor** is a child subreaper (:func:`become_subreaper`): a process the game
started whose parent died is re-parented to it instead of init. At every game end it
kills the game's session (:func:`kill_session`) and any such orphan
(:func:`kill_orphans`). A :class:`Warden` — a tiny process outside the game's session —
does the same if the supervisor itself is killed (SIGKILL leaves it no chance).

What the audit hook cannot stop — code that calls the C library through a function
pointer obtained before the hook, raw system calls (ctypes ``syscall``), an external
program (``subprocess.run(["kill", ...])``) — the kernel does: :func:`fence_signals`
installs a seccomp filter (through libseccomp) that refuses, with ``EPERM``, any signal,
``ptrace`` or ``pidfd`` from the game or anything it starts to the engine's processes
(supervisor, compositor, warden; for a preview, the live game too), to their process
groups and sessions, and to every process at once (``kill(-1)``). Where seccomp is not
available the audit hook is the only fence, and the game says so once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: Exit status of a child whose parent died before it could arrange to die with it.
EXIT_ORPHANED = 111

# Resolved now, before any audit hook exists: the engine's own kills must not be refused
# (nor counted as the game ending itself).
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_kill = _libc.kill
_kill.argtypes = [ctypes.c_int, ctypes.c_int]


PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    """Name this process (its main thread) ``name`` for ``ps``, ``top`` and
    ``/proc/PID/comm`` (at most 15 bytes are kept); threads started afterwards inherit it.
    Never raises: a name is a convenience."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _prctl(PR_SET_NAME, ctypes.addressof(buffer), 0, 0, 0)


def prctl(option: int, value: int) -> None:
    """``prctl(option, value)``; raises ``OSError`` if the kernel refuses."""
    if _prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# --- every child ------------------------------------------------------------------------


def die_with_parent(
    parent_pid: int, sentinel: int | None = None, group: bool = False
) -> threading.Thread | None:
    """Make this process die when ``parent_pid`` (its parent) dies. Call it first thing.

    1. ``PR_SET_PDEATHSIG`` = SIGKILL: the kernel kills this process when the parent's
       thread that started it exits (the supervisor starts children from its main thread).
    2. ``getppid()`` checked *after* that: if the parent died before the call, this
       process was already re-parented and exits at once (:data:`EXIT_ORPHANED`).
    3. With ``sentinel`` (the read end of a pipe only the parent writes to, such as
       ``multiprocessing.parent_process().sentinel``), a daemon thread waits for its end
       of file and then kills this process — and with ``group``, its whole process group.
       The thread watches its own high-numbered copy of the fd; if user code closes it
       anyway (``os.closerange``), the thread stops watching (PDEATHSIG still holds)
       rather than mistake another file for the pipe.

    Returns the thread (``None`` without a sentinel). Raises ``OSError`` if the kernel
    refuses ``prctl``.
    """
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(EXIT_ORPHANED)
    if sentinel is None:
        return None
    watched = keep_fd(sentinel)
    thread = threading.Thread(
        target=_wait_for_parent,
        args=(watched, _identity(watched), group),
        name="parent-death",
        daemon=True,
    )
    thread.start()
    return thread


def _wait_for_parent(sentinel: int, identity: tuple[int, int], group: bool) -> None:
    poller = select.poll()
    poller.register(sentinel, select.POLLIN | select.POLLHUP)
    while True:
        try:
            events = poller.poll()
            if any(e & select.POLLNVAL for _, e in events) or _identity(sentinel) != identity:
                return  # closed (or replaced) under us: stop watching, PDEATHSIG remains
            if os.read(sentinel, 4096):
                continue  # data, not the end: the parent is alive
        except InterruptedError:
            continue
        except OSError:
            return
        break
    target = -os.getpgid(0) if group else os.getpid()
    _kill(target, signal.SIGKILL)


# --- the game ---------------------------------------------------------------------------


def contain_game(
    memory_limit: int | None,
    on_self_signal: Callable[[int, str, int], None] | None,
    protect: Iterable[int] = (),
) -> str:
    """Fence the game in (call after :func:`die_with_parent`): its own session, signals
    only within it, and ``memory_limit`` bytes of private memory (``None``: no limit).

    ``on_self_signal(signum, file, line)`` is called before user code sends this game (or
    its group) a signal that may end it, with where it did so, so the supervisor can blame
    what sent it; and with signal 0 before ``os._exit`` ends it (see :func:`note_exits`).
    ``protect``: the engine's other processes, fenced off by the kernel too (the parent,
    the supervisor, always is); see :func:`fence_signals`. Returns what the kernel fence
    is (its description from :func:`fence_signals`).
    """
    parent = os.getppid()
    os.setsid()
    if memory_limit:
        limit_memory(memory_limit)
    fence = fence_signals([parent, *protect])
    refuse_signals_outside_session(on_self_signal)
    if on_self_signal is not None:
        note_exits(on_self_signal)
    return fence


#: What a fenced process may not do to a protected pid: ``(system call, index of the pid
#: argument, index of the signal argument or None)``. A signal of 0 (a liveness probe) is
#: let through; the rest is refused whatever the request.
_FENCED_CALLS: tuple[tuple[str, int, int | None], ...] = (
    ("kill", 0, 1),
    ("tgkill", 0, 2),
    ("rt_sigqueueinfo", 0, 1),
    ("rt_tgsigqueueinfo", 0, 2),
    ("pidfd_open", 0, None),  # no pidfd to signal it with (pidfd_send_signal is refused)
    ("ptrace", 1, None),
    ("process_vm_writev", 0, None),
    ("process_vm_readv", 0, None),
    ("prlimit64", 0, None),
)
_PID_MASK = 0xFFFF_FFFF  # a pid_t is 32 bits; what the register holds above is not looked at


def fence_signals(protect: Iterable[int]) -> str:
    """Have the kernel refuse (``EPERM``) this process — and everything it starts, for
    the filter is inherited across ``fork`` and ``exec`` and cannot be removed — any
    signal to the processes in ``protect``, to their process groups and sessions, and to
    every process at once (``kill(-1)``); likewise ``ptrace``, ``pidfd_open``,
    ``process_vm_*`` and ``prlimit`` on them. ``tkill`` and ``pidfd_send_signal``, whose
    target a filter cannot see, are refused outright (the C library uses ``tgkill``).

    A seccomp filter, built with libseccomp (``pyseccomp``): this is what stops the ways
    around the audit hook (raw system calls, a function pointer taken before the hook, a
    ``kill`` command run as a child). It sets ``no_new_privs``: nothing the game starts
    gains privileges through a set-uid program. Call it after ``setsid`` (this process's
    own group and session are never refused) and before any user code runs.

    Returns a description: ``"seccomp: N processes, M groups fenced"``, or why there is no
    kernel fence (no libseccomp, a kernel without seccomp); never raises.
    """
    own = {os.getpid(), os.getpgid(0), os.getsid(0)}
    pids = sorted({p for p in protect if p > 1 and p not in own})
    groups: set[int] = set()
    for pid in pids:
        for get in (os.getpgid, os.getsid):
            try:
                group = get(pid)
            except OSError:
                continue
            if group > 1 and group not in own:
                groups.add(group)
    try:
        import pyseccomp as seccomp
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: no libseccomp
        return f"no seccomp ({exc}): signals fenced by the audit hook only"
    try:
        refuse = seccomp.ERRNO(errno.EPERM)
        rules = seccomp.SyscallFilter(seccomp.ALLOW)

        def arg(index: int, value: int) -> seccomp.Arg:
            return seccomp.Arg(index, seccomp.MASKED_EQ, _PID_MASK, value & _PID_MASK)

        def not_zero(index: int) -> seccomp.Arg:
            return seccomp.Arg(index, seccomp.NE, 0)

        for call, at, signum in _FENCED_CALLS:
            for pid in pids:
                extra = () if signum is None else (not_zero(signum),)
                rules.add_rule(refuse, call, arg(at, pid), *extra)
        for group in [*groups, 1]:  # kill(-1): every process this one may signal
            rules.add_rule(refuse, "kill", arg(0, -group), not_zero(1))
        rules.add_rule(refuse, "tkill", not_zero(1))
        rules.add_rule(refuse, "pidfd_send_signal", not_zero(1))
        rules.load()
    except (OSError, ValueError, RuntimeError) as exc:
        return f"no seccomp ({exc}): signals fenced by the audit hook only"
    return f"seccomp: {len(pids)} processes, {len(groups)} groups fenced"


def note_exits(on_exit: Callable[[int, str, int], None]) -> Callable[[int], NoReturn]:
    """Have ``os._exit`` (and ``posix._exit``) in this process call ``on_exit(0, file,
    line)`` first, with the line that called it.

    ``os._exit`` ends the process at once: no audit event (3.11 has none for it), no
    faulthandler dump, so without this the supervisor knows what ran but not the line.
    Only this process is noted: a child forked from it (the checkpointer's, or one user
    code forks) exits as before, its ``on_exit`` never called (it would write into the
    parent's shared heartbeat block). ``on_exit`` raising does not stop the exit.
    Returns the original function.
    """
    import posix

    real_exit = posix._exit
    own_pid = os.getpid()

    def _exit(status: int) -> NoReturn:
        if os.getpid() == own_pid:
            try:
                caller = sys._getframe(1)
                on_exit(0, caller.f_code.co_filename, caller.f_lineno)
            except BaseException:  # noqa: BLE001, S110 - the exit was asked for: it happens
                pass
        real_exit(status)

    _exit.__name__ = _exit.__qualname__ = "_exit"
    _exit.__doc__ = real_exit.__doc__
    _exit.unnoted = real_exit  # type: ignore[attr-defined]  # for an exit the engine names
    os._exit = posix._exit = _exit
    return real_exit


def limit_memory(limit_bytes: int) -> None:
    """Limit this process's private writable memory to ``limit_bytes`` (``RLIMIT_DATA``).

    Why ``RLIMIT_DATA`` and not ``RLIMIT_AS``: since Linux 4.7 ``RLIMIT_DATA`` counts
    private writable mappings — the heap, anonymous ``mmap`` (numpy arrays, Python's
    arenas), thread stacks — which is the memory a bomb really uses. ``RLIMIT_AS`` counts
    address space, and GPU drivers reserve many GB of it that they never use (NVIDIA's
    does), so a limit on it breaks GL on a GPU while passing on llvmpipe. Shared mappings
    (layers, the heartbeat, GPU device memory) are not counted either.

    An allocation past the limit fails (``MemoryError`` in Python, in the code that asked
    for it) instead of waking the OOM killer. Soft and hard limit are both set, so user
    code cannot raise it again. Raises ``ValueError``/``OSError`` if the kernel refuses.

    Leave room for the GL driver: measured after creating an EGL context, a game-like
    process had 149 MB of private writable memory on llvmpipe and 687 MB on NVIDIA's
    driver (580.159, H200); both drew under a 1 GiB ``RLIMIT_DATA``.
    """
    resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))


def default_memory_limit(fraction: float = 0.5) -> int:
    """``fraction`` of this machine's memory, or of the cgroup's limit if that is lower
    (a container): room for the compositor, the supervisor and everything else."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            total = min(total, int(text))
    except OSError:
        pass
    return int(total * fraction)


#: Signals that end a process whose code did not handle them (the engine's SIGTERM
#: handler stops the game: that counts too).
_ENDING = frozenset(
    {
        signal.SIGKILL,
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGHUP,
        signal.SIGABRT,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGALRM,
        signal.SIGPIPE,
    }
)
#: C functions that send signals; refused to ctypes lookups in the game.
_SIGNAL_FUNCTIONS = frozenset(
    {"kill", "killpg", "tgkill", "tkill", "sigqueue", "pidfd_send_signal", "raise"}
)


def refuse_signals_outside_session(
    on_self_signal: Callable[[int, str, int], None] | None = None,
) -> Callable[[str, tuple], None]:
    """Install an audit hook that refuses signals to processes outside this session.

    ``os.kill``, ``os.killpg`` (and the ``kill``-family names looked up through ctypes)
    raise ``PermissionError`` naming the target, unless it is in this process's session
    (the game and what it started) or the signal is 0 (a liveness probe). ``kill(-1)``
    (every process) is always refused. For a signal to this process or its group that
    may end it, ``on_self_signal(signum, file, line)`` runs first (where the call was
    made). Returns the hook (it cannot be removed: audit hooks last as long as the
    interpreter).
    """
    own_session = os.getsid(0)
    own_pid = os.getpid()

    def hook(event: str, args: tuple) -> None:
        if event == "os.kill" or event == "os.killpg":
            target, signum = args
            if signum == 0:
                return
            if event == "os.killpg":
                group = target if target > 0 else os.getpgid(0)
                pid = None
            elif target > 0:
                group, pid = None, target
            elif target == 0:
                group, pid = os.getpgid(0), None
            elif target == -1:
                raise PermissionError(
                    "the engine refuses to signal every process (kill -1) from a game"
                )
            else:
                group, pid = -target, None
            session = _session_of(pid=pid, group=group)
            if session is not None and session != own_session:
                what = f"process {pid}" if pid is not None else f"process group {group}"
                raise PermissionError(
                    f"the engine refuses signal {_signal_name(signum)} to {what}: it is "
                    "not part of this game (the supervisor and the compositor are off "
                    "limits to game code)"
                )
            ends_us = pid == own_pid or (pid is None and group == os.getpgid(0))
            if ends_us and signum in _ENDING and on_self_signal is not None:
                caller = sys._getframe(1)  # the code that called os.kill / os.killpg
                on_self_signal(signum, caller.f_code.co_filename, caller.f_lineno)
        elif event == "ctypes.dlsym" and len(args) >= 2 and args[1] in _SIGNAL_FUNCTIONS:
            raise PermissionError(
                f"the engine refuses ctypes access to {args[1]}() in a game: signals go "
                "through os.kill, which is limited to the game's own processes"
            )

    sys.addaudithook(hook)
    return hook


def _session_of(pid: int | None, group: int | None) -> int | None:
    """The session of process ``pid``, or of process group ``group``; ``None`` if it does
    not exist (the signal then fails by itself)."""
    try:
        if pid is not None:
            return os.getsid(pid)
        assert group is not None
        try:
            return os.getsid(group)  # the group's leader, if it is alive
        except ProcessLookupError:
            for stat in _all_stats():
                if stat.pgrp == group:
                    return stat.session
            return None
    except ProcessLookupError:
        return None
    except PermissionError:
        return -1  # not even visible to us: certainly not ours


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class ReportChannel:
    """Where a game's messages go: a copy of its stdout taken at start, written with
    ``os.write``.

    User code may close ``sys.stdout``, replace it, or close fds (``os.closerange``): the
    engine's messages go on, because the channel owns its fd (a duplicate, close-on-exec,
    above the range user code usually closes) and checks before each message that the fd
    is still the file it opened (an fd number closed and reused by user code would send
    messages into the user's file). If the fd is gone, it takes a fresh copy of fd 1 if
    that is still the same file, else drops messages and counts them (:attr:`dropped`).
    Never raises.
    """

    def __init__(self, fd: int = 1) -> None:
        self.dropped = 0
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        try:
            self._identity = _identity(fd)
            self._fd = keep_fd(fd)
        except OSError:
            self._fd = None

    def __call__(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "replace")
        fd = self._usable_fd()
        if fd is None:
            self.dropped += 1
            return
        try:
            while data:
                written = os.write(fd, data)
                data = data[written:]
        except InterruptedError:
            pass
        except OSError:
            self.dropped += 1

    def _usable_fd(self) -> int | None:
        if self._identity is None:
            return None
        if self._fd is not None:
            try:
                if _identity(self._fd) == self._identity:
                    return self._fd
            except OSError:
                pass
            self._fd = None  # closed, or the number now belongs to someone else
        try:
            if _identity(1) == self._identity:
                self._fd = keep_fd(1)
                return self._fd
        except OSError:
            pass
        return None

    def close(self) -> None:
        if self._fd is not None:
            try:
                if _identity(self._fd) == self._identity:
                    os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def keep_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` at a high number, past the range user code
    usually closes (``os.closerange(3, 1024)``) where the fd limit allows: the engine's own
    channels (crash dumps, reports, the parent sentinel) hold these. Raises ``OSError``
    for a bad ``fd``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096
    if soft < want + 1 and (hard == resource.RLIM_INFINITY or hard > want):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want + 1, hard))
            soft = want + 1
        except (ValueError, OSError):
            pass
    low = min(want, max(3, soft - 64))
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)


# --- the supervisor ---------------------------------------------------------------------


def become_subreaper(on: bool = True) -> bool:
    """Make this process a child subreaper (or stop being one): orphans of its
    descendants are re-parented to it, not to init. Returns False where refused."""
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)
    except OSError:
        return False
    return True


class _Stat:
    __slots__ = ("pid", "ppid", "pgrp", "session", "state")

    def __init__(self, pid: int, ppid: int, pgrp: int, session: int, state: str) -> None:
        self.pid, self.ppid, self.pgrp, self.session, self.state = pid, ppid, pgrp, session, state


def _stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return _Stat(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode())
    except (IndexError, ValueError):
        return None


def _all_stats() -> list[_Stat]:
    stats = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                stats.append(stat)
    return stats


def session_members(session: int) -> list[int]:
    """Every live process in ``session`` (zombies excluded)."""
    return [s.pid for s in _all_stats() if s.session == session and s.state != "Z"]


def kill_session(session: int) -> list[int]:
    """SIGKILL every process in ``session`` (a game's: its pid, as it called ``setsid``);
    returns their pids. Those that were re-parented to this process are reaped."""
    killed = []
    me = os.getpid()
    for stat in _all_stats():
        if stat.session != session or stat.pid == me:
            continue
        try:
            os.kill(stat.pid, signal.SIGKILL)
            killed.append(stat.pid)
        except OSError:
            continue
    _reap([pid for pid in killed if (_stat(pid) or _Stat(pid, 0, 0, 0, "")).ppid == me])
    return killed


def kill_orphans(keep: set[int]) -> list[int]:
    """SIGKILL and reap this process's children that it did not start: processes
    re-parented to it as a subreaper (their parent, in a game's tree, died).

    A child counts as started here if it is in ``keep`` or in this process's session
    (multiprocessing's and subprocess's children stay in it; a game and the warden, which
    leave it, go in ``keep``). Returns the pids killed.
    """
    me, own_session = os.getpid(), os.getsid(0)
    orphans = [
        s.pid
        for s in _all_stats()
        if s.ppid == me and s.pid not in keep and s.session != own_session
    ]
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    _reap(orphans)
    return orphans


def _reap(pids: list[int], timeout_s: float = 1.0) -> None:
    """Wait for ``pids`` (children of ours) to exit, so none is left a zombie."""
    import time

    deadline = time.monotonic() + timeout_s
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                waiting.discard(pid)
        if waiting:
            time.sleep(0.005)


# The warden: python -I -S, nothing imported but os, select, signal and sys. It reads
# "+SID" / "-SID" lines (a game's session starts / ended and was cleaned up). Once a second
# it adopts the sessions of processes that left a watched session (a child started with
# start_new_session) and of orphans re-parented to the supervisor in a session of their own.
# At end of file (the supervisor is gone, however it went) it kills every process in the
# sessions it holds, and exits.
_WARDEN = r"""
import os, select, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
supervisor, own = os.getppid(), os.getsid(0)
try:
    theirs = os.getsid(supervisor)
except OSError:
    theirs = -1
games, adopted = set(), set()

def procs():
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    data = f.read()
                fields = data[data.rfind(b")") + 2:].split()
                out.append((int(name), int(fields[1]), int(fields[3])))
            except (OSError, IndexError, ValueError):
                pass
    return out

def adopt():
    table = procs()
    watched = games | adopted
    inside = {pid for pid, _, sid in table if sid in watched}
    for pid, ppid, sid in table:
        if sid in watched or sid in (own, theirs):
            continue
        if ppid in inside or ppid == supervisor:
            adopted.add(sid)

fd, pending = sys.stdin.fileno(), b""
while True:
    ready, _, _ = select.select([fd], [], [], 1.0)
    if not ready:
        if games:
            adopt()
        continue
    data = os.read(fd, 4096)
    if not data:
        break
    pending += data
    *lines, pending = pending.split(b"\n")
    for line in lines:
        if line[:1] == b"+":
            games.add(int(line[1:]))
        elif line[:1] == b"-":
            games.discard(int(line[1:]))
            adopted.clear()  # the supervisor killed what the game left
doomed = games | adopted
for _ in range(3):
    for pid, _, sid in procs():
        if sid in doomed and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
"""


class Warden:
    """A small process that kills the game's session when the supervisor dies.

    The supervisor tells it each game's session (:meth:`watch`, :meth:`release`) over a
    pipe only the supervisor holds; when that pipe closes — the supervisor exited, was
    killed with SIGKILL, anything — the warden kills every process still in those
    sessions and exits. Once a second it also takes on the sessions of processes that
    left the game's (``start_new_session``) and of orphans in a session of their own that
    were re-parented to the supervisor (a double fork): a process the game started less
    than a second before the supervisor was killed may escape it that way. It runs in its
    own session, so Ctrl-C and the game's signals do not reach it. :meth:`close` ends it
    normally (it then kills what is left in the sessions it holds).
    """

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WARDEN],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def watch(self, session: int) -> None:
        self._send(f"+{session}\n")

    def release(self, session: int) -> None:
        self._send(f"-{session}\n")

    def _send(self, line: str) -> None:
        stdin = self.process.stdin
        if stdin is None:
            return
        try:
            stdin.write(line.encode())
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            if getattr(exc, "errno", None) not in (None, errno.EPIPE, errno.EBADF):
                raise

    def close(self, timeout_s: float = 5.0) -> None:
        """End the warden (it kills whatever is left in the sessions it still holds)."""
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

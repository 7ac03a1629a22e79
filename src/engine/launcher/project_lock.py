"""One ``engine run`` per project: ``PROJECT/.engine/run.lock``, held with ``flock``.

Two runs on one project would share its checkpoint, history and command folder, and
each would take the other's edits and commands. The first ``engine run`` takes an
exclusive lock on the file for its whole life and writes its pid into it; a second one
is refused and told that pid. The kernel drops the lock when the holder exits, however
it exits (a crash or ``kill -9`` leaves no stale lock to clean up).

Example:
    >>> with ProjectLock("my_game"):          # doctest: +SKIP
    ...     run_the_game()
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from engine.launcher.containment import keep_fd

LOCK_FILE = Path(".engine") / "run.lock"


class ProjectBusy(RuntimeError):
    """Another process holds the project's lock; ``pid`` is its id (``None``: unknown)."""

    def __init__(self, project_dir: Path, pid: int | None) -> None:
        self.project_dir = project_dir
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"{project_dir} is already running (engine run, {holder})")


class ProjectLock:
    """The exclusive right to run ``project_dir``.

    :meth:`acquire` creates ``PROJECT/.engine`` if needed and raises :class:`ProjectBusy`
    when another process holds the lock (never waits). The descriptor is not inherited
    by child processes, so the lock is this process's alone; :meth:`release` (or the
    process's exit) drops it.
    """

    def __init__(self, project_dir: str | Path) -> None:
        self.project_dir = Path(project_dir)
        self.path = self.project_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise ProjectBusy(self.project_dir, pid) from None
        # Truncate only once the lock is ours: the holder's pid is what a refused run reads.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        # Held at a high fd, out of reach of user code that closes descriptors in the same
        # process (--single-process): the flock belongs to the open file, so it stays held.
        self._fd = keep_fd(fd)
        os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)  # closing drops the flock
            except OSError:
                pass  # closed behind our back: the flock went with it
            self._fd = None

    def __enter__(self) -> ProjectLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None

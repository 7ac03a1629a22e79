"""Shared memory blocks and passing them to child processes.

Every block the engine shares is a memfd whose size is sealed: no process holding it can
shrink it under another's mapping (which would kill the reader with SIGBUS). The process
that creates a block owns its fd; a reader that must not write gets a read-only fd
(:func:`read_only_fd`), so it cannot map the block writable.
"""

from __future__ import annotations

import fcntl
import os
from multiprocessing import reduction

#: Size of the small fixed blocks (pose handoff, heartbeat).
BLOCK_BYTES = 4096


def sealed_memfd(name: str, size: int) -> int:
    """A close-on-exec memfd of ``size`` bytes whose size can never change again.

    Sealed against shrinking and growing (and against removing the seals), so no process
    holding it can truncate it under another's mapping. Raises ``OSError`` if refused.
    """
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_block_fd(name: str) -> int:
    """A zeroed, sealed :data:`BLOCK_BYTES` memfd for a pose or heartbeat block. The caller
    owns it."""
    return sealed_memfd(name, BLOCK_BYTES)


def read_only_fd(fd: int) -> int:
    """A new fd for the same block that can only be mapped read-only (for untrusted readers).

    Reopens the file through ``/proc/self/fd``; the caller owns the result.
    """
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


class PassedFd:
    """An fd to hand to a ``spawn``-context child as a ``Process`` argument.

    Pickling it (which ``Process.start`` does) registers the fd to be inherited by the
    child; the child receives a plain ``int`` naming its copy. Pickling outside
    ``Process.start`` raises (multiprocessing then has no child to pass it to).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        return (_detach, (reduction.DupFd(self.fd),))


def _detach(dup: object) -> int:
    return dup.detach()  # type: ignore[attr-defined]

"""Compiling system modules without holding the game's GIL for long.

``compile()`` is one C call, and it holds the GIL for all of it: measured here, a 5 MB
module took 0.7-2.8 s to compile, a stall no frame survives. Loading its result whole
is also one C call (``marshal.loads`` of 12 MB of code: 126 ms). So a source of
:data:`SMALL_SOURCE` bytes or more is compiled in a helper process
(:mod:`engine.loader.compile_helper`), which sends the module back as chunks of top-level
statements, each compiled on its own; the loader loads and runs them one by one, each a
short C call (about 1 ms for a 32 KB chunk), waiting at the frame gate before each.
Smaller sources, nearly all of them, compile in-process (under 1.5 ms for 4 KB).

The helper is started on first use, lives as long as the loader, and dies with the game
(``PR_SET_PDEATHSIG``, and it exits when its stdin closes). A helper that dies or takes
longer than ``limit_s`` is killed, the source is refused (a syntax-error-like
:class:`CompileFailed` or :class:`CompileTimeout`) and the next source starts a new one.
"""

from __future__ import annotations

import builtins
import marshal
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import CodeType

#: Sources at least this long (in characters) are compiled in the helper process.
SMALL_SOURCE = 4096
#: Source bytes per chunk the helper compiles on its own.
CHUNK_BYTES = 32 * 1024
#: Longest a compile in the helper may take.
COMPILE_LIMIT_S = 30.0

HELPER = Path(__file__).with_name("compile_helper.py")
_U32 = struct.Struct("<I")

#: What the loader runs: code objects, or marshalled code still to be loaded.
Chunk = CodeType | bytes


class CompileFailed(Exception):
    """The helper process died or answered nonsense while compiling."""


class CompileTimeout(Exception):
    """Compiling took longer than the compiler's limit."""


def first_nul_line(source: str) -> int | None:
    """The line of the first NUL character (``compile`` does not say where it is)."""
    at = source.find("\0")
    return None if at < 0 else source.count("\n", 0, at) + 1


def compile_in_process(source: str, path: str) -> list[Chunk]:
    """``[code]`` for ``source``; raises ``SyntaxError`` with a line number."""
    try:
        return [compile(source, path, "exec", dont_inherit=True)]
    except SyntaxError as exc:
        if exc.lineno is None:
            exc.lineno = first_nul_line(source)
        raise


class Compiler:
    """Turns a module's source into code chunks, big sources in a helper process.

    Args:
        limit_s: longest a compile in the helper may take.
        small_source: sources shorter than this compile in-process.
        chunk_bytes: source bytes per chunk the helper compiles on its own.
    """

    def __init__(
        self,
        limit_s: float = COMPILE_LIMIT_S,
        small_source: int = SMALL_SOURCE,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.limit_s = limit_s
        self.small_source = small_source
        self.chunk_bytes = chunk_bytes
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.started = 0  # helper processes started, for tests and stats

    def compile(self, source: str, path: str) -> list[Chunk]:
        """The module's code, in order. Raises ``SyntaxError`` (with a line number),
        :class:`CompileTimeout` or :class:`CompileFailed`."""
        if len(source) < self.small_source:
            return compile_in_process(source, path)
        with self._lock:
            return self._in_helper(source, path)

    def close(self) -> None:
        """Stop the helper (if one runs); the next big compile starts a new one."""
        with self._lock:
            self._stop()

    # -- the helper ----------------------------------------------------------------------
    def _start(self) -> subprocess.Popen[bytes]:
        # PR_SET_PDEATHSIG fires when the *thread* that started the helper ends: a loader
        # thread that is replaced takes its helper with it, and the next compile starts one.
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(HELPER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self.started += 1
        return proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _in_helper(self, source: str, path: str) -> list[Chunk]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._stop()
            proc = self._proc = self._start()
        header = marshal.dumps((path, sys.flags.optimize, self.chunk_bytes))
        text = source.encode("utf-8", "surrogatepass")
        deadline = time.monotonic() + self.limit_s
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(_U32.pack(len(header)) + header + _U32.pack(len(text)))
            proc.stdin.write(text)
            proc.stdin.flush()
            reader = _Reader(proc.stdout.fileno(), deadline)
            kind = reader.read(1)
            if kind == b"E":
                name, message, line, offset = marshal.loads(reader.read(reader.u32()))
                cls = getattr(builtins, name, SyntaxError)
                if not (isinstance(cls, type) and issubclass(cls, SyntaxError)):
                    message, cls = f"{name}: {message}", SyntaxError
                error = cls(message, (path, line or first_nul_line(source), offset, None))
                raise error
            if kind != b"K":
                raise CompileFailed(f"the compiler process answered {kind!r}")
            return [reader.read(reader.u32()) for _ in range(reader.u32())]
        except CompileTimeout:
            self._kill()
            raise CompileTimeout(
                f"compiling took longer than {self.limit_s:g} s (the compiler was stopped)"
            ) from None
        except (OSError, EOFError, ValueError) as exc:
            code = self._kill()
            raise CompileFailed(f"the compiler process died ({code or exc})") from None

    def _kill(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        proc.kill()
        code = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        return code


class _Reader:
    """Exact reads from a pipe with a deadline; the GIL is released while it waits."""

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.deadline = deadline
        self.buffer = bytearray()

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise CompileTimeout
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                raise CompileTimeout
            data = os.read(self.fd, max(n - len(self.buffer), 1 << 16))
            if not data:
                raise EOFError("the compiler process closed its output")
            self.buffer += data
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def u32(self) -> int:
        return _U32.unpack(self.read(4))[0]

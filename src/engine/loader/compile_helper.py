"""The compiler helper process: source in, marshalled code chunks out.

Run by :class:`engine.loader.compiler.Compiler` as ``python -I -S compile_helper.py``; it
imports nothing of the engine (it starts in milliseconds) and dies with the process that
started it (``PR_SET_PDEATHSIG``, and it exits when its stdin closes).

Protocol on stdin/stdout, little-endian lengths:

* request: ``u32 length`` + ``marshal((filename, optimize, chunk_bytes))``, then
  ``u32 length`` + the source in UTF-8 (raw bytes: marshalling 5 MB of text would hold
  the game's GIL for milliseconds)
* reply, compiled: ``b"K"`` + ``u32 count`` + ``count`` x (``u32 length`` + marshal of a
  code object). Each chunk is a run of consecutive top-level statements of about
  ``chunk_bytes`` of source, compiled on its own (same file name, same line numbers,
  the module's ``__future__`` flags; see :func:`compile_chunks`), so that the game loads
  and runs them one by one, each a short C call, and never holds the GIL for the whole
  module.
* reply, refused: ``b"E"`` + ``u32 length`` + ``marshal((type name, message, line, offset))``.
"""

from __future__ import annotations
import __future__

import marshal
import os
import re
import signal
import struct
import sys
import warnings

_U32 = struct.Struct("<I")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent dies (Linux; else a no-op)."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


#: Compiler flags of ``from __future__ import …``: chunks compile with the module's own.
FUTURE_FLAGS = 0
for _name in __future__.all_feature_names:
    FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag
#: Lines a chunk never starts at: the rest of a compound statement, or a string (the
#: first statement of a chunk that is a string would become the module's ``__doc__``).
NOT_A_START = re.compile(r"(else|elif|except|finally)\b|[rRbBuUfF]{0,2}['\"]")


def compile_chunks(source: str, filename: str, optimize: int, chunk_bytes: int) -> list[bytes]:
    """Compile ``source`` as runs of top-level statements; raises ``SyntaxError``.

    The module is cut before lines that start at column 0 with a name or ``@`` once a
    chunk holds ``chunk_bytes``; each chunk is compiled alone, after as many blank lines
    as precede it (line numbers stay true), with the ``__future__`` flags of the first.
    A cut inside a string, a bracket or a compound statement leaves a chunk that does not
    compile: it is joined to the next one. When a chunk does not compile, or brings in a
    ``__future__`` import of its own, the whole module is compiled once, so that errors
    (and their lines) are exactly Python's.
    """
    if len(source) <= chunk_bytes:
        return [marshal.dumps(_compile(source, filename, 0, optimize))]
    lines = source.splitlines(keepends=True)
    cuts = [0]
    size = 0
    for i, line in enumerate(lines):
        if (
            size >= chunk_bytes
            and (line[:1].isalpha() or line[:1] in "_@")
            and not NOT_A_START.match(line)
        ):
            cuts.append(i)
            size = 0
        size += len(line)
    cuts.append(len(lines))
    out: list[bytes] = []
    flags = 0
    start = 0
    whole_compiles = False
    for end in cuts[1:]:
        try:
            code = _compile("\n" * start + "".join(lines[start:end]), filename, flags, optimize)
        except (SyntaxError, ValueError):
            if not whole_compiles:
                _compile(source, filename, 0, optimize)  # raises the module's own error
                whole_compiles = True
            continue  # a cut in the middle of something: join the next chunk
        if not out:
            flags = code.co_flags & FUTURE_FLAGS
        elif code.co_flags & FUTURE_FLAGS & ~flags:
            _compile(source, filename, 0, optimize)  # a late __future__ import: refused
        out.append(marshal.dumps(code))
        start = end
    if start != len(lines):  # cannot happen for a module that compiled whole; be safe
        return [marshal.dumps(_compile(source, filename, 0, optimize))]
    return out


def _compile(text: str, filename: str, flags: int, optimize: int):  # noqa: ANN202
    return compile(text, filename, "exec", flags=flags, dont_inherit=True, optimize=optimize)


def _read_exact(stream, n: int) -> bytes | None:  # noqa: ANN001
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def main() -> None:
    die_with_parent()
    try:
        os.nice(10)  # compile on surplus CPU: the game's frame loop comes first
    except OSError:
        pass
    warnings.simplefilter("ignore")  # SyntaxWarnings are the game's to show, not ours
    rin, wout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = _read_exact(rin, 4)
        if head is None:
            return
        payload = _read_exact(rin, _U32.unpack(head)[0])
        if payload is None:
            return
        filename, optimize, chunk_bytes = marshal.loads(payload)
        head = _read_exact(rin, 4)
        raw = None if head is None else _read_exact(rin, _U32.unpack(head)[0])
        if raw is None:
            return
        source = raw.decode("utf-8", "surrogatepass")
        try:
            chunks = compile_chunks(source, filename, optimize, chunk_bytes)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            line = getattr(exc, "lineno", None)
            offset = getattr(exc, "offset", None)
            message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
            error = marshal.dumps((type(exc).__name__, message, line, offset))
            wout.write(b"E" + _U32.pack(len(error)) + error)
        else:
            wout.write(b"K" + _U32.pack(len(chunks)))
            for chunk in chunks:
                wout.write(_U32.pack(len(chunk)))
                wout.write(chunk)
        wout.flush()


if __name__ == "__main__":
    main()

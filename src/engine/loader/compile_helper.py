"""The compiler helper process: source in, marshalled code chunks out.

Run by :class:`engine.loader.compiler.Compiler` as ``python -I -S compile_helper.py``; it
imports nothing of the engine (it starts in milliseconds) and dies with the process that
started it (``PR_SET_PDEATHSIG``, and it exits when its stdin closes).

Protocol on stdin/stdout, little-endian lengths:

* request: ``u32 length`` + ``marshal((source, filename, optimize, chunk_bytes))``
* reply, compiled: ``b"K"`` + ``u32 count`` + ``count`` x (``u32 length`` + marshal of a
  code object). Each chunk is a run of consecutive top-level statements of about
  ``chunk_bytes`` of source, compiled on its own (same file name, same line numbers,
  the module's ``__future__`` flags), so that the game loads and runs them one by one,
  each a short C call, and never holds the GIL for the whole module.
* reply, refused: ``b"E"`` + ``u32 length`` + ``marshal((type name, message, line, offset))``.
"""

from __future__ import annotations
import __future__

import ast
import marshal
import os
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


def _line_starts(source: str) -> list[int]:
    starts = [0]
    pos = source.find("\n")
    while pos != -1:
        starts.append(pos + 1)
        pos = source.find("\n", pos + 1)
    return starts


def compile_chunks(source: str, filename: str, optimize: int, chunk_bytes: int) -> list[bytes]:
    """Compile ``source`` as runs of top-level statements; raises ``SyntaxError``."""
    tree = ast.parse(source, filename)
    body = tree.body
    flags = 0
    leading = True
    for i, node in enumerate(body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if is_future and not leading:
            # Compiled whole, the module would be refused: so is it compiled in chunks.
            raise SyntaxError(
                "from __future__ imports must occur at the beginning of the file",
                (filename, node.lineno, node.col_offset + 1, None),
            )
        if is_future:
            for alias in node.names:
                feature = getattr(__future__, alias.name, None)
                if feature is not None:
                    flags |= feature.compiler_flag
        elif not docstring:
            leading = False
    starts = _line_starts(source)

    def offset(line: int) -> int:
        return starts[min(line, len(starts)) - 1]

    groups: list[list[ast.stmt]] = []
    size = 0
    for node in body:
        length = offset((node.end_lineno or node.lineno) + 1) - offset(node.lineno)
        if not groups or size + length > chunk_bytes:
            groups.append([])
            size = 0
        groups[-1].append(node)
        size += max(length, 1)
    out = []
    for n, group in enumerate(groups or [[]]):
        first = group[0] if group else None
        if (
            n > 0
            and isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            # A string first in a chunk would become the module's __doc__.
            group = [ast.Pass(lineno=first.lineno, col_offset=0), *group]
        module = ast.Module(body=group, type_ignores=[])
        ast.fix_missing_locations(module)
        code = compile(module, filename, "exec", flags=flags, dont_inherit=True, optimize=optimize)
        out.append(marshal.dumps(code))
    return out


def _read_exact(stream, n: int) -> bytes | None:  # noqa: ANN001
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def main() -> None:
    die_with_parent()
    warnings.simplefilter("ignore")  # SyntaxWarnings are the game's to show, not ours
    rin, wout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = _read_exact(rin, 4)
        if head is None:
            return
        payload = _read_exact(rin, _U32.unpack(head)[0])
        if payload is None:
            return
        source, filename, optimize, chunk_bytes = marshal.loads(payload)
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

"""Runtime commands to a running game: JSON lines over a Unix socket, each with a reply.

A running game listens on ``PROJECT/.engine/control.sock`` (:class:`ControlServer`); the
``engine`` command connects, sends one request line and waits for one reply line
(:func:`request`)::

    → {"op": "undo", "module": "physics"}
    ← {"ok": true, "version": 3}
    → {"op": "enable"}
    ← {"ok": false, "error": "enable needs \\"system\\" (a string)"}

A request is one JSON object on one line (at most :data:`MAX_LINE` bytes) naming an
``op`` and its arguments. A reply always has ``ok``; a refused request has ``error``.
Whatever arrives — not JSON, not an object, an unknown op, a line too long, bytes that are
not UTF-8, a client that hangs up half-way — the server answers with an error where it
can and goes on serving; a connection may send several requests. The server itself
recovers from losing its socket (user code that closes every file descriptor): it
notices within ``check_s`` and listens again on a new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CONTROL_SOCKET = Path(".engine") / "control.sock"
#: Longest request line, in bytes.
MAX_LINE = 64 * 1024
#: How long a connection may stay silent before the server closes it.
IDLE_S = 60.0

Reply = dict[str, Any]
Handler = Callable[[dict[str, Any]], Reply]


class ControlUnavailable(OSError):
    """No game listens on the control socket."""


def socket_path(project_dir: Path) -> Path:
    return Path(project_dir) / CONTROL_SOCKET


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits AF_UNIX's 107 bytes: the path itself, or the same
    file reached through an open descriptor of its folder (``/proc/self/fd/N/name``)."""
    if len(os.fsencode(str(path))) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _error(message: str) -> Reply:
    return {"ok": False, "error": message}


_TOO_LONG = _error(f"request longer than {MAX_LINE} bytes")


def request(path: Path, message: dict[str, Any], timeout_s: float = 10.0) -> Reply:
    """Send ``message`` to the game listening on ``path`` and return its reply.

    Raises :class:`ControlUnavailable` when nothing listens there, ``TimeoutError`` when
    no reply comes within ``timeout_s`` (the game may still carry the command out).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout_s)
        try:
            with _address(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise ControlUnavailable(f"no game listens on {path} ({exc.strerror})") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        deadline = time.monotonic() + timeout_s
        while not data.endswith(b"\n"):
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = sock.recv(MAX_LINE)
            except TimeoutError:
                raise TimeoutError(f"the game did not answer within {timeout_s:g} s") from None
            if not chunk:
                raise ControlUnavailable("the game closed the connection without answering")
            data += chunk
        reply = json.loads(data)
        return reply if isinstance(reply, dict) else _error(f"malformed reply {reply!r}")
    finally:
        sock.close()


class ControlServer:
    """Serves control requests on a Unix socket, one thread per connection.

    Args:
        path: the socket file (an old one there is replaced).
        handle: answers a request (a dict with ``op``); it may take a while (the loader
            preparing an undo) and may raise: the client then gets the error.
        report: where the server's own trouble is told.
        check_s: how often the listening socket is checked (and stop is noticed).
    """

    def __init__(
        self,
        path: Path,
        handle: Handler,
        *,
        report: Callable[[str], None] = print,
        check_s: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.handle = handle
        self.report = report
        self.check_s = check_s
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of our socket file
        self._thread: threading.Thread | None = None
        self.rebinds = 0  # times the socket was lost and made again

    def start(self) -> None:
        """Listen (raises ``OSError`` if the socket cannot be made) and serve in a thread."""
        self._listen()
        self._thread = threading.Thread(target=self._serve, name="engine-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None and self._healthy(sock):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accept at once
        if self._thread is not None:
            self._thread.join(timeout=2 * self.check_s + 1)
        self._drop_socket()

    # -- the listening socket --------------------------------------------------------------
    def _listen(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # left by a game that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with _address(self.path) as address:
                sock.bind(address)
            sock.listen(16)
            sock.settimeout(self.check_s)
        except OSError:
            sock.close()
            raise
        st = os.stat(sock.fileno())
        self._sock, self._identity = sock, (st.st_dev, st.st_ino)

    def _healthy(self, sock: socket.socket | None) -> bool:
        """Whether ``sock`` is still our socket (user code may have closed its descriptor,
        and the number may now be some other file)."""
        if sock is None or sock.fileno() < 0:
            return False
        try:
            st = os.stat(sock.fileno())
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._healthy(sock):
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        else:
            sock.detach()  # the number is no longer ours to close

    def _serve(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            sock = self._sock
            try:
                if not self._healthy(sock):
                    raise OSError("the control socket was closed")
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                self._drop_socket()
                self.report(f"engine: the control socket failed ({exc}); listening again")
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 5.0)
                try:
                    self._listen()
                    self.rebinds += 1
                except OSError as again:
                    self.report(f"engine: cannot listen on {self.path}: {again}")
                continue
            delay = 0.05
            threading.Thread(
                target=self._converse, args=(conn,), name="engine-control-conn", daemon=True
            ).start()

    # -- one connection --------------------------------------------------------------------
    def _converse(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            conn.settimeout(IDLE_S)
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(MAX_LINE)
                except OSError:
                    return
                if not chunk:
                    return  # hung up (half a request, if any, is dropped)
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    reply = self._answer(line) if len(line) <= MAX_LINE else _TOO_LONG
                    if not self._reply(conn, reply):
                        return
                if len(buffer) > MAX_LINE:  # no end in sight: refuse and hang up
                    self._reply(conn, _TOO_LONG)
                    return

    def _answer(self, line: bytes) -> Reply:
        try:
            message = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return _error("a request is one line of UTF-8 JSON")
        except ValueError as exc:
            return _error(f"not JSON: {exc}")
        if not isinstance(message, dict):
            return _error(f'a request is a JSON object with an "op", not {message!r:.60}')
        try:
            reply = self.handle(message)
        except Exception as exc:  # the server goes on; the client is told
            self.report(f"engine: control request {message.get('op')!r} failed: {exc!r}")
            return _error(f"the game failed to carry it out: {type(exc).__name__}: {exc}")
        return reply if isinstance(reply, dict) else _error(f"malformed reply {reply!r:.60}")

    def _reply(self, conn: socket.socket, reply: Reply) -> bool:
        try:
            conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
        except OSError:
            return False
        return True

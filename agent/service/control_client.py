"""The command-line side of the control channel (agent.service.control): one request,
its reply, and what it means when the agent cannot be asked."""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path
from typing import Any

from agent.service.control import MAX_REQUEST, VERSION

REPLY_LIMIT = 16 * 1024 * 1024  # bytes: a status with every point of a large plant


class NotRunning(Exception):
    """No agent listens at the socket (exit 3, the LSB code for "not running")."""


class Unreachable(Exception):
    """The socket is there but may not be used (permissions), or the reply is broken."""


class Refused(Exception):
    """The agent answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def ask(path: Path, op: str, args: dict[str, Any] | None = None, *, timeout: float = 30.0) -> Any:
    """The result of `op` at the agent listening at `path`."""
    line = json.dumps({"v": VERSION, "op": op, "args": args or {}}).encode() + b"\n"
    if len(line) > MAX_REQUEST:
        raise Unreachable(f"the request is over {MAX_REQUEST} bytes")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        _connect(conn, path)
        conn.sendall(line)
        reply = _read_line(conn)
    try:
        decoded = json.loads(reply)
    except ValueError:
        raise Unreachable(f"the agent's reply is not JSON: {reply[:80]!r}") from None
    if not decoded.get("ok"):
        error = decoded.get("error") or {}
        raise Refused(str(error.get("code")), str(error.get("message")))
    return decoded.get("result")


def _connect(conn: socket.socket, path: Path) -> None:
    try:
        conn.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotRunning(f"orio-agent is not running (nothing listens at {path})") from None
    except PermissionError:
        raise Unreachable(
            f"cannot use {path}: permission denied (run as root, or join the group orio-agent)"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOTSOCK, errno.ENOTDIR):
            raise NotRunning(f"orio-agent is not running ({path} is not a socket)") from None
        raise Unreachable(f"cannot use {path}: {exc.strerror}") from None


def _read_line(conn: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            raise Unreachable("the agent did not answer in time") from None
        if not chunk:
            raise Unreachable("the agent closed the connection without a reply")
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)
        if size > REPLY_LIMIT:
            raise Unreachable(f"the agent's reply is over {REPLY_LIMIT} bytes")

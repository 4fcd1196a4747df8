"""The local control channel: a Unix socket where commands ask the running agent.

Protocol (version 1): one JSON object per line, UTF-8, both ways. A request is
`{"v": 1, "op": "<name>", "args": {...}, "id": <anything>}` (`args` and `id` optional);
its reply is `{"v": 1, "id": ..., "ok": true, "result": ...}` or
`{"v": 1, "id": ..., "ok": false, "error": {"code": ..., "message": ...}}`. A
connection may carry several requests, each answered in turn. Error codes:
`bad_request` (not JSON, not an object, a wrong field), `too_large` (a line over
MAX_REQUEST bytes; the connection is closed after the reply), `unsupported_version`,
`unknown_op`, `failed` (the operation itself failed; the message says why).

The socket is the access control: no TCP, no key. It is made mode 0660 and given the
group `group` when that group exists, so that the service's operators (members of
`orio-agent`) can ask and nobody else can. A request is logged at debug; a refused one
at warning, escaped and cut short (`control_request_refused`), once per connection.
A handler runs in its connection's task: it never holds up polling, and one that fails
unexpectedly answers `failed` and is logged with its traceback; the agent goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("agent.control")

VERSION = 1
MAX_REQUEST = 64 * 1024  # bytes in one request line
SOCKET_MODE = 0o660
IDLE_TIMEOUT = 60.0  # seconds a connection may wait between requests
_SHOWN = 200  # characters of a refused request, in its log line

Handler = Callable[[Mapping[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """A request an operation refuses; `code` goes into the reply."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class ControlServer:
    """Serves `handlers` (op name → coroutine of its args) on the socket at `path`."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler], *, group: str) -> None:
        self.path = path
        self._handlers = handlers
        self._group = group
        self.refused = 0  # requests answered with an error (for tests and the state)
        self._clients: set[asyncio.Task[Any]] = set()  # cancelled when the server stops

    async def run(self) -> None:
        """Serve until cancelled; a socket that cannot be made is logged, not fatal."""
        try:
            server = await self._listen()
        except OSError as exc:
            log.warning(
                "control_unavailable",
                socket=str(self.path),
                error=exc.strerror or str(exc),
                effect="status, poll-once and the other commands cannot reach this agent",
            )
            return
        log.info("control_listening", socket=str(self.path))
        try:
            async with server:
                await server.serve_forever()
        finally:
            for client in list(self._clients):  # a scan holding a line, say: stop it too
                client.cancel()
            with contextlib.suppress(OSError):
                if self.path.is_socket():
                    self.path.unlink()

    async def _listen(self) -> asyncio.Server:
        if self.path.is_socket():
            if _answers(self.path):
                raise OSError(f"another process is listening at {self.path}")
            self.path.unlink()  # left by an agent that was killed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Bound under a name of its own, given its mode and group, then renamed into place:
        # the socket never shows at its path with other permissions than its own (a
        # client, or the .deb's test, could find it between bind and chmod).
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(
            self._serve, path=str(staging), limit=MAX_REQUEST + 1
        )
        try:
            os.chmod(staging, SOCKET_MODE)
            with contextlib.suppress(KeyError, PermissionError):
                os.chown(staging, -1, grp.getgrnam(self._group).gr_gid)
            os.replace(staging, self.path)
        except OSError:
            server.close()
            staging.unlink(missing_ok=True)
            raise
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        said = False  # one refusal logged per connection
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        line = await reader.readuntil(b"\n")
                except (asyncio.IncompleteReadError, TimeoutError):
                    return  # the client is done, or has said nothing for too long
                except asyncio.LimitOverrunError:
                    reply = _error(None, "too_large", f"a request is at most {MAX_REQUEST} bytes")
                    said = self._refused(b"", "too_large", said)
                    writer.write(reply)
                    await writer.drain()
                    return
                reply, code = await self._answer(line)
                if code is not None:
                    said = self._refused(line, code, said)
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> tuple[bytes, str | None]:
        """The reply to one request line, and its error code if it is refused."""
        try:
            request = _parse(line)
        except ControlError as exc:
            return _error(None, exc.code, str(exc)), exc.code
        ident = request.get("id")
        op = request["op"]
        handler = self._handlers.get(op)
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            return _error(
                ident, "unknown_op", f"no operation {op!r} (known: {known})"
            ), "unknown_op"
        log.debug("control_request", op=op)
        try:
            result = await handler(request.get("args") or {})
            return _encode({"v": VERSION, "id": ident, "ok": True, "result": result}), None
        except ControlError as exc:
            return _error(ident, exc.code, str(exc)), exc.code
        except Exception as exc:  # a bug in an operation: said, answered, survived
            log.exception("control_operation_failed", op=op)
            return _error(ident, "failed", f"{type(exc).__name__}: {exc}"), "failed"

    def _refused(self, line: bytes, code: str, said: bool) -> bool:
        self.refused += 1
        if not said:
            shown = line[:_SHOWN].decode("utf-8", "backslashreplace")
            log.warning("control_request_refused", code=code, request=ascii(shown))
        return True


def _parse(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ControlError("bad_request", "a request is one JSON object on one line") from None
    if not isinstance(request, dict):
        raise ControlError("bad_request", "a request is a JSON object")
    if request.get("v") != VERSION:
        raise ControlError(
            "unsupported_version", f'this agent speaks version {VERSION} ("v": {VERSION})'
        )
    if not isinstance(request.get("op"), str):
        raise ControlError("bad_request", 'a request needs "op", a string')
    if not isinstance(request.get("args", {}), dict):
        raise ControlError("bad_request", '"args" must be an object')
    return request


def _error(ident: Any, code: str, message: str) -> bytes:
    return _encode(
        {"v": VERSION, "id": ident, "ok": False, "error": {"code": code, "message": message}}
    )


def _encode(reply: Mapping[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _answers(path: Path) -> bool:
    """Does a process listen at the socket `path`? (A stale one refuses connections.)"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True

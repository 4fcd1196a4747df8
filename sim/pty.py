"""A serial line for tests: two pseudo-terminals joined by socat.

Whatever is written to one end is read from the other, so a Modbus RTU server
(or a fake GPS) opens ``pair.device_a`` and the agent opens ``pair.device_b``
exactly as it would open ``/dev/ttyS1``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_POLL_INTERVAL = 0.005
_READY_NOTICE = "starting data transfer loop"


def socat_path() -> str:
    """Return the socat binary, or raise: tests needing it must fail, not skip."""
    found = shutil.which("socat") or next(
        (str(p) for p in (Path("/usr/bin/socat"), Path("/usr/local/bin/socat")) if p.exists()),
        None,
    )
    if found is None:
        raise RuntimeError("socat is not installed; serial-line tests need it (apt install socat)")
    return found


class PtyPair:
    """``socat -d -d pty,raw,echo=0,link=A pty,raw,echo=0,link=B`` as an object.

    Usable as a context manager; :meth:`start` returns once both links exist
    and socat has entered its transfer loop.
    """

    def __init__(
        self, directory: Path | str, *, name_a: str = "ttyA", name_b: str = "ttyB"
    ) -> None:
        self.directory = Path(directory)
        self.device_a = str(self.directory / name_a)
        self.device_b = str(self.directory / name_b)
        self._log_path = self.directory / f"socat-{name_a}-{name_b}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = STARTUP_TIMEOUT) -> PtyPair:
        """Start socat and wait until both ends can be opened."""
        if self._process is not None:
            raise RuntimeError("PtyPair already started")
        binary = socat_path()
        self.directory.mkdir(parents=True, exist_ok=True)
        for link in (self.device_a, self.device_b):
            Path(link).unlink(missing_ok=True)
        # socat logs to a file rather than a pipe: a pipe nobody drains could
        # fill up and block socat in the middle of a test.
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    binary,
                    "-d",
                    "-d",
                    f"pty,raw,echo=0,link={self.device_a}",
                    f"pty,raw,echo=0,link={self.device_b}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._wait_ready(timeout)
        return self

    def stop(self) -> None:
        """Terminate socat (both ends disappear)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                log = self.log_text()
                self._process = None
                raise RuntimeError(f"socat exited during start-up:\n{log}")
            if (
                _READY_NOTICE in self.log_text()
                and os.path.exists(self.device_a)
                and os.path.exists(self.device_b)
            ):
                return
            if time.monotonic() > deadline:
                log = self.log_text()
                self.stop()
                raise RuntimeError(f"socat not ready after {timeout} s:\n{log}")
            time.sleep(_POLL_INTERVAL)

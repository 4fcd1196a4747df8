"""systemd's notify protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

A no-op outside systemd (no NOTIFY_SOCKET). The watchdog is pinged from the event loop
itself, at half of WATCHDOG_USEC, so a blocked loop stops the pings and systemd
restarts the service.
"""

from __future__ import annotations

import os

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._notifier: sdnotify.SystemdNotifier | None = None
        if os.environ.get("NOTIFY_SOCKET"):
            self._notifier = sdnotify.SystemdNotifier()
        self._status = ""

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)

    def status(self, text: str) -> None:
        """STATUS=, sent only when it changed."""
        if text != self._status:
            self._status = text
            self.notify(f"STATUS={text}")

    @staticmethod
    def watchdog_interval() -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC); None when not asked."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 1_000_000 / 2

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.socket.close()
            self._notifier = None

"""systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING); a no-op outside systemd."""

from __future__ import annotations

import os

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._notifier: sdnotify.SystemdNotifier | None = None
        if os.environ.get("NOTIFY_SOCKET"):
            self._notifier = sdnotify.SystemdNotifier()

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.socket.close()
            self._notifier = None

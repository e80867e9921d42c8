"""sd_notify over $NOTIFY_SOCKET (a no-op when not run by systemd)."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, enabled: bool = True) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "") if enabled else ""
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        self.socket: socket.socket | None = None
        if address:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2

    def notify(self, *lines: str) -> None:
        if self.socket is None:
            return
        try:
            self.socket.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass  # systemd went away or the socket is full: nothing useful to do

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()

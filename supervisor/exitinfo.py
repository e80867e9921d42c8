"""How a child ended, decoded once from its wait status."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """``exit_code`` or ``signal`` (one is None); ``cause`` when the master killed the child."""

    pid: int
    exit_code: int | None
    signal: int | None
    cause: str | None = None

    @classmethod
    def from_status(cls, pid: int, status: int, cause: str | None = None) -> ExitInfo:
        if os.WIFSIGNALED(status):
            return cls(pid, None, os.WTERMSIG(status), cause)
        return cls(pid, os.waitstatus_to_exitcode(status), None, cause)

    def describe(self) -> str:
        if self.signal is not None:
            try:
                return signal.Signals(self.signal).name
            except ValueError:
                return f"signal {self.signal}"
        return f"exit code {self.exit_code}"

    @property
    def clean(self) -> bool:
        return self.exit_code == 0

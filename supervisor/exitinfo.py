"""How a child ended, decoded once from its wait status."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from enum import StrEnum


class KillCause(StrEnum):
    """Why the master killed a child; the application reads it as ``ExitInfo.cause``."""

    HARD_TIMEOUT = "hard timeout"  # a job ran past its hard deadline
    SHUTDOWN_TIMEOUT = "shutdown timeout"  # a graceful stop (TERM) outlasted shutdown_timeout
    INTERRUPTED = "interrupted"  # a fast stop (INT/QUIT) outlasted its grace

    @property
    def stop(self) -> bool:
        """The master was stopping: whatever the child ran is not to blame."""
        return self is not KillCause.HARD_TIMEOUT


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """``exit_code`` or ``signal`` (one is None); ``cause`` when the master killed the child."""

    pid: int
    exit_code: int | None
    signal: int | None
    cause: KillCause | None = None

    @classmethod
    def from_status(cls, pid: int, status: int, cause: KillCause | None = None) -> ExitInfo:
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

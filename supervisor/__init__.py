"""A generic prefork process manager: forks N children running a given function, restarts
them, runs the master's periodic tasks on timers, and tells systemd what is going on.

It knows processes, signals, timers and systemd; it never imports the job system. The
application plugs in through interface.py: hooks that get views, and settings it returns.
"""

from supervisor.child import ChildContext, HardTimeout, Interrupted
from supervisor.exitcodes import EX_CHILD_BOOT, EX_OK
from supervisor.exitinfo import ExitInfo, KillCause
from supervisor.interface import (
    ChildApp,
    ChildState,
    ChildView,
    MasterView,
    PeriodicTask,
    StopMode,
    SupervisorSettings,
)
from supervisor.master import Supervisor
from supervisor.scoreboard import Liveness, Scoreboard, Slot, SlotState

__all__ = [
    "EX_CHILD_BOOT", "EX_OK", "ChildApp", "ChildContext",
    "ChildState", "ChildView", "ExitInfo", "HardTimeout", "Interrupted", "KillCause", "Liveness", "MasterView",
    "PeriodicTask", "Scoreboard", "Slot", "SlotState", "StopMode", "Supervisor",
    "SupervisorSettings",
]

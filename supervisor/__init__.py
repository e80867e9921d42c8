"""A generic prefork process manager: forks N children running a given function, restarts
them, runs the master's periodic tasks on timers, and tells systemd what is going on.

It knows processes, signals, timers and systemd; it never imports the job system.
"""

from supervisor.child import ChildContext, HardTimeout, Interrupted
from supervisor.exitcodes import EX_CHILD_BOOT, EX_CONFIG, EX_OK, EX_UNAVAILABLE
from supervisor.exitinfo import ExitInfo
from supervisor.master import Child, ChildApp, PeriodicTask, Supervisor
from supervisor.scoreboard import Liveness, Scoreboard, Slot, SlotState

__all__ = [
    "EX_CHILD_BOOT", "EX_CONFIG", "EX_OK", "EX_UNAVAILABLE", "Child", "ChildApp", "ChildContext",
    "ExitInfo", "HardTimeout", "Interrupted", "Liveness", "PeriodicTask", "Scoreboard", "Slot", "SlotState",
    "Supervisor",
]

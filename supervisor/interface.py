"""The one-way boundary between the master and the application whose children it forks.

The master calls the application's hooks (``ChildApp``) and passes them what they need as
arguments: a read-only view of a child (``ChildView``) or of the whole master
(``MasterView``: its children and whether it is stopping). The application never holds the
master, and the master never stores anything in the application's objects: each side keeps
its own state, the application keyed by ``ChildView.key``. A reload returns the master's new
settings (``SupervisorSettings``) instead of reaching in to set them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from supervisor.child import ChildContext
    from supervisor.exitinfo import ExitInfo
    from supervisor.scoreboard import Slot, SlotState


class ChildState(enum.Enum):
    BOOTING = "booting"
    RUNNING = "running"
    RETIRING = "retiring"  # replaced: signalled to stop once a successor is ready
    STOPPING = "stopping"  # signalled to stop (shutdown, TTOU)

    @property
    def current(self) -> bool:
        """Counted toward the target number of children."""
        return self in (ChildState.BOOTING, ChildState.RUNNING)


class StopMode(enum.Enum):
    GRACEFUL = "graceful"  # TERM: running jobs finish, up to shutdown_timeout
    FAST = "fast"  # INT/QUIT: running jobs are interrupted


@dataclass(frozen=True, slots=True)
class ChildView:
    """One child as the application sees it: a snapshot, its slots readable only."""

    key: int  # unique for the master's life: what the application keys its own state by
    index: int
    generation: int
    pid: int  # 0 in prepare_child (before the fork)
    state: ChildState
    ready: bool
    _slots: tuple[Slot, ...] = field(repr=False)  # read through slots() and busy_slots() only

    @property
    def jobs(self) -> int:
        """How many jobs the child may run at once (one scoreboard slot each)."""
        return len(self._slots)

    def slots(self) -> list[SlotState]:
        return [s.read() for s in self._slots]

    def busy_slots(self) -> int:
        return sum(1 for s in self._slots if s.read().busy)


@dataclass(frozen=True, slots=True)
class MasterView:
    children: tuple[ChildView, ...]
    stopping: StopMode | None


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    """The master's knobs that a reload may change; the next generation of children uses them."""

    concurrency: int
    shutdown_timeout: float = 30.0
    hard_timeout_grace: float = 5.0
    max_jobs_per_child: int | None = None
    max_memory_per_child: int | None = None  # bytes


@dataclass(slots=True)
class PeriodicTask:
    name: str
    interval: float
    fn: Callable[[float, MasterView], object]  # (wall-clock now, the master's view)
    run_at_start: bool = True


class ChildApp(Protocol):
    def prepare_child(self, child: ChildView) -> None: ...
    def child_main(self, ctx: ChildContext) -> int: ...
    def child_exited(self, child: ChildView, info: ExitInfo) -> None: ...
    def reload(self) -> SupervisorSettings: ...
    def status_line(self, master: MasterView) -> str: ...
    def tasks(self) -> list[PeriodicTask]: ...
    def shutdown(self) -> None: ...

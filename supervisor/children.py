"""The master's own record of one child (the application sees a ``ChildView`` of it)."""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.exitinfo import KillCause
from supervisor.interface import ChildState, ChildView
from supervisor.scoreboard import Slot


@dataclass(eq=False)
class Child:
    key: int
    index: int
    generation: int
    slot_number: int
    # one sub-slot per job the child may run at once (jobs_per_child); slots[0] is its slot
    slots: list[Slot]
    pid: int = 0
    started_mono: float = 0.0
    state: ChildState = ChildState.BOOTING
    ready: bool = False
    ready_mono: float = 0.0
    kill_cause: KillCause | None = None
    max_jobs: int | None = None
    fatal: str | None = None
    pipe_fd: int = -1
    buffer: bytes = b""
    timeout_seq: int | None = None  # the job (slot sequence) sent the hard-timeout signal
    timeout_sent: float = 0.0
    born_over_memory: bool = False  # over the limit at its first check: recycling cannot help
    term_sent: bool = False  # retiring, and told to stop now that a successor is ready

    @property
    def slot(self) -> Slot:
        return self.slots[0]

    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.read().busy)

    def jobs_done(self) -> int:
        return sum(s.read().jobs_done for s in self.slots)

    def view(self) -> ChildView:
        return ChildView(self.key, self.index, self.generation, self.pid, self.state, self.ready,
                         tuple(self.slots))

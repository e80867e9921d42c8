"""Master-side child records over a real scoreboard, for the tick tests: no processes."""

from __future__ import annotations

from supervisor.children import Child
from supervisor.scoreboard import Scoreboard


def make_child(board: Scoreboard, number: int = 0, *, pid: int = 1000, ready: bool = True,
               started: float = 0.0, ready_at: float = 0.0) -> Child:
    slots = board.slots(number)
    for slot in slots:
        slot.reset()
    return Child(number, number, 0, number, slots, pid=pid, started_mono=started, ready=ready,
                 ready_mono=ready_at)

"""The master's periodic tasks on one heap of due times (monotonic seconds)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from supervisor.interface import PeriodicTask


class Timers:
    def __init__(self, tasks: Iterable[PeriodicTask], now: float) -> None:
        self.heap: list[tuple[float, int, PeriodicTask]] = []
        for order, task in enumerate(tasks):
            first = now if task.run_at_start else now + task.interval
            heapq.heappush(self.heap, (first, order, task))

    def wait(self, now: float, longest: float) -> float:
        """How long the loop may sleep before the next task is due (at most ``longest``)."""
        if not self.heap:
            return longest
        return max(0.0, min(longest, self.heap[0][0] - now))

    def run_due(self, now: float, run: Callable[[PeriodicTask], float]) -> int:
        """Run each task due at ``now`` once; ``run`` runs one and returns when it finished.

        After a stall (a slow task, a frozen master) missed runs are skipped rather than
        run in a burst: the next run is one interval after the later of now and the end."""
        ran = 0
        while self.heap and self.heap[0][0] <= now:
            _, order, task = heapq.heappop(self.heap)
            finished = run(task)
            heapq.heappush(self.heap, (max(now, finished) + task.interval, order, task))
            ran += 1
        return ran

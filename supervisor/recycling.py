"""Recycling: a child is replaced after its job budget (max_jobs_per_child, with jitter so
that children forked together do not all retire together) or once it grows over
max_memory_per_child. The caller retires at most one child at a time."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil
import structlog

from supervisor.children import Child

log = structlog.get_logger("supervisor")


def resident_memory(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


@dataclass(kw_only=True)
class Recycler:
    max_jobs: int | None
    max_memory: int | None  # bytes
    jitter: float = 0.1
    check_interval: float = 5.0
    rss: Callable[[int], int | None] = resident_memory
    uniform: Callable[[float, float], float] = random.uniform
    next_memory_check: float = 0.0

    def job_budget(self) -> int | None:
        """A new child's max jobs."""
        if not self.max_jobs:
            return None
        return int(self.max_jobs * (1 + self.uniform(0, self.jitter)))

    def check_newborn(self, child: Child) -> None:
        """A child over the limit as soon as it is ready would be replaced by one just as big:
        recycling it would only be a respawn loop, so it is left alone, and said so once."""
        if not self.max_memory:
            return
        rss = self.rss(child.pid)
        if rss is not None and rss > self.max_memory:
            child.born_over_memory = True
            log.warning("a new child is already over the memory limit; not recycling it",
                        index=child.index, rss=rss, limit=self.max_memory)

    def pick(self, current: Iterable[Child], now: float) -> tuple[Child, str] | None:
        """The ready child to recycle now and why, if any."""
        check_memory = bool(self.max_memory) and now >= self.next_memory_check
        if check_memory:
            self.next_memory_check = now + self.check_interval
        for child in current:
            if not child.ready:
                continue
            if child.max_jobs and child.jobs_done() >= child.max_jobs:
                return child, "max jobs"
            if check_memory and self.max_memory and not child.born_over_memory:
                rss = self.rss(child.pid)
                if rss is not None and rss > self.max_memory:
                    return child, "memory limit"
        return None

"""Crash-loop backoff: children that fail at start are forked one at a time, ever slower.

Only a child that fails at start is a crash loop to back off from. A child that dies running
a job (the job's segfault, os._exit, an OOM kill, a SIGKILL) is replaced at once: the
application counts the job's crash, while backing off would leave every queue without a
worker over one bad job.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable

import structlog

from supervisor.children import Child
from supervisor.exitinfo import ExitInfo

log = structlog.get_logger("supervisor")

# A ready child that dies this soon after it was ready, running no job, failed at start as
# surely as one that never got ready (nothing to blame but its own code or environment);
# a child alive this long after ready proves the children boot again.
BOOT_GRACE = 2.0
MAX_BACKOFF = 60.0


def start_failure(child: Child, info: ExitInfo, busy: bool, now: float) -> str | None:
    """Why an unexpected death is a failure at start, or None when it is not one."""
    if not child.ready:
        return child.fatal or (f"child exited with {info.describe()} "
                               f"{now - child.started_mono:.1f}s after start, before it was ready")
    # SIGKILL comes from outside (the OOM killer, an operator, a kill storm), not from the
    # child's own code: such a child is replaced at once
    if not busy and now - child.ready_mono < BOOT_GRACE and info.signal != signal.SIGKILL:
        return (f"child exited with {info.describe()} {now - child.ready_mono:.1f}s "
                "after it was ready, running no job")
    return None


class CrashLoop:
    def __init__(self) -> None:
        self.failures = 0
        self.next_spawn_at = 0.0
        self.reason: str | None = None
        self.last_failure = 0.0  # monotonic time of the last start failure

    @property
    def delay(self) -> float:
        return min(MAX_BACKOFF, 2.0 ** (self.failures - 1))

    def failed(self, reason: str, now: float) -> None:
        self.failures += 1
        self.last_failure = now
        self.next_spawn_at = now + self.delay
        self.reason = reason
        log.error("children are failing at start; backing off", failures=self.failures,
                  retry_in=self.delay, reason=reason)

    def may_spawn(self, now: float) -> bool:
        return now >= self.next_spawn_at

    def to_spawn(self, missing: int) -> int:
        """While children are failing, one fork at a time: never a fork storm."""
        return min(1, missing) if self.failures else missing

    def spawned(self, now: float) -> None:
        if self.failures:
            self.next_spawn_at = now + self.delay

    def end_if_healthy(self, current: Iterable[Child], now: float) -> bool:
        """Children boot and stay up again: clear the backoff (True when it was on).

        Only a child forked after the last failure proves it: an old healthy child says
        nothing about a sibling that keeps failing at boot, which must go on backing off."""
        if self.failures and any(
            c.ready and c.started_mono > self.last_failure and now - c.ready_mono >= BOOT_GRACE
            for c in current
        ):
            log.info("children are healthy again; crash loop over", failures=self.failures)
            self.reset()
            return True
        return False

    def reset(self) -> None:
        self.failures = 0
        self.reason = None
        self.next_spawn_at = 0.0

    def status(self) -> str:
        return f"; crash loop: {self.reason}" if self.failures and self.reason else ""

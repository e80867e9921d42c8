"""Hard timeouts, read from the scoreboard: each job's deadline is in its slot."""

from __future__ import annotations

import signal

import structlog

from supervisor.child import HARD_TIMEOUT_SIGNAL
from supervisor.children import Child
from supervisor.exitinfo import KillCause

log = structlog.get_logger("supervisor")



def enforce(child: Child, now: float, grace: float) -> int | None:
    """The signal to send ``child`` now, if any: first the hard-timeout signal (the job may
    clean up), then SIGKILL once ``grace`` seconds later the same job still runs."""
    if len(child.slots) > 1:
        return _enforce_shared(child, now)
    state = child.slot.read()
    if not state.busy or state.deadline is None or now < state.deadline:
        child.timeout_seq = None
        return None
    if child.timeout_seq != state.seq:
        child.timeout_seq = state.seq
        child.timeout_sent = now
        log.warning("hard timeout; interrupting the job", index=child.index, pid=child.pid,
                    job=state.label)
        return HARD_TIMEOUT_SIGNAL
    if now - child.timeout_sent > grace and child.kill_cause is None:
        child.kill_cause = KillCause.HARD_TIMEOUT
        log.error("hard timeout; killing the child", index=child.index, pid=child.pid,
                  job=state.label)
        return signal.SIGKILL
    return None


def _enforce_shared(child: Child, now: float) -> int | None:
    """A child running several jobs at once cannot interrupt one of them (a thread cannot
    be interrupted, and a signal would hit whichever job the main thread runs): a job past
    its hard timeout recycles the whole child at once. The application judges the jobs
    (child_exited): the late ones failed, the others go back to their queues uncounted."""
    if child.kill_cause is not None:
        return None
    for slot in child.slots:
        state = slot.read()
        if state.busy and state.deadline is not None and now >= state.deadline:
            child.kill_cause = KillCause.HARD_TIMEOUT
            log.error("hard timeout; killing the child", index=child.index, pid=child.pid,
                      job=state.label, in_flight=child.busy_slots())
            return signal.SIGKILL
    return None

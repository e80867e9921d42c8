"""Hard timeouts from the scoreboard, ticked with an explicit clock."""

from __future__ import annotations

import signal

from fakes import make_child

from supervisor.child import HARD_TIMEOUT_SIGNAL
from supervisor.exitinfo import KillCause
from supervisor.scoreboard import Scoreboard
from supervisor.watchdog import enforce


def test_a_job_past_its_deadline_is_signalled_then_killed_after_the_grace() -> None:
    child = make_child(Scoreboard(1))
    child.slot.begin("j1 slow", deadline=100.0)
    assert enforce(child, 99.9, grace=5.0) is None
    assert enforce(child, 100.0, grace=5.0) == HARD_TIMEOUT_SIGNAL
    assert enforce(child, 104.0, grace=5.0) is None  # the job may still clean up
    assert enforce(child, 105.0, grace=5.0) is None
    assert child.kill_cause is None
    assert enforce(child, 105.1, grace=5.0) == signal.SIGKILL
    assert child.kill_cause is KillCause.HARD_TIMEOUT
    assert enforce(child, 110.0, grace=5.0) is None  # killed once


def test_each_late_job_gets_its_own_signal_and_grace() -> None:
    child = make_child(Scoreboard(1))
    child.slot.begin("j1 slow", deadline=100.0)
    assert enforce(child, 100.0, grace=5.0) == HARD_TIMEOUT_SIGNAL
    child.slot.end()  # the job gave up at the signal, and the next one is late too
    child.slot.begin("j2 slow", deadline=102.0)
    assert enforce(child, 103.0, grace=5.0) == HARD_TIMEOUT_SIGNAL  # a new job: signalled anew
    assert enforce(child, 108.0, grace=5.0) is None  # its grace counts from its own signal
    assert enforce(child, 108.1, grace=5.0) == signal.SIGKILL


def test_jobs_without_a_deadline_or_idle_slots_are_left_alone() -> None:
    child = make_child(Scoreboard(1))
    assert enforce(child, 1e9, grace=0.0) is None
    child.slot.begin("j1 forever", deadline=None)
    assert enforce(child, 1e9, grace=0.0) is None


def test_a_child_running_several_jobs_is_killed_at_once_when_one_is_late() -> None:
    child = make_child(Scoreboard(1, per_child=3))
    child.slots[0].begin("j1 fast", deadline=200.0)
    child.slots[2].begin("j3 slow", deadline=100.0)
    assert enforce(child, 99.0, grace=5.0) is None
    assert enforce(child, 100.0, grace=5.0) == signal.SIGKILL  # no signal first, no grace
    assert child.kill_cause is KillCause.HARD_TIMEOUT
    assert enforce(child, 101.0, grace=5.0) is None

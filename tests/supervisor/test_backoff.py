"""Crash-loop backoff, ticked with an explicit clock: which deaths count, how long it waits,
when it ends."""

from __future__ import annotations

import signal

import pytest
from fakes import make_child

from supervisor.backoff import BOOT_GRACE, MAX_BACKOFF, CrashLoop, start_failure
from supervisor.exitinfo import ExitInfo
from supervisor.scoreboard import Scoreboard

EXIT1 = ExitInfo(1000, 1, None)
KILLED = ExitInfo(1000, None, signal.SIGKILL)
SEGV = ExitInfo(1000, None, signal.SIGSEGV)


def test_the_delay_doubles_from_one_second_up_to_a_minute() -> None:
    loop = CrashLoop()
    delays = []
    for n in range(9):
        loop.failed("boom", now=float(n))
        delays.append(loop.next_spawn_at - n)
    assert delays == [1, 2, 4, 8, 16, 32, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]


def test_while_failing_it_forks_one_child_at_a_time_after_the_delay() -> None:
    loop = CrashLoop()
    assert loop.may_spawn(0.0) and loop.to_spawn(4) == 4  # healthy: all missing at once
    loop.spawned(0.0)
    assert loop.may_spawn(0.0)  # and at once again
    loop.failed("boom", now=10.0)
    loop.failed("boom", now=10.0)
    assert not loop.may_spawn(11.9) and loop.may_spawn(12.0)
    assert loop.to_spawn(4) == 1 and loop.to_spawn(0) == 0
    loop.spawned(12.5)
    assert not loop.may_spawn(14.4) and loop.may_spawn(14.5)
    assert loop.status() == "; crash loop: boom"


def test_a_child_that_never_got_ready_failed_at_start() -> None:
    board = Scoreboard(2)
    child = make_child(board, ready=False, started=5.0)
    assert start_failure(child, EXIT1, busy=False, now=8.0) == (
        "child exited with exit code 1 3.0s after start, before it was ready")
    child.fatal = "ImportError: no module named my_jobs"  # what its pipe said
    assert start_failure(child, KILLED, busy=False, now=8.0) == child.fatal


@pytest.mark.parametrize(("info", "busy", "after_ready", "counts"), [
    (EXIT1, False, BOOT_GRACE - 0.1, True),  # ready, then dead running nothing: its own code
    (SEGV, False, 0.5, True),
    (EXIT1, False, BOOT_GRACE, False),  # alive long enough: a later death is no start failure
    (EXIT1, True, 0.1, False),  # died running a job: the job's crash, replaced at once
    (KILLED, False, 0.1, False),  # SIGKILL comes from outside (OOM killer, operator)
])
def test_which_deaths_of_a_ready_child_are_start_failures(info, busy, after_ready, counts) -> None:
    child = make_child(Scoreboard(1), ready=True, started=0.0, ready_at=10.0)
    assert (start_failure(child, info, busy, now=10.0 + after_ready) is not None) is counts


def test_the_loop_ends_only_when_a_child_forked_after_the_last_failure_stays_up() -> None:
    board = Scoreboard(3)
    old = make_child(board, 0, started=0.0, ready_at=1.0)  # healthy for ever
    loop = CrashLoop()
    loop.failed("boom", now=20.0)
    assert not loop.end_if_healthy([old], now=30.0)  # a sibling's health proves nothing
    new = make_child(board, 1, started=21.0, ready_at=22.0)
    assert not loop.end_if_healthy([old, new], now=22.0 + BOOT_GRACE - 0.1)
    assert loop.failures == 1
    assert loop.end_if_healthy([old, new], now=22.0 + BOOT_GRACE)
    assert loop.failures == 0 and loop.reason is None and loop.may_spawn(22.0) and loop.status() == ""
    assert not loop.end_if_healthy([old, new], now=100.0)  # nothing to end

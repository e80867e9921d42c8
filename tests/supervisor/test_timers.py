"""The master's timer heap, ticked with an explicit clock: no sleeping."""

from __future__ import annotations

from supervisor.interface import PeriodicTask
from supervisor.timers import Timers


class Runner:
    """Runs a task by noting its name; each run takes ``took`` seconds of the fake clock."""

    def __init__(self, took: float = 0.0) -> None:
        self.took = took
        self.now = 0.0
        self.ran: list[str] = []

    def tick(self, timers: Timers, now: float) -> list[str]:
        self.now, self.ran = now, []
        timers.run_due(now, self)
        return self.ran

    def __call__(self, task: PeriodicTask) -> float:
        self.ran.append(task.name)
        return self.now + self.took


def task(name: str, interval: float, run_at_start: bool = True) -> PeriodicTask:
    return PeriodicTask(name, interval, lambda now, master: None, run_at_start)


def test_tasks_run_at_start_or_one_interval_later_and_then_every_interval() -> None:
    timers = Timers([task("a", 1.0), task("b", 5.0, run_at_start=False)], now=100.0)
    run = Runner()
    assert run.tick(timers, 100.0) == ["a"]
    assert run.tick(timers, 100.5) == []
    assert [run.tick(timers, t) for t in (101.0, 102.0, 103.0, 104.0)] == [["a"]] * 4
    assert run.tick(timers, 104.9) == []
    assert run.tick(timers, 105.0) == ["a", "b"]  # in the order they were given
    assert run.tick(timers, 109.9) == ["a"]  # late: once, and next at 110.9
    assert run.tick(timers, 110.0) == ["b"]
    assert run.tick(timers, 110.9) == ["a"]


def test_a_stall_skips_missed_runs_instead_of_bursting() -> None:
    timers = Timers([task("a", 1.0)], now=0.0)
    run = Runner()
    assert run.tick(timers, 0.0) == ["a"]
    assert run.tick(timers, 30.0) == ["a"]  # 29 runs missed: one now
    assert run.tick(timers, 30.9) == []
    assert run.tick(timers, 31.0) == ["a"]


def test_a_slow_task_runs_again_one_interval_after_it_finished() -> None:
    timers = Timers([task("a", 1.0)], now=0.0)
    run = Runner(took=3.0)
    assert run.tick(timers, 0.0) == ["a"]  # finished at 3.0
    assert run.tick(timers, 3.9) == []
    assert run.tick(timers, 4.0) == ["a"]


def test_the_loop_sleeps_until_the_next_task_at_most_the_housekeeping_period() -> None:
    timers = Timers([task("a", 10.0, run_at_start=False)], now=0.0)
    assert timers.wait(0.0, 0.25) == 0.25
    assert timers.wait(9.875, 0.25) == 0.125
    assert timers.wait(11.0, 0.25) == 0.0
    assert Timers([], 0.0).wait(5.0, 0.25) == 0.25

"""Recycling by job budget and memory, ticked with an explicit clock and a fake RSS."""

from __future__ import annotations

from fakes import make_child

from supervisor.recycling import Recycler
from supervisor.scoreboard import Scoreboard

MB = 2**20


def finish_jobs(child, n: int) -> None:
    for i in range(n):
        child.slot.begin(f"j{i} work", None)
        child.slot.end()


def test_the_job_budget_has_jitter_so_siblings_do_not_retire_together() -> None:
    assert Recycler(max_jobs=None, max_memory=None).job_budget() is None
    low = Recycler(max_jobs=1000, max_memory=None, jitter=0.1, uniform=lambda a, b: a)
    high = Recycler(max_jobs=1000, max_memory=None, jitter=0.1, uniform=lambda a, b: b)
    assert (low.job_budget(), high.job_budget()) == (1000, 1100)


def test_a_child_is_recycled_once_its_job_budget_is_done() -> None:
    recycler = Recycler(max_jobs=3, max_memory=None)
    child = make_child(Scoreboard(1))
    child.max_jobs = 3
    finish_jobs(child, 2)
    assert recycler.pick([child], now=0.0) is None
    finish_jobs(child, 1)
    assert recycler.pick([child], now=0.0) == (child, "max jobs")
    child.ready = False  # not before it is ready
    assert recycler.pick([child], now=0.0) is None


def test_memory_is_checked_every_interval_and_a_child_over_the_limit_is_recycled() -> None:
    rss = {1000: 50 * MB, 1001: 90 * MB}
    recycler = Recycler(max_jobs=None, max_memory=80 * MB, check_interval=5.0, rss=rss.get)
    board = Scoreboard(2)
    small, big = make_child(board, 0, pid=1000), make_child(board, 1, pid=1001)
    assert recycler.pick([small, big], now=10.0) == (big, "memory limit")
    rss[1000] = 100 * MB
    assert recycler.pick([small], now=14.9) is None  # not checked again before the interval
    assert recycler.pick([small], now=15.0) == (small, "memory limit")
    rss.pop(1000)  # gone: nothing to recycle
    assert recycler.pick([small], now=20.0) is None


def test_a_child_born_over_the_limit_is_never_recycled_for_memory() -> None:
    rss = {1000: 120 * MB}
    recycler = Recycler(max_jobs=None, max_memory=80 * MB, check_interval=1.0, rss=rss.get)
    child = make_child(Scoreboard(1), pid=1000)
    recycler.check_newborn(child)
    assert child.born_over_memory
    assert [recycler.pick([child], now=float(t)) for t in range(5)] == [None] * 5
    other = make_child(Scoreboard(1), pid=1000)
    Recycler(max_jobs=None, max_memory=200 * MB, rss=rss.get).check_newborn(other)
    assert not other.born_over_memory

"""The master's signal actions on its own records, without forking: TTIN/TTOU, stops,
reload (the application returns the new settings)."""

from __future__ import annotations

import subprocess

import pytest
from fakes import make_child

from supervisor.interface import ChildState, MasterView, StopMode, SupervisorSettings
from supervisor.master import Supervisor
from supervisor.scoreboard import Scoreboard


class App:
    def __init__(self, settings: SupervisorSettings | None = None) -> None:
        self.settings = settings

    def reload(self) -> SupervisorSettings:
        if self.settings is None:
            raise RuntimeError("bad config")
        return self.settings

    def status_line(self, master: MasterView) -> str:
        return f"{len(master.children)} children, stopping={master.stopping}"


def master(app: App | None = None, concurrency: int = 2) -> Supervisor:
    return Supervisor(app or App(), SupervisorSettings(concurrency), notify=False)  # type: ignore[arg-type]


@pytest.fixture
def sleeper():
    process = subprocess.Popen(["sleep", "30"])
    yield process
    process.kill()
    process.wait()


def test_ttou_never_goes_below_one_child_and_ttin_grows() -> None:
    sup = master(concurrency=2)
    sup.shrink()
    assert sup.target == 1
    sup.shrink()
    sup.shrink()
    assert sup.target == 1
    sup.grow()
    assert sup.target == 2
    assert master(concurrency=0).target == 1


def test_ttou_stops_the_child_with_the_highest_index(sleeper) -> None:
    sup = master(concurrency=2)
    board = Scoreboard(2)
    low, high = make_child(board, 0, pid=sleeper.pid), make_child(board, 1, pid=sleeper.pid)
    sup.children = [high, low]
    sup.shrink()
    assert (low.state, high.state) == (ChildState.BOOTING, ChildState.STOPPING)
    assert sleeper.wait(5) == -15  # SIGTERM: a graceful stop of that child


def test_a_fast_stop_overrides_a_graceful_one_and_not_the_other_way() -> None:
    sup = master()
    sup.stop(StopMode.GRACEFUL)
    assert sup.stopping is StopMode.GRACEFUL
    sup.stop(StopMode.FAST)
    assert sup.stopping is StopMode.FAST
    sup.stop(StopMode.GRACEFUL)
    assert sup.stopping is StopMode.FAST
    assert sup._status() == "0 children, stopping=StopMode.FAST"  # the view says so


def test_reload_takes_the_settings_the_application_returns() -> None:
    new = SupervisorSettings(concurrency=5, shutdown_timeout=7.0, hard_timeout_grace=2.0,
                             max_jobs_per_child=100, max_memory_per_child=2**30)
    sup = master(App(new))
    sup.crash_loop.failed("boom", now=0.0)
    sup.reload()
    assert (sup.target, sup.shutdown_timeout, sup.hard_timeout_grace) == (5, 7.0, 2.0)
    assert (sup.recycler.max_jobs, sup.recycler.max_memory) == (100, 2**30)
    assert sup.generation == 1 and sup.reloading and sup.crash_loop.failures == 0


def test_a_failed_reload_keeps_the_running_generation_and_its_settings() -> None:
    sup = master(App(None), concurrency=3)
    sup.reload()
    assert sup.target == 3 and sup.generation == 0 and not sup.reloading

"""The generic prefork master on its own, driven through the toy ChildApp in toy.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Master, read_records, stop_all, wait_until

from supervisor.scoreboard import Scoreboard

TOY = Path(__file__).with_name("toy.py")
ROOT = Path(__file__).resolve().parents[2]


class Toy(Master):
    def __init__(self, tmp_path: Path, **options: object) -> None:
        super().__init__()
        self.dir = tmp_path
        self.log = tmp_path / "master.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen([sys.executable, str(TOY), str(tmp_path), json.dumps(options)],
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)

    def events(self, kind: str | None = None) -> list[dict]:
        records = read_records(self.dir / "events.log")
        return [e for e in records if kind is None or e["event"] == kind]


@pytest.fixture
def toy(tmp_path):
    started: list[Toy] = []

    def make(**options: object) -> Toy:
        started.append(Toy(tmp_path, **options))
        return started[-1]

    yield make
    stop_all(started)


def test_scoreboard_slot_round_trip() -> None:
    board = Scoreboard(4)
    slot, reader = board.slot(2), board.slot(2)
    slot.reset()
    assert not reader.read().busy
    slot.begin("abc send_email", deadline=123.5, extra=b"payload")
    state = reader.read()
    assert state.busy and state.label == "abc send_email" and state.deadline == 123.5
    assert state.extra == b"payload" and state.seq % 2 == 0
    slot.note(b"payload\0checked in")
    assert reader.read().extra == b"payload\0checked in"
    slot.end()
    state = reader.read()
    assert not state.busy and state.jobs_done == 1 and state.label == ""
    assert not board.slot(1).read().busy  # slots do not overlap
    with pytest.raises(IndexError):
        board.slot(4)


def test_scoreboard_reader_never_returns_a_torn_write() -> None:
    board = Scoreboard(1)
    slot = board.slot(0)
    slot.reset()
    slot.seq = 0
    # a writer stopped mid-write (odd sequence): the reader gives up with an empty state
    import struct
    struct.pack_into("<Q", board.memory, 0, 7)
    state = slot.read()
    assert state.seq == -1 and not state.busy


def test_children_run_and_a_killed_child_is_replaced(toy) -> None:
    instance = toy(concurrency=2, job_seconds=0.2)
    wait_until(lambda: len(instance.children()) == 2, 10)
    wait_until(lambda: instance.events("start"), 10)
    victim = instance.children()[0]
    victim.kill()
    wait_until(lambda: any(e["pid"] == victim.pid for e in instance.events("child_exited")), 10)
    exited = next(e for e in instance.events("child_exited") if e["pid"] == victim.pid)
    assert exited["describe"] == "SIGKILL"
    wait_until(lambda: len(instance.children()) == 2 and victim.pid not in
               {c.pid for c in instance.children()}, 10, message="a replacement")
    assert instance.events("tick")  # the periodic task runs in the master
    assert instance.stop() == 0
    assert instance.events("shutdown")


def test_crash_loop_backs_off_instead_of_forking_a_storm(toy) -> None:
    instance = toy(concurrency=2, fail_boot=True)
    wait_until(lambda: "failures=3" in instance.log.read_text(), 8, 0.05, "a third backoff")
    # both first children fail at once, then one at a time after 2 s: never a fork storm
    exits = instance.events("child_exited")
    assert len(exits) == 3, exits
    assert exits[2]["t"] - exits[1]["t"] >= 1.5, exits
    log = instance.log.read_text()
    assert "children are failing at start; backing off" in log
    assert "cannot import my_jobs: boom" in log
    assert instance.process.poll() is None  # the master stays up and keeps trying
    assert instance.stop() == 0


def test_a_child_dying_in_a_job_is_replaced_at_once(toy) -> None:
    # the job's fault, not a boot failure: no backoff, whatever the child's age
    instance = toy(concurrency=2, die_in_job=True)
    wait_until(lambda: len(instance.events("child_exited")) >= 12, 5, 0.05, "a dozen replaced children")
    assert all(e["busy"] and e["describe"] == "exit code 1" for e in instance.events("child_exited"))
    assert "backing off" not in instance.log.read_text()
    assert instance.stop() == 0


def test_a_ready_child_dying_with_no_job_backs_off(toy) -> None:
    # ready, then dead at once running nothing: its own code fails, as at boot
    instance = toy(concurrency=2, die_after_ready=True)
    wait_until(lambda: "failures=3" in instance.log.read_text(), 6, 0.05, "a third backoff")
    # both first children die, then one at a time, 2 s later: not replaced at once
    assert len(instance.events("child_exited")) == 3
    assert "after it was ready, running no job" in instance.log.read_text()
    assert instance.stop() == 0


def test_a_ready_idle_child_sigkilled_young_is_replaced_at_once(toy) -> None:
    # a SIGKILL storm (or the OOM killer) hits children between jobs, soon after they are
    # ready: not their own failure, so no backoff and never a server without children
    instance = toy(concurrency=2, idle=True)
    for kills in range(1, 7):
        wait_until(lambda n=kills + 1: len(instance.events("ready")) >= n, 5, 0.02,
                   f"a ready child after {kills - 1} kills")
        ready = instance.events("ready")[-1]
        killed_at = time.monotonic()
        os.kill(ready["pid"], signal.SIGKILL)
        wait_until(lambda n=kills + 2: len(instance.events("ready")) >= n, 5, 0.02, "its replacement")
        assert instance.events("ready")[-1]["t"] - killed_at < 1.0  # the backoff waits 1 s first
    assert "backing off" not in instance.log.read_text()
    assert instance.stop() == 0


def test_scoreboard_liveness_measures_the_masters_silence() -> None:
    board = Scoreboard(2)
    assert board.liveness.silence() == 0.0  # never stamped: no master to wait for
    board.liveness.stamp(time.monotonic() - 5)
    assert 5 <= board.liveness.silence() < 6
    board.liveness.stamp()
    assert board.liveness.silence() < 1
    board.slot(1).reset()
    board.slot(1).begin("x" * 300, None, b"y" * 9000)  # a full slot does not reach the stamp
    assert board.liveness.silence() < 1


def test_a_healthy_sibling_does_not_end_a_childs_crash_loop(toy) -> None:
    # child 0 runs fine for ever; child 1 fails at boot every time: it still backs off
    instance = toy(concurrency=2, fail_boot_index=[1])
    wait_until(lambda: "failures=3" in instance.log.read_text(), 8, 0.05, "a third backoff")
    assert len(instance.events("child_exited")) == 3  # 1 s, then 2 s: not respawned at once
    assert len(instance.events("ready")) == 1
    assert instance.stop() == 0


def test_graceful_stop_waits_for_running_jobs(toy) -> None:
    instance = toy(concurrency=2, job_seconds=1.0)
    wait_until(lambda: len(instance.events("start")) >= 2, 10)
    instance.process.send_signal(signal.SIGTERM)
    assert instance.process.wait(10) == 0
    started = {e["job"] + str(e["pid"]) for e in instance.events("start")}
    finished = {e["job"] + str(e["pid"]) for e in instance.events("done")}
    assert started == finished  # every job that started, finished


def test_fast_stop_interrupts_running_jobs(toy) -> None:
    instance = toy(concurrency=2, job_seconds=30)
    wait_until(lambda: len(instance.events("start")) >= 2, 10)
    begun = time.monotonic()
    instance.process.send_signal(signal.SIGINT)
    assert instance.process.wait(10) == 0
    assert time.monotonic() - begun < 5
    assert len(instance.events("interrupted")) == 2


def test_hard_timeout_signal_then_kill(toy) -> None:
    instance = toy(concurrency=1, job_seconds=30, hard_timeout=0.3, hard_timeout_grace=0.5,
                   ignore_timeout=True)
    wait_until(lambda: instance.events("child_exited"), 10, message="the stuck child killed")
    exited = instance.events("child_exited")[0]
    assert exited["cause"] == "hard timeout" and exited["busy"]
    wait_until(lambda: len(instance.children()) == 1, 10)
    assert instance.stop() == 0


def test_child_born_over_the_memory_limit_is_not_respawned_in_a_loop(toy) -> None:
    instance = toy(concurrency=1, allocate_mb=120, max_memory=60 * 2**20, memory_check_interval=0.2)
    wait_until(lambda: "already over the memory limit" in instance.log.read_text(), 10)
    # the master's tick runs as often as its memory check: a dozen ticks, a dozen checks
    ticks = len(instance.events("tick"))
    wait_until(lambda: len(instance.events("tick")) >= ticks + 12, 10, 0.05, "a dozen ticks")
    assert len(instance.events("ready")) == 1 and not instance.events("child_exited")
    log = instance.log.read_text()
    assert log.count("already over the memory limit") == 1
    assert instance.stop() == 0


def test_child_growing_over_the_memory_limit_is_recycled(toy) -> None:
    instance = toy(concurrency=1, grow_mb=120, max_memory=80 * 2**20, memory_check_interval=0.2,
                   job_seconds=0.05)
    wait_until(lambda: len(instance.events("ready")) >= 2, 15, message="a recycled child")
    first = instance.events("ready")[0]["pid"]
    wait_until(lambda: any(e["pid"] == first for e in instance.events("child_exited")), 10)
    exited = next(e for e in instance.events("child_exited") if e["pid"] == first)
    assert exited["describe"] == "exit code 0"  # gracefully, after its job
    assert "memory limit" in instance.log.read_text()
    assert instance.stop() == 0


def test_one_child_recycles_at_a_time_and_capacity_holds(toy) -> None:
    instance = toy(concurrency=3, max_jobs=4, job_seconds=0.02)
    wait_until(lambda: instance.log.read_text().count("recycling child") >= 6, 20,
               message="several recyclings")
    assert instance.stop() == 0
    retiring: set[str] = set()
    for line in instance.log.read_text().splitlines():
        pid = re.search(r"pid=(\d+)", line)
        if "recycling child" in line and pid:
            assert not retiring, f"{pid.group(1)} retired while {retiring} still was"
            retiring.add(pid.group(1))
        elif "child exited" in line and pid:
            retiring.discard(pid.group(1))
    started = {e["pid"] for e in instance.events("ready")}
    assert len(started) >= 8  # 3 first children and a successor for each finished recycling

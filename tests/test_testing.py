"""prefork_work.testing: the inline mode, and the pytest plugin run as a user's project would
(the README's example files, extracted and run by a pytest of their own)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prefork_work.app import App
from prefork_work.errors import InvalidJobArguments
from prefork_work.testing import FakeClock, InlineEnqueuer

README = Path(__file__).resolve().parents[1] / "README.md"


def make_app(seen: list) -> App:
    app = App()

    @app.middleware
    def tag(job, next):
        job.context.tagged = True
        return next()

    @app.job("echo")
    def echo(job) -> None:
        seen.append((job.name, job.args, job.context.tagged, job.t))

    @app.job("flaky", max_fails=3, backoff=lambda job: 10 * job.fails)
    def flaky(job) -> None:
        seen.append(("flaky", job.fails))
        raise ValueError(f"failure {job.fails + 1}")

    return app


def test_enqueue_runs_at_once_through_middleware_and_the_json_round_trip() -> None:
    seen: list = []
    jobs = InlineEnqueuer(make_app(seen), clock=FakeClock(1000))
    job = jobs.enqueue("echo", {"pair": (1, 2), "ratio": 2.0, "nested": {"k": None}})
    # a tuple comes back a list, 2.0 an integer (Go writes 2): what a real worker decodes
    assert seen == [("echo", {"pair": [1, 2], "ratio": 2, "nested": {"k": None}}, True, 1000)]
    assert [j.id for j in jobs.done] == [job.id] and jobs.runs[0].outcome == "done"
    many = jobs.enqueue_many([("echo", {"i": i}) for i in range(3)])
    assert [s[1] for s in seen[1:]] == [{"i": 0}, {"i": 1}, {"i": 2}] and len(many) == 3


def test_a_job_enqueued_by_a_job_runs_at_once_and_each_is_recorded() -> None:
    app = App()
    jobs = InlineEnqueuer(app, raise_errors=False)
    order: list[str] = []

    @app.job("outer")
    def outer(job) -> None:
        order.append("outer starts")
        jobs.enqueue("inner", {"from": job.id})
        order.append("outer ends")
        raise RuntimeError("outer failed after enqueueing")

    @app.job("inner")
    def inner(job) -> None:
        order.append("inner")

    parent = jobs.enqueue("outer", {})
    assert order == ["outer starts", "inner", "outer ends"]
    assert [(r.job.name, r.outcome) for r in jobs.runs] == [("inner", "done"), ("outer", "retry")]
    assert jobs.runs[0].job.args == {"from": parent.id} and jobs.runs[0].error is None
    assert str(jobs.runs[1].error) == "outer failed after enqueueing"


def test_a_payload_naming_no_registered_job_goes_dead() -> None:
    jobs = InlineEnqueuer(make_app([]), raise_errors=False)
    jobs.enqueue("nobody", {"x": 1})
    (run,) = jobs.runs
    assert run.outcome == "dead" and run.job.name == "nobody" and run.job.err == "stray job: no handler"
    with pytest.raises(RuntimeError, match="job 'nobody' moved to dead: stray job: no handler"):
        InlineEnqueuer(make_app([])).enqueue("nobody", {})


@pytest.mark.parametrize("args", [{"s": {1, 2}}, {"o": object()}, {"n": float("nan")}, ["list"]])
def test_arguments_that_are_not_json_fail_at_enqueue(args) -> None:
    seen: list = []
    with pytest.raises(InvalidJobArguments):
        InlineEnqueuer(make_app(seen)).enqueue("echo", args)
    assert seen == []


def test_scheduled_jobs_wait_for_the_fake_clock() -> None:
    seen: list = []
    clock = FakeClock(5000)
    jobs = InlineEnqueuer(make_app(seen), clock=clock)
    jobs.enqueue_in("echo", 60, {"at": 60})
    jobs.enqueue_in("echo", 30, {"at": 30})
    assert seen == [] and [t for t, _ in jobs.scheduled] == [5030, 5060]
    assert jobs.advance(29) == [] and seen == []
    jobs.advance(1)
    assert [s[1] for s in seen] == [{"at": 30}]
    jobs.advance(100)
    assert [s[1] for s in seen] == [{"at": 30}, {"at": 60}] and clock() == 5130
    assert jobs.scheduled == []


def test_unique_jobs_are_deduplicated_while_one_waits() -> None:
    seen: list = []
    jobs = InlineEnqueuer(make_app(seen))
    assert jobs.enqueue_unique_in("echo", 10, {"u": 1}) is not None
    assert jobs.enqueue_unique_in("echo", 10, {"u": 1}) is None
    jobs.advance(10)
    assert [s[1] for s in seen] == [{"u": 1}]
    assert jobs.enqueue_unique("echo", {"u": 1}) is not None  # the lock went with the run


def test_a_failing_job_raises_and_is_retried_on_the_clock_until_dead() -> None:
    seen: list = []
    jobs = InlineEnqueuer(make_app(seen))
    with pytest.raises(ValueError, match="failure 1"):
        jobs.enqueue("flaky", {})
    assert jobs.runs[-1].outcome == "retry"
    (run_at, retry), = jobs.scheduled
    assert retry.fails == 1 and retry.err == "failure 1" and run_at == jobs.clock() + 10

    quiet = InlineEnqueuer(make_app(seen), raise_errors=False)
    quiet.enqueue("flaky", {})
    quiet.advance(10)   # second run, retry in 20 s
    assert quiet.advance(19) == []
    quiet.advance(1)    # third run: max_fails reached
    assert [r.outcome for r in quiet.runs] == ["retry", "retry", "dead"]
    (dead,) = quiet.dead
    assert dead.fails == 3 and dead.err == "failure 3"
    assert isinstance(quiet.failed[-1].error, ValueError)


CALLS: list[str] = []


@pytest.fixture
def prefork_app() -> App:  # the plugin's fixture, overridden as a user would
    app = App()
    for event in ("startup", "child_start", "child_exit", "shutdown"):
        getattr(app, f"on_{event}")(lambda event=event: CALLS.append(event))

    @app.job("noop")
    def noop(job) -> None:
        CALLS.append("job")

    return app


@pytest.fixture
def exit_hooks_checked():
    """Set up before prefork_worker, torn down after it: sees its teardown's hooks."""
    CALLS.clear()
    yield
    assert CALLS == ["startup", "child_start", "job", "child_exit", "shutdown"]


def test_worker_fixture_runs_the_hooks_around_the_test(exit_hooks_checked, prefork_enqueuer,
                                                       prefork_worker, prefork_redis) -> None:
    assert CALLS == ["startup", "child_start"]
    prefork_enqueuer.enqueue("noop", {})
    assert prefork_redis.llen("work:jobs:noop") == 1  # the private Redis, namespace "work"
    assert prefork_worker.drain() == 1
    prefork_worker.work(until=lambda: True)  # the fixture's worker runs no hooks again
    assert CALLS == ["startup", "child_start", "job"]


def readme_files() -> dict[str, str]:
    """The README's example project: python blocks whose first line names the file."""
    text = README.read_text()
    section = text[text.index("### Testing your jobs"):]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        first = block.splitlines()[0]
        match = re.match(r"# (\S+\.py)", first)
        if match:
            files[match.group(1)] = block
    return files


def write_project(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    (root / "myapp" / "__init__.py").write_text("")


def run_pytest(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "tests"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )


def test_the_readme_example_runs_as_a_users_project(tmp_path) -> None:
    files = readme_files()
    assert set(files) == {"myapp/jobs.py", "conftest.py", "tests/test_jobs.py"}
    write_project(tmp_path, files)
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_the_app_can_come_from_the_ini_option(tmp_path) -> None:
    files = readme_files()
    files["conftest.py"] = 'pytest_plugins = ["prefork_work.testing"]\n'
    files["pytest.ini"] = "[pytest]\nprefork_work_app = myapp.jobs:app\nprefork_work_namespace = mine\n"
    write_project(tmp_path, files)
    result = run_pytest(tmp_path, "-k", "through_redis")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout

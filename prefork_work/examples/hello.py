"""The example app conf/work.toml runs out of the box."""

from __future__ import annotations

import time

import structlog

from prefork_work.app import App
from prefork_work.job import Job

log = structlog.get_logger("hello")
app = App()


@app.job("hello", max_fails=3, timeout=30)
def hello(job: Job) -> None:
    name = job.arg_string("name") or "world"
    time.sleep(0.1)
    # Arguments are the caller's data (names, addresses, tokens): an info line says that the
    # job ran, only a debug line what it was given.
    log.info("hello", job_id=job.id, job_name=job.name)
    log.debug("hello", greeting=f"hello, {name}", job_id=job.id, job_name=job.name)


@app.job("noop")
def noop(job: Job) -> None:
    """Does nothing: the benchmark workload."""


app.periodically_enqueue("0 * * * * *", "noop")  # once a minute

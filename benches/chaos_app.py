"""The jobs of the chaos suite (benches/chaos.py): each one records its runs.

Evidence goes to a Redis of its own ($CHAOS_EVIDENCE_URL), never the one the server uses:
the suite kills, restarts and cuts off the server's Redis, and what a job did must survive
that. An RPUSH is one command: a child SIGKILLed while sending it either recorded the run or
did not, never half a record (a file written by a dying process can tear a line).

Records are ``"<phase> <job id> <pid> <unix time>"``: phase ``s`` when a run starts, ``e``
when it ends successfully.
"""

from __future__ import annotations

import os
import time

from benches.peers._common import process_client
from prefork_work.app import App
from prefork_work.errors import JobTimeout
from prefork_work.job import Job
from supervisor import HardTimeout

RUNS_KEY = "chaos:runs"

app = App()


def record(job: Job, phase: str) -> None:
    evidence = process_client(os.environ["CHAOS_EVIDENCE_URL"])
    evidence.rpush(RUNS_KEY, f"{phase} {job.id} {os.getpid()} {time.time():.3f}")


@app.job("work", max_fails=1)
def work(job: Job) -> None:
    """A healthy job: a few milliseconds of sleep. Anything not shaped like one (a poison
    payload that happens to decode) fails, and max_fails=1 sends it to the dead set."""
    args = job.args or {}
    if set(args) != {"seq", "ms"} or type(args["seq"]) is not int or type(args["ms"]) not in (int, float):
        raise ValueError("not a chaos job")
    record(job, "s")
    time.sleep(args["ms"] / 1000)
    record(job, "e")


@app.job("soft", timeout=0.3, max_fails=2, backoff=lambda job: 0)
def soft(job: Job) -> None:
    """Hangs, but lets the soft timeout (JobTimeout) end it: retried once, then dead."""
    record(job, "s")
    time.sleep(60)


@app.job("hard", timeout=0.3, max_fails=2, backoff=lambda job: 0)
def hard(job: Job) -> None:
    """Hangs and swallows both the soft timeout and the hard one's SIGUSR2: only the
    master's SIGKILL ends it. Retried once, then dead with "hard timeout"."""
    record(job, "s")
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except (JobTimeout, HardTimeout):
            pass

"""What happens to a job: its outcome codes, and the one rule for failing it.

A job fails in four places: its handler raised (``worker.py``, ``inflight.py``), no handler
is registered for it (a stray job), the master killed it at its hard timeout, or its process
died under it ``max_crashes`` times (``loops/reaper.py``). Each path calls :func:`settle`
(or :func:`settle_in_progress`, for a job found in a dead child's in-progress list), so
fails, err, failed_at, the backoff and the choice between retry, dead and dropped are made
here and nowhere else. Undecodable payloads become a dead wrapper job in :func:`malformed`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog

from prefork_work.errors import InvalidJobArguments, MalformedJob, PreforkWorkError, truncate
from prefork_work.job import Job, make_identifier

if TYPE_CHECKING:
    from prefork_work.app import JobType
    from prefork_work.store.pools import PoolStore

log = structlog.get_logger("prefork_work.outcome")


class Outcome(StrEnum):
    """The fate of a fetched job, as the one-letter code ``lua/fetch.lua`` reads in an ack.

    What each code does to Redis is written only in ``fetch.lua`` (and, for the master's
    verdicts, ``settle_in_progress.lua``); every code but ``REQUEUE`` takes the entry out of
    the pool's in-progress list, releases its lock and is counted in ``<p>pw:metrics``.
    """

    SUCCESS = "s"  # done: nothing is kept
    RETRY = "r"  # failed, runs again: ZADD <p>retry at now + backoff
    DEAD = "d"  # failed for good: ZADD <p>dead at failed_at
    DROPPED = "x"  # failed for good with skip_dead: in no set
    REQUEUE = "q"  # never started: RPUSH back to the front of its queue, wake a worker


# the ``state`` of a job status record after a run with this outcome
STATES = {Outcome.SUCCESS: "done", Outcome.RETRY: "retry", Outcome.DEAD: "dead",
          Outcome.DROPPED: "dead"}
STRAY_JOB_ERROR = "stray job: no handler"


@dataclass(slots=True)
class Settled:
    """A failed job's verdict: the outcome, and for retry/dead the score and new bytes."""

    outcome: Outcome
    score: int = 0
    payload: bytes = b""


def default_backoff(job: Job) -> int:
    """gocraft's backoff: fails^4 + 15 + R * (fails + 1) seconds, R uniform in 0..29."""
    return job.fails**4 + 15 + random.randrange(30) * (job.fails + 1)


def settle(
    job: Job,
    job_type: JobType | None,
    error: str,
    now: int,
    *,
    name: str,
    raw: bytes,
    cause: str = "job failed",
    poison: bool = False,
    logger: Any = log,
) -> Settled:
    """Fail ``job`` (fetched from queue ``name`` as ``raw``): fails + 1, err, failed_at, then
    retry after the backoff while fails < max_fails, else dropped with skip_dead, else dead.

    A job of no registered type (``job_type`` None) and a ``poison`` job (it killed its
    process ``max_crashes`` times: kept to be looked at, and logged as an error) go to dead. A job whose arguments
    cannot be written back goes to dead undamaged, in a :func:`malformed` wrapper.
    """
    job.fails += 1
    job.err = error
    job.failed_at = now
    log_ = logger.bind(job_id=job.id, job_name=job.name, fails=job.fails)
    try:
        payload = job.to_json()
    except InvalidJobArguments as err:
        # decoded, yet its arguments cannot be written back (e.g. nested deeper than the
        # encoder goes): keep it, undamaged, in dead rather than lose it or crash
        log_.warning(cause, error=error)
        context = f"job failed ({error}) and " if job_type is not None else f"{error}; "
        return Settled(Outcome.DEAD, now, malformed(name, raw, err, now, context=context,
                                                    logger=logger))
    if job_type is None or poison:
        (log_.error if poison else log_.warning)(f"{cause}; moved to dead", error=error)
        return Settled(Outcome.DEAD, now, payload)
    if job_type.max_fails - job.fails > 0:
        backoff = int(job_type.backoff(job) if job_type.backoff else default_backoff(job))
        log_.warning(f"{cause}; will retry", error=error, retry_in=backoff)
        return Settled(Outcome.RETRY, now + backoff, payload)
    if job_type.skip_dead:
        log_.warning(f"{cause}; dropped (skip_dead)", error=error)
        return Settled(Outcome.DROPPED)
    log_.warning(f"{cause}; moved to dead", error=error)
    return Settled(Outcome.DEAD, now, payload)


def settle_in_progress(
    pools: PoolStore,
    pool_id: str,
    name: str,
    job_id: str,
    job_type: JobType | None,
    error: str,
    now: float,
    *,
    cause: str,
    poison: bool = False,
) -> Outcome | None:
    """:func:`settle` a job found in a pool's in-progress list (its process is gone), and
    move it out of that list; None when it is not there (any more)."""
    found = pools.in_progress_job(pool_id, name, job_id)
    if found is None:
        return None
    raw, job = found
    verdict = settle(job, job_type, error, int(now), name=name, raw=raw, cause=cause,
                     poison=poison)
    moved = pools.settle_in_progress(pool_id, name, raw, verdict.outcome is not Outcome.RETRY,
                                     verdict.score, verdict.payload)
    return verdict.outcome if moved else None


def failure_text(err: BaseException) -> str:
    """A handler's exception as a job's ``err``."""
    return str(err) or type(err).__name__


def malformed_error(err: BaseException, context: str = "") -> str:
    """Why a payload is malformed: our own errors say it themselves; anything else gives its
    type and a bounded excerpt, never the payload."""
    if isinstance(err, MalformedJob):
        return context + str(err)
    if isinstance(err, PreforkWorkError):  # decoded, but it cannot be written back
        return f"{context or 'malformed job: '}{err}"
    return f"{context}malformed job: {type(err).__name__}: {truncate(str(err))}"


def malformed(name: str, raw: bytes, err: BaseException | str, now: int, *,
              context: str = "", logger: Any = log) -> bytes:
    """The dead-set entry for an undecodable payload: a valid job named ``name`` whose args
    hold the payload's text, so every client can page, delete or inspect it (gocraft leaves
    it stuck in progress, W3). ``err`` is the failure, or the ``err`` text itself."""
    error = err if isinstance(err, str) else malformed_error(err, context)
    text = raw.decode("utf-8", errors="replace")
    wrapper = Job(name=name, id=make_identifier(), t=now, args={"malformed_payload": text},
                  fails=1, err=error, failed_at=now)
    logger.warning("malformed job moved to dead", queue=name, job_id=wrapper.id, error=error)
    return wrapper.to_json()

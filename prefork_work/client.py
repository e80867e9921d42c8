"""gocraft/work's Client in snake_case: what an operator (or the web UI) sees and does.

A job in a sorted set is addressed by (score, id), as in Go. Where Go's behaviour loses
data, ours differs and says so: the queue read is one transaction and survives an entry it
cannot decode (W18); a dead job whose name no pool knows stays dead untouched instead of
being rewritten and re-scored (W28); deleting a scheduled unique job frees its real lock,
``unique_key`` included (W29); requeued jobs keep their exact argument bytes (W26).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from prefork_work.app import validate_job_name
from prefork_work.enqueuer import ScheduledJob
from prefork_work.errors import MalformedJob, NotDeleted, NotRetried
from prefork_work.job import Job
from prefork_work.keys import Keys
from prefork_work.store.admin import AdminStore

if TYPE_CHECKING:
    import redis

log = structlog.get_logger("prefork_work.client")

PAGE_SIZE = 20  # gocraft's page size for scheduled, retry and dead jobs
RETRY_ALL_BATCH = 1000
RETRY_ALL_MAX_BATCHES = 1000


@dataclass(slots=True)
class Queue:
    job_name: str
    count: int
    latency: int  # seconds since the oldest queued job's ``t``; 0 for an empty queue


@dataclass(slots=True)
class WorkerPoolHeartbeat:
    worker_pool_id: str
    started_at: int
    heartbeat_at: int
    job_names: list[str] | None
    concurrency: int
    host: str
    pid: int
    worker_ids: list[str] | None


@dataclass(slots=True)
class WorkerObservation:
    worker_id: str
    is_busy: bool
    job_name: str = ""
    job_id: str = ""
    started_at: int = 0
    args_json: str = ""
    checkin: str = ""
    checkin_at: int = 0


@dataclass(slots=True)
class RetryJob:
    retry_at: int
    job: Job


@dataclass(slots=True)
class DeadJob:
    died_at: int
    job: Job


class Client:
    """Inspect and manage one namespace; every method is one or a few round trips."""

    def __init__(
        self, namespace: str, redis_client: redis.Redis, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.keys = Keys(namespace)
        self.store = AdminStore(redis_client, self.keys)
        self.clock = clock

    # --- queues and pools -----------------------------------------------------------------------
    def queues(self) -> list[Queue]:
        """Every known job name, sorted, with its queue length and latency."""
        names = self.store.known_job_names()
        now = int(self.clock())
        result = []
        for name, (count, oldest) in zip(names, self.store.queue_heads(names), strict=True):
            latency = 0
            if oldest is not None:
                try:
                    latency = now - Job.from_json(oldest).t
                except MalformedJob:
                    latency = 0  # the worker dead-letters it; the count is still right
            result.append(Queue(name, count, latency))
        return result

    def worker_pool_heartbeats(self) -> list[WorkerPoolHeartbeat]:
        pool_ids = self.store.pool_ids()
        hashes = self.store.hashes([self.keys.heartbeat(p) for p in pool_ids])
        return [_heartbeat(pool_id, fields) for pool_id, fields in zip(pool_ids, hashes, strict=True)]

    def worker_observations(self) -> list[WorkerObservation]:
        """One per worker of every pool, in pool order then worker order; idle ones included."""
        worker_ids = [w for beat in self.worker_pool_heartbeats() for w in beat.worker_ids or []]
        hashes = self.store.hashes([self.keys.worker_observation(w) for w in worker_ids])
        return [_observation(w, fields) for w, fields in zip(worker_ids, hashes, strict=True)]

    # --- the three sorted sets ---------------------------------------------------------------------
    def scheduled_jobs(self, page: int = 1) -> tuple[list[ScheduledJob], int]:
        """(20 jobs of ``page``, 1-based, by run_at; total count of scheduled jobs)."""
        return self._page(self.keys.scheduled(), page, ScheduledJob)

    def retry_jobs(self, page: int = 1) -> tuple[list[RetryJob], int]:
        return self._page(self.keys.retry(), page, RetryJob)

    def dead_jobs(self, page: int = 1) -> tuple[list[DeadJob], int]:
        return self._page(self.keys.dead(), page, DeadJob)

    def delete_dead_job(self, died_at: int, job_id: str) -> None:
        self._delete(self.keys.dead(), died_at, job_id)

    def delete_retry_job(self, retry_at: int, job_id: str) -> None:
        self._delete(self.keys.retry(), retry_at, job_id)

    def delete_scheduled_job(self, scheduled_for: int, job_id: str) -> None:
        """Also frees a unique job's lock, so the same job can be enqueued again."""
        self._delete(self.keys.scheduled(), scheduled_for, job_id, free_unique_lock=True)

    def delete_all_dead_jobs(self) -> None:
        self.store.delete_key(self.keys.dead())

    def retry_dead_job(self, died_at: int, job_id: str) -> None:
        """Back into its queue (LPUSH, as Go) with fails, err and failed_at cleared and t = now.

        Raises NotRetried when no such job is dead, or when no pool ever registered its
        name (the job then stays dead as it was).
        """
        known = set(self.store.known_job_names())
        members = [m for m, job in self._decoded(self.store.members_at(self.keys.dead(), died_at))
                   if job.id == job_id]
        if not self._requeue(members, known):
            raise NotRetried()

    def retry_all_dead_jobs(self) -> int:
        """Requeue every dead job whose name is known; returns how many were requeued.

        Pages through the set rather than stopping at a batch that requeued nothing, so a
        batch of unknown names does not hide known ones behind it (W28).
        """
        known = set(self.store.known_job_names())
        now = int(self.clock())
        requeued = offset = 0
        for _ in range(RETRY_ALL_MAX_BATCHES):
            members = self.store.oldest_members(self.keys.dead(), now, offset, RETRY_ALL_BATCH)
            moved = self._requeue(members, known, now)
            requeued += moved
            offset += len(members) - moved  # what stayed (unknown names, malformed) is skipped
            if len(members) < RETRY_ALL_BATCH:
                break
        return requeued

    # --- operator switches (gocraft has no API for these) -----------------------------------------
    def pause(self, name: str) -> None:
        """No pool fetches ``name`` until unpaused; running jobs finish, enqueueing goes on."""
        validate_job_name(name)
        self.store.set_paused(name, True)

    def unpause(self, name: str) -> None:
        validate_job_name(name)
        self.store.set_paused(name, False)

    def set_max_concurrency(self, name: str, limit: int) -> None:
        """Cap how many ``name`` jobs run at once across all pools (0: no cap).

        Like gocraft, a pool that starts later writes its own registered cap over this one.
        """
        validate_job_name(name)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"max concurrency must be an integer >= 0, not {limit!r}")
        self.store.set_max_concurrency(name, limit)

    # --- internals ---------------------------------------------------------------------------------
    def _page(self, zset: str, page: int, wrap: type) -> tuple[list, int]:
        page = max(page, 1)
        members, total = self.store.zset_page(zset, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        return [wrap(int(score), Job.from_json(member)) for member, score in members], total

    def _decoded(self, members: list[bytes]) -> list[tuple[bytes, Job]]:
        result = []
        for member in members:
            try:
                result.append((member, Job.from_json(member)))
            except MalformedJob:
                continue
        return result

    def _delete(self, zset: str, score: int, job_id: str, free_unique_lock: bool = False) -> None:
        matches = [(m, job) for m, job in self._decoded(self.store.members_at(zset, score))
                   if job.id == job_id]
        locks = []
        if free_unique_lock:
            for _, job in matches:
                if job.unique:
                    locks.append(job.unique_key or self.keys.unique(job.name, job.args))
        if not matches or not self.store.remove_members(zset, [m for m, _ in matches], locks):
            raise NotDeleted()

    def _requeue(self, members: list[bytes], known: set[str], now: int | None = None) -> int:
        now = int(self.clock()) if now is None else now
        moves = []
        for member, job in self._decoded(members):
            if job.name not in known:
                log.warning("dead job of an unknown name not retried", job_id=job.id,
                            job_name=job.name)
                continue
            job.t, job.fails, job.err, job.failed_at = now, 0, "", 0
            moves.append((member, job.to_json(), self.keys.jobs(job.name)))
        return self.store.move_due(self.keys.dead(), now, moves)


def _int(fields: dict[str, str], name: str) -> int:
    value = fields.get(name, "")
    return int(value) if value else 0


def _split(value: str | None) -> list[str] | None:
    return None if value is None else sorted(value.split(","))


def _heartbeat(pool_id: str, fields: dict[str, str]) -> WorkerPoolHeartbeat:
    return WorkerPoolHeartbeat(
        worker_pool_id=pool_id, started_at=_int(fields, "started_at"),
        heartbeat_at=_int(fields, "heartbeat_at"), job_names=_split(fields.get("job_names")),
        concurrency=_int(fields, "concurrency"), host=fields.get("host", ""),
        pid=_int(fields, "pid"), worker_ids=_split(fields.get("worker_ids")),
    )


def _observation(worker_id: str, fields: dict[str, str]) -> WorkerObservation:
    return WorkerObservation(
        worker_id=worker_id, is_busy=bool(fields), job_name=fields.get("job_name", ""),
        job_id=fields.get("job_id", ""), started_at=_int(fields, "started_at"),
        args_json=fields.get("args", ""), checkin=fields.get("checkin", ""),
        checkin_at=_int(fields, "checkin_at"),
    )

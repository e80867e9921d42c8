"""gocraft/work's Client in snake_case: what an operator (or the web UI) sees and does.

A job in a sorted set is addressed by (score, id), as in Go. Where Go's behaviour loses
data, ours differs and says so: the queue read is one transaction and survives an entry it
cannot decode (W18); a dead job whose name no pool knows stays dead untouched instead of
being rewritten and re-scored (W28); deleting a scheduled unique job frees its real lock,
``unique_key`` included (W29); requeued jobs keep their exact argument bytes (W26).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from prefork_work.app import validate_job_name
from prefork_work.enqueuer import ScheduledJob
from prefork_work.errors import MalformedJob, NotDeleted, NotRetried
from prefork_work.job import Job
from prefork_work.keys import Keys
from prefork_work.store.admin import AdminStore
from prefork_work.store.pools import parse_heartbeat, parse_int

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
class QueueState:
    """A queue with the operator's switches: what the CLI and the dashboard show."""

    job_name: str
    count: int
    latency: int
    paused: bool
    max_concurrency: int  # 0: no cap
    running: int  # the queue's lock: jobs fetched and not yet acknowledged, all pools


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


STATES = ("queued", "scheduled", "running", "retry", "dead", "done", "unknown")
QUEUE_SCAN_LIMIT = 1000  # entries looked at from each end of a queue for a queued job
MAX_JOB_ID_LENGTH = 200


@dataclass(slots=True)
class JobStatus:
    """Where a job is and how it went (README "Job status"); ``to_dict()`` is JSON-ready.

    Times are epoch seconds; ``duration`` is the last run's seconds; ``pool_id`` and
    ``host`` say which pool ran (or runs) it. What is not known is None or "".
    """

    id: str
    name: str = ""
    state: str = "unknown"
    fails: int = 0
    enqueued_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    duration: float | None = None
    error: str = ""
    pool_id: str = ""
    host: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _STATUS_FIELDS}


_STATUS_FIELDS = ("id", "name", "state", "fails", "enqueued_at", "started_at", "finished_at",
                  "duration", "error", "pool_id", "host")


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

    def queue_states(self) -> list[QueueState]:
        """``queues()`` plus each queue's paused flag, max concurrency and running count."""
        queues = self.queues()
        controls = self.store.queue_controls([q.job_name for q in queues])
        return [QueueState(q.job_name, q.count, q.latency, paused, cap, max(lock, 0))
                for q, (paused, cap, lock) in zip(queues, controls, strict=True)]

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

    def dead_job_score(self, job_id: str) -> int | None:
        """When dead job ``job_id`` died (its score), found by a scan of the dead set; None
        when it is not there. For callers that know a job's id but not its score."""
        found = self._scan_for(self.keys.dead(), job_id)
        return int(found[1]) if found else None

    def _scan_for(self, zset: str, job_id: str) -> tuple[bytes, float] | None:
        """The member of ``zset`` that is job ``job_id`` (not one whose args mention it)."""
        for member, score in self.store.scan_zset(zset, _id_needle(job_id)):
            try:
                if Job.from_json(member).id == job_id:
                    return member, score
            except MalformedJob:
                continue
        return None

    def zset_size(self, which: str) -> int:
        """Members of the ``scheduled``, ``retry`` or ``dead`` set."""
        zsets = {"scheduled": self.keys.scheduled(), "retry": self.keys.retry(),
                 "dead": self.keys.dead()}
        return self.store.zcard(zsets[which])

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

    # --- job status ----------------------------------------------------------------------------------
    def job_status(self, job_id: str) -> JobStatus | None:
        """Where job ``job_id`` is now and how its last run went; None when nothing is known.

        Any job is found while it is scheduled, queued (among the oldest and newest
        ``QUEUE_SCAN_LIMIT`` entries of its queue), running (claimed by a pool), retrying
        or dead, Go-enqueued ones included: the places are searched in the order a job
        moves through them, so a job moving on during the lookup is still found. Job types
        registered with ``status=True`` also leave a record of each run (kept
        ``[server] status_ttl`` seconds), which adds times, duration and host, and is the
        only trace of a job that is done.
        """
        if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID_LENGTH:
            raise ValueError(f"job id must be a non-empty string of at most "
                             f"{MAX_JOB_ID_LENGTH} characters, got {job_id!r}")
        record = _status_record(self.store.status_record(job_id))
        if record is not None and (record["state"] == "done" or record.get("dropped")):
            return _from_record(job_id, record, record["state"])  # final: nowhere else to look
        needle = _id_needle(job_id)
        names = [record["name"]] if record and record.get("name") else self.store.known_job_names()
        if record is None:  # a job with a record has run: it is past the scheduled set
            found = self._scan_for(self.keys.scheduled(), job_id)
            if found is not None and (status := _from_member(job_id, found[0], "scheduled")):
                return status
        queued = self.store.find_queued(names, needle, QUEUE_SCAN_LIMIT)
        if queued is not None and (status := _from_member(job_id, queued[1], "queued")):
            return status
        running = self._running(job_id, names, needle)
        if running is not None:
            return running
        for zset, state in ((self.keys.retry(), "retry"), (self.keys.dead(), "dead")):
            member = self._in_zset(zset, job_id, needle, record, state)
            if member is not None and (status := _from_member(job_id, member, state, record)):
                return status
        if record is not None:
            # the record's place no longer holds the job and it was not found moving on:
            # what is known is its last run
            return _from_record(job_id, record, "unknown")
        return None

    def _in_zset(self, zset: str, job_id: str, needle: bytes, record: dict[str, Any] | None,
                 state: str) -> bytes | None:
        if record is not None and record.get("state") == state and "score" in record:
            # the record says where it went: one ZRANGEBYSCORE instead of a scan
            for member in self.store.members_at(zset, record["score"]):
                if needle in member:
                    return member
            return None
        found = self._scan_for(zset, job_id)
        return found[0] if found else None

    def _running(self, job_id: str, names: list[str], needle: bytes) -> JobStatus | None:
        """A job claimed by a pool: in its in-progress list, or in a worker's observation."""
        beats = {b.worker_pool_id: b for b in self.worker_pool_heartbeats()}
        pool_ids = sorted(beats)
        for _name, pool_id, entries in self.store.in_progress_entries(names, pool_ids):
            for raw in entries:
                if needle in raw and (status := _from_member(job_id, raw, "running")):
                    status.pool_id = pool_id
                    status.host = beats[pool_id].host
                    status.started_at = self._started_at(beats[pool_id], job_id)
                    return status
        # a Go pool's job is only in its observation when its list is not among ``names``
        for beat in beats.values():
            for obs in self._observations(beat):
                if obs.job_id == job_id:
                    return JobStatus(id=job_id, name=obs.job_name, state="running",
                                     started_at=obs.started_at or None,
                                     pool_id=beat.worker_pool_id, host=beat.host)
        return None

    def _observations(self, beat: WorkerPoolHeartbeat) -> list[WorkerObservation]:
        ids = beat.worker_ids or []
        hashes = self.store.hashes([self.keys.worker_observation(w) for w in ids])
        return [_observation(w, fields) for w, fields in zip(ids, hashes, strict=True)]

    def _started_at(self, beat: WorkerPoolHeartbeat, job_id: str) -> int | None:
        for obs in self._observations(beat):
            if obs.job_id == job_id and obs.started_at:
                return obs.started_at
        return None  # claimed, not (yet) observed: prefetched, or started under a second ago

    # --- internals ---------------------------------------------------------------------------------
    def _page(self, zset: str, page: int, wrap: type) -> tuple[list[Any], int]:
        page = max(page, 1)
        members, total = self.store.zset_page(zset, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        result = []
        for member, score in members:
            try:
                result.append(wrap(int(score), Job.from_json(member)))
            except MalformedJob as err:
                # written by some other producer: skipped (and said), never a crashed page
                log.warning("undecodable member of a sorted set skipped", key=zset,
                            score=score, error=str(err))
        return result, total

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
    """An integer field of a hash any process may write: 0 when missing or not an integer."""
    return parse_int(fields.get(name)) or 0


def _heartbeat(pool_id: str, fields: dict[str, str]) -> WorkerPoolHeartbeat:
    beat = parse_heartbeat(pool_id, fields)
    return WorkerPoolHeartbeat(
        worker_pool_id=pool_id, started_at=beat.started_at or 0,
        heartbeat_at=beat.heartbeat_at or 0, job_names=_sorted(beat.job_names),
        concurrency=beat.concurrency or 0, host=beat.host, pid=beat.pid or 0,
        worker_ids=_sorted(beat.worker_ids),
    )


def _sorted(values: list[str] | None) -> list[str] | None:
    return None if values is None else sorted(values)


def _observation(worker_id: str, fields: dict[str, str]) -> WorkerObservation:
    return WorkerObservation(
        worker_id=worker_id, is_busy=bool(fields), job_name=fields.get("job_name", ""),
        job_id=fields.get("job_id", ""), started_at=_int(fields, "started_at"),
        args_json=fields.get("args", ""), checkin=fields.get("checkin", ""),
        checkin_at=_int(fields, "checkin_at"),
    )


def _id_needle(job_id: str) -> bytes:
    """The bytes every encoding of job ``job_id`` contains (Go's and ours: no spaces)."""
    return b'"id":' + json.dumps(job_id).encode()


def _status_record(raw: bytes | None) -> dict[str, Any] | None:
    """A status record as written by the worker; anything else (untrusted data) is ignored."""
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("state") not in STATES:
        return None
    return record


def _from_record(job_id: str, record: dict[str, Any], state: str) -> JobStatus:
    def num(key: str, kind: type) -> Any:
        value = record.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return kind(value) if ok else None

    def text(key: str) -> str:
        value = record.get(key)
        return value if isinstance(value, str) else ""

    return JobStatus(
        id=job_id, name=text("name"), state=state, fails=num("fails", int) or 0,
        enqueued_at=num("enqueued_at", int), started_at=num("started_at", int),
        finished_at=num("finished_at", int), duration=num("duration", float),
        error=text("error"), pool_id=text("pool_id"), host=text("host"),
    )


def _from_member(job_id: str, raw: bytes, state: str,
                 record: dict[str, Any] | None = None) -> JobStatus | None:
    """A status from the job's own JSON where it sits (any producer's, Go's included),
    completed by its last run's record when there is one; None when the bytes only
    contained the needle (not this job, or not decodable)."""
    try:
        job = Job.from_json(raw)
    except MalformedJob:
        return None
    if job.id != job_id:
        return None
    status = _from_record(job_id, record, state) if record else JobStatus(id=job_id, state=state)
    status.name, status.fails, status.enqueued_at = job.name, job.fails, job.t or None
    if state in ("retry", "dead"):
        status.error = job.err
        status.finished_at = job.failed_at or status.finished_at
    return status

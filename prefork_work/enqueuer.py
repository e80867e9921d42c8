"""gocraft/work's Enqueuer in snake_case, plus ``enqueue_many`` (one round trip for a batch).

Every payload is checked (name, JSON-serializable args) before anything is written, and
the bytes are exactly what Go's Enqueuer writes for the same job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefork_work.app import validate_job_name
from prefork_work.errors import InvalidJobArguments
from prefork_work.job import Job, make_identifier
from prefork_work.keys import Keys
from prefork_work.store.queue import QueueStore

if TYPE_CHECKING:
    import redis

KNOWN_JOBS_CACHE_SECONDS = 300  # gocraft: one SADD of known_jobs per name per 300 s


@dataclass(slots=True)
class ScheduledJob:
    """A job in the scheduled set, due at ``run_at`` (epoch seconds)."""

    run_at: int
    job: Job


class JobMaker:
    """What ``Enqueuer`` and ``AsyncEnqueuer`` share: new jobs, checked, and their bytes."""

    def __init__(self, namespace: str, clock: Callable[[], float] = time.time) -> None:
        self.keys = Keys(namespace)
        self.clock = clock
        # name -> monotonic expiry of the cached SADD (gocraft keeps the same per Enqueuer)
        self.known_jobs: dict[str, float] = {}

    def _new_many(
        self, jobs: Iterable[tuple[str, Mapping[str, Any] | None]]
    ) -> tuple[list[Job], dict[str, list[bytes]]]:
        made: list[Job] = []
        by_name: dict[str, list[bytes]] = {}
        for name, args in jobs:
            job, payload = self._new_job(name, args)
            made.append(job)
            by_name.setdefault(name, []).append(payload)
        return made, by_name

    def _new_job(self, name: str, args: Mapping[str, Any] | None) -> tuple[Job, bytes]:
        """A fresh job and its bytes; encoding raises InvalidJobArguments naming the bad value."""
        try:
            validate_job_name(name)
        except ValueError as err:
            raise InvalidJobArguments(str(err)) from None
        if args is not None and not isinstance(args, Mapping):
            raise InvalidJobArguments(
                f"job {name!r}: args must be a mapping of names to values, got {type(args).__name__}"
            )
        job = Job(
            name=name, id=make_identifier(), t=int(self.clock()),
            args=None if args is None else dict(args),
        )
        return job, job.to_json()

    def _new_unique_job(
        self, name: str, args: Mapping[str, Any] | None, key_map: Mapping[str, Any] | None
    ) -> tuple[Job, bytes]:
        job, _ = self._new_job(name, args)
        job.unique = True
        if key_map is None:
            job.unique_key = self.keys.unique(name, job.args)
            return job, b"1"
        job.unique_key = self.keys.unique(name, dict(key_map))
        return job, job.to_json()

    def _needs_known(self, name: str) -> bool:
        now = time.monotonic()
        if self.known_jobs.get(name, 0.0) > now:
            return False
        self.known_jobs[name] = now + KNOWN_JOBS_CACHE_SECONDS
        return True


class Enqueuer(JobMaker):
    """Puts jobs into a namespace's queues; safe to share within a process, not across fork."""

    def __init__(
        self, namespace: str, redis_client: redis.Redis, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(namespace, clock)
        self.store = QueueStore(redis_client, self.keys)

    # --- gocraft's API ----------------------------------------------------------------------
    def enqueue(self, name: str, args: Mapping[str, Any] | None = None) -> Job:
        job, payload = self._new_job(name, args)
        self.store.push(name, [payload], self._needs_known(name))
        return job

    def enqueue_in(
        self, name: str, seconds_from_now: int, args: Mapping[str, Any] | None = None
    ) -> ScheduledJob:
        job, payload = self._new_job(name, args)
        run_at = job.t + int(seconds_from_now)  # one clock read, unlike gocraft (W35)
        self.store.schedule(name, payload, run_at, self._needs_known(name))
        return ScheduledJob(run_at, job)

    def enqueue_unique(self, name: str, args: Mapping[str, Any] | None = None) -> Job | None:
        return self.enqueue_unique_by_key(name, args, None)

    def enqueue_unique_in(
        self, name: str, seconds_from_now: int, args: Mapping[str, Any] | None = None
    ) -> ScheduledJob | None:
        return self.enqueue_unique_in_by_key(name, seconds_from_now, args, None)

    def enqueue_unique_by_key(
        self, name: str, args: Mapping[str, Any] | None, key_map: Mapping[str, Any] | None
    ) -> Job | None:
        """None when a job with the same name and key is already waiting (gocraft's "dup")."""
        job, stored = self._new_unique_job(name, args, key_map)
        enqueued = self.store.push_unique(name, job.unique_key, job.to_json(), stored, None)
        return job if enqueued else None

    def enqueue_unique_in_by_key(
        self,
        name: str,
        seconds_from_now: int,
        args: Mapping[str, Any] | None,
        key_map: Mapping[str, Any] | None,
    ) -> ScheduledJob | None:
        job, stored = self._new_unique_job(name, args, key_map)
        run_at = job.t + int(seconds_from_now)
        enqueued = self.store.push_unique(name, job.unique_key, job.to_json(), stored, run_at)
        return ScheduledJob(run_at, job) if enqueued else None

    # --- ours --------------------------------------------------------------------------------
    def enqueue_many(self, jobs: Iterable[tuple[str, Mapping[str, Any] | None]]) -> list[Job]:
        """Enqueue a batch in one round trip; every job is validated before anything is written."""
        made, by_name = self._new_many(jobs)
        if made:
            self.store.push_many(by_name, [n for n in by_name if self._needs_known(n)])
        return made

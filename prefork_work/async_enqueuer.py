"""``AsyncEnqueuer``: ``Enqueuer``'s methods, awaited, on ``redis.asyncio``.

For enqueueing from FastAPI, Starlette or aiohttp handlers without blocking the event loop.
The jobs and their bytes are exactly ``Enqueuer``'s (the same checks, the same scripts)::

    from redis.asyncio import Redis
    from prefork_work.async_enqueuer import AsyncEnqueuer

    enqueuer = AsyncEnqueuer("work", Redis.from_url("redis://localhost:6379/0"))
    job = await enqueuer.enqueue("send_email", {"to": "a@example.com"})
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prefork_work.enqueuer import JobMaker, ScheduledJob
from prefork_work.job import Job
from prefork_work.store.async_queue import AsyncQueueStore

if TYPE_CHECKING:
    import redis.asyncio


class AsyncEnqueuer(JobMaker):
    """Puts jobs into a namespace's queues from asyncio code; share it within one event loop."""

    def __init__(
        self, namespace: str, redis_client: redis.asyncio.Redis, *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(namespace, clock)
        self.store = AsyncQueueStore(redis_client, self.keys)

    async def enqueue(self, name: str, args: Mapping[str, Any] | None = None) -> Job:
        job, payload = self._new_job(name, args)
        await self.store.push(name, [payload], self._needs_known(name))
        return job

    async def enqueue_in(
        self, name: str, seconds_from_now: int, args: Mapping[str, Any] | None = None
    ) -> ScheduledJob:
        job, payload = self._new_job(name, args)
        run_at = job.t + int(seconds_from_now)
        await self.store.schedule(name, payload, run_at, self._needs_known(name))
        return ScheduledJob(run_at, job)

    async def enqueue_unique(self, name: str, args: Mapping[str, Any] | None = None) -> Job | None:
        return await self.enqueue_unique_by_key(name, args, None)

    async def enqueue_unique_in(
        self, name: str, seconds_from_now: int, args: Mapping[str, Any] | None = None
    ) -> ScheduledJob | None:
        return await self.enqueue_unique_in_by_key(name, seconds_from_now, args, None)

    async def enqueue_unique_by_key(
        self, name: str, args: Mapping[str, Any] | None, key_map: Mapping[str, Any] | None
    ) -> Job | None:
        """None when a job with the same name and key is already waiting (gocraft's "dup")."""
        job, stored = self._new_unique_job(name, args, key_map)
        enqueued = await self.store.push_unique(name, job.unique_key, job.to_json(), stored, None)
        return job if enqueued else None

    async def enqueue_unique_in_by_key(
        self, name: str, seconds_from_now: int, args: Mapping[str, Any] | None,
        key_map: Mapping[str, Any] | None,
    ) -> ScheduledJob | None:
        job, stored = self._new_unique_job(name, args, key_map)
        run_at = job.t + int(seconds_from_now)
        enqueued = await self.store.push_unique(name, job.unique_key, job.to_json(), stored, run_at)
        return ScheduledJob(run_at, job) if enqueued else None

    async def enqueue_many(self, jobs: Iterable[tuple[str, Mapping[str, Any] | None]]) -> list[Job]:
        """Enqueue a batch in one round trip; every job is validated before anything is written."""
        made, by_name = self._new_many(jobs)
        if made:
            await self.store.push_many(by_name, [n for n in by_name if self._needs_known(n)])
        return made

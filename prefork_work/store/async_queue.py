"""The enqueue side of ``queue.QueueStore`` on ``redis.asyncio``, for ``AsyncEnqueuer``.

The same scripts and commands as the sync store, so the bytes in Redis are the same; awaited,
so an ASGI handler enqueueing a job never blocks its event loop.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar

import redis
import redis.asyncio

from prefork_work.keys import Keys
from prefork_work.store.base import (
    WAKE_TOKENS_MAX,
    check_cluster_namespace,
    lua_source,
    redis_errors,
    script_sha,
)
from prefork_work.store.queue import unique_call

P = ParamSpec("P")
R = TypeVar("R")


def translate_errors_async(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Connection failures become RedisUnavailable, as in the sync stores."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with redis_errors():
            return await fn(*args, **kwargs)

    return wrapper


class AsyncQueueStore:
    """Enqueue operations of one namespace on an asyncio Redis client."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys) -> None:
        from redis.asyncio.cluster import RedisCluster

        check_cluster_namespace(isinstance(client, RedisCluster), keys)
        self.redis = client
        self.keys = keys

    async def run_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script on NOSCRIPT (safe to retry: it did not run)."""
        sha = script_sha(name)
        try:
            return await self.redis.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self.redis.script_load(lua_source(name))
            return await self.redis.execute_command("EVALSHA", sha, len(keys), *keys, *args)

    @translate_errors_async
    async def push(self, name: str, payloads: Sequence[bytes], add_known: bool) -> None:
        keys = [self.keys.jobs(name), self.keys.wake(), self.keys.known_jobs()]
        await self.run_script("push", keys, [name if add_known else "", WAKE_TOKENS_MAX, *payloads])

    @translate_errors_async
    async def push_many(self, by_name: dict[str, list[bytes]], known: Iterable[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        total = 0
        for name, payloads in by_name.items():
            pipe.lpush(self.keys.jobs(name), *payloads)
            total += len(payloads)
        tokens = min(total, WAKE_TOKENS_MAX)
        pipe.lpush(self.keys.wake(), *([b"1"] * tokens))
        pipe.ltrim(self.keys.wake(), 0, WAKE_TOKENS_MAX - 1)
        names = list(known)
        if names:
            pipe.sadd(self.keys.known_jobs(), *names)
        await pipe.execute()

    @translate_errors_async
    async def schedule(self, name: str, payload: bytes, run_at: int, add_known: bool) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.keys.scheduled(), {payload: run_at})
        if add_known:
            pipe.sadd(self.keys.known_jobs(), name)
        await pipe.execute()

    @translate_errors_async
    async def push_unique(
        self, name: str, unique_key: str, payload: bytes, stored: bytes, run_at: int | None
    ) -> bool:
        await self.redis.sadd(self.keys.known_jobs(), name)
        reply = await self.run_script("enqueue_unique", *unique_call(
            self.keys, name, unique_key, payload, stored, run_at))
        return bool(reply == b"ok")

"""AsyncEnqueuer (issue 10 item 5): Enqueuer's methods, awaited, writing the same bytes."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio

from prefork_work.async_enqueuer import AsyncEnqueuer
from prefork_work.enqueuer import Enqueuer
from prefork_work.errors import InvalidJobArguments, RedisUnavailable
from prefork_work.job import Job
from prefork_work.keys import Keys

NS = "ae"
K = Keys(NS)


def run(redis_url: str, body) -> object:
    async def main() -> object:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await body(AsyncEnqueuer(NS, client, clock=lambda: 1_700_000_000))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_enqueue_writes_what_enqueuer_writes(r, redis_url) -> None:
    job = run(redis_url, lambda e: e.enqueue("wat", {"a": 1, "b": "cool"}))
    assert isinstance(job, Job)
    twin = Enqueuer(NS, r, clock=lambda: 1_700_000_000).enqueue("wat", {"a": 1, "b": "cool"})
    first, second = r.lrange(K.jobs("wat"), 0, -1)[::-1]
    assert second == first.replace(job.id.encode(), twin.id.encode())
    assert first == b'{"name":"wat","id":"%s","t":1700000000,"args":{"a":1,"b":"cool"}}' % job.id.encode()
    assert r.smembers(K.known_jobs()) == {b"wat"}
    assert r.llen(K.wake()) >= 1  # an idle worker is woken


def test_enqueue_in_and_many(r, redis_url) -> None:
    async def body(e: AsyncEnqueuer) -> tuple:
        scheduled = await e.enqueue_in("later", 60, {"x": 1})
        many = await e.enqueue_many([("a", None), ("b", {"n": 2}), ("a", {})])
        return scheduled, many

    scheduled, many = run(redis_url, body)  # type: ignore[misc]
    assert scheduled.run_at == 1_700_000_060
    assert r.zrange(K.scheduled(), 0, -1, withscores=True) == [(scheduled.job.to_json(), 1_700_000_060.0)]
    assert [Job.from_json(x).id for x in r.lrange(K.jobs("a"), 0, -1)[::-1]] == [many[0].id, many[2].id]
    assert Job.from_json(r.lrange(K.jobs("b"), 0, -1)[0]).args == {"n": 2}
    assert r.smembers(K.known_jobs()) == {b"later", b"a", b"b"}


def test_unique_variants(r, redis_url) -> None:
    async def body(e: AsyncEnqueuer) -> list:
        return [
            await e.enqueue_unique("u", {"k": 1}),
            await e.enqueue_unique("u", {"k": 1}),  # a duplicate
            await e.enqueue_unique_in("v", 30, {"k": 1}),
            await e.enqueue_unique_in("v", 30, {"k": 1}),
            await e.enqueue_unique_by_key("w", {"n": 1}, {"key": "same"}),
            await e.enqueue_unique_by_key("w", {"n": 2}, {"key": "same"}),
            await e.enqueue_unique_in_by_key("x", 5, {"n": 1}, {"key": "k"}),
            await e.enqueue_unique_in_by_key("x", 5, {"n": 2}, {"key": "k"}),
        ]

    results = run(redis_url, body)
    assert [result is not None for result in results] == [True, False] * 4  # type: ignore[union-attr]
    assert r.llen(K.jobs("u")) == 1 and r.llen(K.jobs("w")) == 1
    assert r.zcard(K.scheduled()) == 2
    # the sync Enqueuer sees the async one's unique lock
    assert Enqueuer(NS, r).enqueue_unique("u", {"k": 1}) is None


@pytest.mark.parametrize("name, args", [("", None), ("a:b", None), ("ok", [1]), ("ok", {"x": object()})])
def test_bad_input_raises_before_writing(r, redis_url, name, args) -> None:
    with pytest.raises(InvalidJobArguments):
        run(redis_url, lambda e: e.enqueue(name, args))
    with pytest.raises(InvalidJobArguments):
        run(redis_url, lambda e: e.enqueue_many([("fine", None), (name, args)]))
    assert r.dbsize() == 0


def test_script_flush_and_unreachable_redis(r, redis_url) -> None:
    run(redis_url, lambda e: e.enqueue("a"))
    r.script_flush()
    run(redis_url, lambda e: e.enqueue("a"))  # loads the script again
    assert r.llen(K.jobs("a")) == 2
    started = time.monotonic()
    with pytest.raises(RedisUnavailable):
        run("redis://127.0.0.1:1/0", lambda e: e.enqueue("a"))
    assert time.monotonic() - started < 5


def test_the_event_loop_runs_while_an_enqueue_waits(redis_url) -> None:
    # many enqueues in flight at once on one loop: they interleave, none blocks the loop
    async def body(e: AsyncEnqueuer) -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.gather(*(e.enqueue("many", {"i": i}) for i in range(20)))
        task.cancel()
        return ticks

    assert run(redis_url, body) > 10  # type: ignore[operator]

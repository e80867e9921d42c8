"""arq: async no-op functions that count themselves done (benches/done.py) (poll_delay lowered to 5 ms).

``latency(t)`` records its pickup latency (benches/latency.py); enqueued with enqueue_job.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from importlib.metadata import version

from arq import create_pool, run_worker
from arq.connections import RedisSettings
from arq.worker import func

from benches.done import DoneCounter
from benches.peers._common import COUNTER, NAMES, URL, cli, record_latency

REDIS = RedisSettings.from_dsn(URL)


done = DoneCounter(URL, COUNTER)


async def _noop(ctx: dict) -> None:
    done()


async def _latency(ctx: dict, t: float) -> None:
    record_latency(t)  # a sync RPUSH on the event loop, after the clock is read


class WorkerSettings:
    functions = [func(_noop, name=name) for name in NAMES] + [func(_latency, name="latency")]
    redis_settings = REDIS
    poll_delay = 0.005  # arq's default is 0.5 s between polls of an idle queue


async def _enqueue(n: int, mode: str) -> None:
    pool = await create_pool(REDIS)
    try:
        if mode == "one":
            for i in range(n):
                await pool.enqueue_job(NAMES[i % len(NAMES)])
            return
        for start in range(0, n, 200):  # arq has no batch enqueue: 200 concurrent calls
            await asyncio.gather(*(pool.enqueue_job(NAMES[i % len(NAMES)])
                                   for i in range(start, min(n, start + 200))))
    finally:
        await pool.aclose()


def enqueue(n: int, mode: str) -> None:
    asyncio.run(_enqueue(n, mode))


async def _enqueue_latency(times: Iterator[float]) -> None:
    pool = await create_pool(REDIS)
    try:
        for t in times:  # the pacing sleeps block the loop: nothing else runs in it
            await pool.enqueue_job("latency", t)
    finally:
        await pool.aclose()


def enqueue_latency(times: Iterator[float]) -> None:
    asyncio.run(_enqueue_latency(times))


def worker() -> None:
    """``arq`` CLI's run_worker, with logging at WARNING (the CLI logs every job at INFO)."""
    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker()
    else:
        cli(version("arq"), enqueue, enqueue_latency)

"""rq: no-op tasks that INCR the bench counter directly (a work horse per job: see benches/done.py); enqueue with Queue.enqueue / enqueue_many.

``latency(t)`` records its pickup latency (benches/latency.py); enqueued with Queue.enqueue.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
import rq
from rq import Queue

from benches.peers._common import COUNTER, NAMES, URL, cli, record_latency

_conn = redis.Redis.from_url(URL)  # rq forks a work horse per job: the pool is reset on fork

MODULE = __spec__.name if __spec__ else __name__


def _make(name: str):
    def task() -> None:
        _conn.incr(COUNTER)

    task.__name__ = task.__qualname__ = name
    task.__module__ = MODULE  # not __main__ when run with -m: workers import it by this name
    return task


for _name in NAMES:
    globals()[_name] = _make(_name)


def latency(t: float) -> None:
    record_latency(t)


latency.__module__ = MODULE


def enqueue_latency(times: Iterator[float]) -> None:
    queue = Queue("default", connection=_conn)
    for t in times:
        queue.enqueue(latency, t)


def enqueue(n: int, mode: str) -> None:
    queue = Queue("default", connection=_conn)
    funcs = [globals()[name] for name in NAMES]
    if mode == "one":
        for i in range(n):
            queue.enqueue(funcs[i % len(funcs)])
        return
    for start in range(0, n, 1000):
        batch = [Queue.prepare_data(funcs[i % len(funcs)]) for i in range(start, min(n, start + 1000))]
        with _conn.pipeline() as pipe:
            queue.enqueue_many(batch, pipeline=pipe)
            pipe.execute()


if __name__ == "__main__":
    cli(rq.__version__, enqueue, enqueue_latency)

"""huey (RedisHuey): no-op tasks that count themselves done (benches/done.py).

``latency(t)`` records its pickup latency (benches/latency.py); enqueued by calling it.
"""

from __future__ import annotations

from collections.abc import Iterator

import huey as huey_pkg
from huey import RedisHuey

from benches.done import DoneCounter
from benches.peers._common import COUNTER, NAMES, URL, cli, record_latency

huey = RedisHuey("bench", url=URL)

done = DoneCounter(URL, COUNTER)

MODULE = __spec__.name if __spec__ else __name__


def _make(name: str):
    def task() -> None:
        done()

    task.__name__ = task.__qualname__ = name
    task.__module__ = MODULE  # not __main__ when run with -m: workers import it by this name
    return huey.task(name=name)(task)


TASKS = [_make(name) for name in NAMES]


def _latency(t: float) -> None:
    record_latency(t)


_latency.__module__ = MODULE
latency = huey.task(name="latency")(_latency)


def enqueue(n: int, mode: str) -> None:
    for i in range(n):  # calling a huey task enqueues it; huey has no batch enqueue
        TASKS[i % len(TASKS)]()


def enqueue_latency(times: Iterator[float]) -> None:
    for t in times:
        latency(t)


if __name__ == "__main__":
    cli(huey_pkg.__version__, enqueue, enqueue_latency)

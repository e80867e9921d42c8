"""dramatiq (RedisBroker): no-op actors that count themselves done (benches/done.py).

``latency(t)`` records its pickup latency (benches/latency.py); enqueued with actor.send.
"""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benches.done import DoneCounter
from benches.peers._common import COUNTER, NAMES, URL, cli, record_latency

broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)

done = DoneCounter(URL, COUNTER)


def _make(name: str):
    def task() -> None:
        done()

    task.__name__ = task.__qualname__ = name
    return dramatiq.actor(task, actor_name=name)


ACTORS = [_make(name) for name in NAMES]


@dramatiq.actor(actor_name="latency")
def latency(t: float) -> None:
    record_latency(t)


def enqueue(n: int, mode: str) -> None:
    for i in range(n):  # dramatiq has no batch enqueue
        ACTORS[i % len(ACTORS)].send()


def enqueue_latency(times: Iterator[float]) -> None:
    for t in times:
        latency.send(t)


if __name__ == "__main__":
    cli(dramatiq.__version__, enqueue, enqueue_latency)

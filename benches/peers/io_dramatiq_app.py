"""dramatiq for the I/O bench: ``noop*`` actors that ``time.sleep(0.05)`` on its worker threads
(dramatiq has no async actors; threads are its way to wait on I/O)."""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benches.done import DoneCounter
from benches.peers._common import COUNTER, NAMES, URL, cli

WAIT = float(os.environ.get("BENCH_IO_WAIT", "0.05"))
broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)
done = DoneCounter(URL, COUNTER)


def _make(name: str):
    def task() -> None:
        time.sleep(WAIT)
        done()

    task.__name__ = task.__qualname__ = name
    return dramatiq.actor(task, actor_name=name)


ACTORS = [_make(name) for name in NAMES]


def enqueue(n: int, mode: str) -> None:
    for i in range(n):  # dramatiq has no batch enqueue
        ACTORS[i % len(ACTORS)].send()


if __name__ == "__main__":
    cli(dramatiq.__version__, enqueue)

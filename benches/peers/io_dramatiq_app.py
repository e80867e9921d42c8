"""dramatiq for the I/O bench: ``noop*`` actors that ``time.sleep(0.05)`` on its worker threads
(dramatiq has no async actors; threads are its way to wait on I/O)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benches.done import DoneCounter
from benches.peers._common import COUNTER, NAMES, URL, cli, io_task

broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)
done = DoneCounter(URL, COUNTER)
ACTORS = [dramatiq.actor(io_task(name, done), actor_name=name) for name in NAMES]


def enqueue(n: int, mode: str) -> None:
    for i in range(n):  # dramatiq has no batch enqueue
        ACTORS[i % len(ACTORS)].send()


if __name__ == "__main__":
    cli(dramatiq.__version__, enqueue)

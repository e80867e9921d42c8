"""huey (RedisHuey): no-op tasks that count themselves done (benches/done.py)."""

from __future__ import annotations

import huey as huey_pkg
from huey import RedisHuey

from benches.done import DoneCounter
from benches.peers._common import COUNTER, NAMES, URL, cli

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


def enqueue(n: int, mode: str) -> None:
    for i in range(n):  # calling a huey task enqueues it; huey has no batch enqueue
        TASKS[i % len(TASKS)]()


if __name__ == "__main__":
    cli(huey_pkg.__version__, enqueue)

"""celery for the I/O bench: ``noop*`` tasks that ``time.sleep(0.05)``, run by its thread pool
(``-P threads``)."""

from __future__ import annotations

import os
import time

import celery
from celery import Celery

from benches.done import DoneCounter
from benches.peers._common import COUNTER, NAMES, URL, cli

WAIT = float(os.environ.get("BENCH_IO_WAIT", "0.05"))
app = Celery("bench_io", broker=URL)
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)
done = DoneCounter(URL, COUNTER)


def _make(name: str):
    def task() -> None:
        time.sleep(WAIT)
        done()

    task.__name__ = task.__qualname__ = name
    return app.task(name=name)(task)


TASKS = [_make(name) for name in NAMES]


def enqueue(n: int, mode: str) -> None:
    with app.producer_or_acquire() as producer:
        for i in range(n):
            TASKS[i % len(TASKS)].apply_async(producer=producer)


if __name__ == "__main__":
    cli(celery.__version__, enqueue)

"""celery (redis broker, no result backend): no-op tasks that count themselves done (benches/done.py).

``latency(t)`` records its pickup latency (benches/latency.py); enqueued with apply_async.
"""

from __future__ import annotations

from collections.abc import Iterator

import celery
from celery import Celery

from benches.done import DoneCounter
from benches.peers._common import COUNTER, NAMES, URL, cli, record_latency

app = Celery("bench", broker=URL)
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

done = DoneCounter(URL, COUNTER)


def _make(name: str):
    def task() -> None:
        done()

    task.__name__ = task.__qualname__ = name
    return app.task(name=name)(task)


TASKS = [_make(name) for name in NAMES]


@app.task(name="latency")
def latency(t: float) -> None:
    record_latency(t)


def enqueue(n: int, mode: str) -> None:
    # celery has no batch enqueue: one apply_async per job, on one pooled producer
    with app.producer_or_acquire() as producer:
        for i in range(n):
            TASKS[i % len(TASKS)].apply_async(producer=producer)


def enqueue_latency(times: Iterator[float]) -> None:
    with app.producer_or_acquire() as producer:
        for t in times:
            latency.apply_async((t,), producer=producer)


if __name__ == "__main__":
    cli(celery.__version__, enqueue, enqueue_latency)

"""celery for the I/O bench: ``noop*`` tasks that ``time.sleep(0.05)``, run by its thread pool
(``-P threads``)."""

from __future__ import annotations

import celery
from celery import Celery

from benches.done import DoneCounter
from benches.peers._common import COUNTER, NAMES, URL, cli, io_task

app = Celery("bench_io", broker=URL)
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)
done = DoneCounter(URL, COUNTER)
TASKS = [app.task(name=name)(io_task(name, done)) for name in NAMES]


def enqueue(n: int, mode: str) -> None:
    with app.producer_or_acquire() as producer:
        for i in range(n):
            TASKS[i % len(TASKS)].apply_async(producer=producer)


if __name__ == "__main__":
    cli(celery.__version__, enqueue)

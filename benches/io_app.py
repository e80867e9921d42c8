"""The prefork-work app of the I/O-bound bench (benches/io.py): ``noop0..noop{N-1}`` that wait.

``$BENCH_IO_MODE`` = ``async``: ``async def`` handlers that ``await asyncio.sleep(0.05)``;
``sync``: plain handlers that ``time.sleep(0.05)`` (run in the child's thread pool). Each
counts itself done through benches/done.py, as the peers' tasks do.
"""

from __future__ import annotations

import asyncio
import os
import time

from benches.done import DoneCounter
from benches.peers._common import IO_WAIT
from prefork_work.app import App
from prefork_work.job import Job

COUNTER = os.environ.get("BENCH_COUNTER_KEY", "bench:done")
MODE = os.environ.get("BENCH_IO_MODE", "async")

app = App()
done = DoneCounter(os.environ.get("BENCH_REDIS_URL", ""), COUNTER)


async def _wait_async(job: Job) -> None:
    await asyncio.sleep(IO_WAIT)
    done()


def _wait_sync(job: Job) -> None:
    time.sleep(IO_WAIT)
    done()


for _i in range(int(os.environ.get("BENCH_JOB_NAMES", "5"))):
    app.register(f"noop{_i}", _wait_async if MODE == "async" else _wait_sync)

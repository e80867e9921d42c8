"""arq for the I/O bench: ``noop*`` functions that ``await asyncio.sleep(0.05)``.

``max_jobs`` is ``$BENCH_IO_SLOTS`` (the same concurrency per process as prefork-work's
``jobs_per_child``); poll_delay 5 ms as in benches/peers/arq_app.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from importlib.metadata import version

from arq import run_worker
from arq.worker import func

from benches.done import DoneCounter
from benches.peers._common import COUNTER, IO_WAIT, NAMES, URL, cli
from benches.peers.arq_app import REDIS, enqueue

done = DoneCounter(URL, COUNTER)


async def _wait(ctx: dict) -> None:
    await asyncio.sleep(IO_WAIT)
    done()


class WorkerSettings:
    functions = [func(_wait, name=name) for name in NAMES]
    redis_settings = REDIS
    poll_delay = 0.005
    max_jobs = int(os.environ.get("BENCH_IO_SLOTS", "10"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        logging.basicConfig(level=logging.WARNING)
        run_worker(WorkerSettings)  # type: ignore[arg-type]
    else:
        cli(version("arq"), enqueue)

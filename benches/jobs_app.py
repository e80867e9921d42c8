"""The prefork-work app of the benches: ``noop0..noop{N-1}`` plus ``latency``.

N is ``$BENCH_JOB_NAMES`` (default 5); ``$BENCH_STATUS=1`` registers them with
``status=True`` (benches/overhead.py). Every no-op job counts itself done in
``$BENCH_COUNTER_KEY`` of the bench Redis (``$BENCH_REDIS_URL``) through benches/done.py,
exactly as the peers' no-op tasks do, so completion is detected the same way for every
system. ``latency`` records ``time.time()`` when its
handler starts and RPUSHes (start − args["t"]) to ``bench:latency``
(``LATENCY_KEY``, defined once in benches/peers/_common.py for every system).
"""

from __future__ import annotations

import os
import time

from benches.done import DoneCounter
from benches.peers._common import LATENCY_KEY, URL, process_client
from prefork_work.app import App
from prefork_work.job import Job

COUNTER = os.environ.get("BENCH_COUNTER_KEY", "bench:done")

app = App()

done = DoneCounter(os.environ.get("BENCH_REDIS_URL", ""), COUNTER)


def _noop(job: Job) -> None:
    done()


_options = {"status": True} if os.environ.get("BENCH_STATUS") == "1" else {}
for _i in range(int(os.environ.get("BENCH_JOB_NAMES", "5"))):
    app.register(f"noop{_i}", _noop, **_options)


@app.job("latency")
def latency(job: Job) -> None:
    started = time.time()
    sent = job.args["t"] if job.args else started
    process_client(URL).rpush(LATENCY_KEY, repr(started - float(sent)))
    process_client(URL).incr(COUNTER)

"""Counting finished jobs without a Redis round trip per job, the same way in every system.

The workload is no-op jobs (gocraft/work's benchmark). A job that INCRs a counter is not a
no-op: on this class of machine the round trip costs 60–100 µs, more than the whole per-job
cost of a batched system, so it would measure the counter rather than the job server. Each
worker process therefore counts in memory and a daemon thread adds the count to the bench
Redis every 5 ms (INCRBY of the delta). The last jobs show up at most one interval late.

rq forks a work horse per job and ends it with ``os._exit`` (no thread survives, no atexit
hook runs): there the counter is incremented directly (``direct=True``), a cost that is
noise next to rq's fork.
"""

from __future__ import annotations

import os
import threading
import time

import redis

FLUSH_INTERVAL = 0.005
_START = threading.Lock()


class DoneCounter:
    def __init__(self, url: str, key: str, direct: bool = False) -> None:
        self.url = url
        self.key = key
        self.direct = direct
        self.pid = -1
        self.count = 0
        self.client: redis.Redis | None = None
        self.lock = threading.Lock()  # dramatiq runs jobs on 8 threads per process

    def __call__(self) -> None:
        if self.pid != os.getpid():  # first job in this process (modules load before fork)
            with _START:
                if self.pid != os.getpid():
                    self.lock = threading.Lock()
                    self.count = 0
                    self.client = redis.Redis.from_url(self.url)
                    if not self.direct:
                        threading.Thread(target=self._flush_forever, daemon=True).start()
                    self.pid = os.getpid()
        if self.direct:
            assert self.client is not None
            self.client.incr(self.key)
        else:
            with self.lock:
                self.count += 1

    def _flush_forever(self) -> None:
        assert self.client is not None
        flushed = 0
        while True:
            time.sleep(FLUSH_INTERVAL)
            count = self.count
            if count != flushed:
                self.client.incrby(self.key, count - flushed)
                flushed = count

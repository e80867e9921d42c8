"""Helpers of the peer modules: settings from the environment, the latency task body, the CLI.

Standard library only (the latency task imports ``redis`` when it first runs), so that
benches/jobs_app.py can import ``LATENCY_KEY`` from here without pulling in a peer library.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:0/0")
NAMES = [f"noop{i}" for i in range(int(os.environ.get("BENCH_JOB_NAMES", "5")))]
COUNTER = os.environ.get("BENCH_COUNTER_KEY", "bench:done")
LATENCY_KEY = "bench:latency"  # the one definition: benches/jobs_app.py and benches/latency.py use it
LATENCY_SEED = 4
IO_WAIT = float(os.environ.get("BENCH_IO_WAIT", "0.05"))  # what each I/O-bench job waits (s)

USAGE = ("usage: python -m benches.peers.X version | enqueue N [one|many]"
         " | latency N MIN_GAP MAX_GAP [SEED]")

_clients: dict[tuple[int, str], Any] = {}


def process_client(url: str) -> Any:
    """This process's Redis client for ``url``: modules load before the workers fork (rq forks
    a work horse per job), and a child must not share its parent's socket."""
    key = (os.getpid(), url)
    if key not in _clients:
        import redis

        _clients[key] = redis.Redis.from_url(url)
    return _clients[key]


def record_latency(t: float) -> None:
    """Body of every peer's ``latency`` task: RPUSH (now − t) to ``LATENCY_KEY``.

    ``t`` is the enqueue ``time.time()``; the clock is read first thing.
    """
    started = time.time()
    process_client(URL).rpush(LATENCY_KEY, repr(started - float(t)))


def io_task(name: str, done: Callable[[], None]) -> Callable[[], None]:
    """The body of the threaded peers' I/O-bench task ``name``: a blocking wait of IO_WAIT,
    then counted done (the libraries register a task under its function's name)."""
    def task() -> None:
        time.sleep(IO_WAIT)
        done()

    task.__name__ = task.__qualname__ = name
    return task


def paced_times(n: int, min_gap: float, max_gap: float, seed: int = LATENCY_SEED) -> Iterator[float]:
    """Yield ``time.time()`` ``n`` times, sleeping a seeded uniform gap between yields.

    The caller enqueues one latency job per value, right away, with the value as its ``t``.
    """
    rng = random.Random(seed)
    for i in range(n):
        if i:
            time.sleep(rng.uniform(min_gap, max_gap))
        yield time.time()


def cli(version: str, enqueue: Callable[[int, str], None],
        latency: Callable[[Iterator[float]], None] | None = None) -> None:
    """``python -m benches.peers.X version | enqueue N [one|many] | latency N MIN MAX [SEED]``.

    Prints one JSON line. ``latency`` enqueues one latency job per value of ``paced_times``
    with the peer's ordinary one-at-a-time call.
    """
    mode_name = sys.argv[1:2]
    if mode_name == ["version"]:
        print(json.dumps({"version": version}))
        return
    if mode_name == ["latency"] and latency is not None:
        n, min_gap, max_gap = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
        seed = int(sys.argv[5]) if len(sys.argv) > 5 else LATENCY_SEED
        started = time.perf_counter()
        latency(paced_times(n, min_gap, max_gap, seed))
        elapsed = time.perf_counter() - started
        print(json.dumps({"version": version, "jobs": n, "mode": "latency", "seconds": elapsed}))
        return
    if mode_name != ["enqueue"]:
        sys.exit(USAGE)
    n = int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "many"
    started = time.perf_counter()
    enqueue(n, mode)
    elapsed = time.perf_counter() - started
    print(json.dumps({"version": version, "jobs": n, "mode": mode, "seconds": elapsed}))

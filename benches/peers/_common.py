"""Helpers of the peer modules: settings from the environment and the enqueue CLI."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:0/0")
NAMES = [f"noop{i}" for i in range(int(os.environ.get("BENCH_JOB_NAMES", "5")))]
COUNTER = os.environ.get("BENCH_COUNTER_KEY", "bench:done")


def cli(version: str, enqueue: Callable[[int, str], None]) -> None:
    """``python -m benches.peers.X version`` | ``... enqueue N [one|many]``: prints one JSON line."""
    if sys.argv[1:2] == ["version"]:
        print(json.dumps({"version": version}))
        return
    if sys.argv[1:2] != ["enqueue"]:
        sys.exit("usage: python -m benches.peers.X version | enqueue N [one|many]")
    n = int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "many"
    started = time.perf_counter()
    enqueue(n, mode)
    elapsed = time.perf_counter() - started
    print(json.dumps({"version": version, "jobs": n, "mode": mode, "seconds": elapsed}))

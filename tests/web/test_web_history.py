"""The overview's processed/failed per minute: snapshots of the job counters, differences
between consecutive minutes, gaps as "no data"."""

from __future__ import annotations

import json

import pytest

from prefork_work.client import Client
from prefork_work.enqueuer import Enqueuer
from prefork_work.keys import Keys
from prefork_work.store.web import WebStore
from prefork_work.web.history import HISTORY_MINUTES, per_minute, record_minute

NS = "webh"
K = Keys(NS)
MINUTE = 29_000_000


def store(r) -> WebStore:
    return WebStore(r, K)


def test_per_minute_differences_gaps_and_resets(r) -> None:
    snapshots = {MINUTE - 3: (10, 1), MINUTE - 2: (25, 3), MINUTE - 1: (5, 0), MINUTE: (9, 2)}
    for minute, (processed, failed) in snapshots.items():
        r.set(K.web_minute(minute), json.dumps({"processed": processed, "failed": failed}))
    r.set(K.web_minute(MINUTE - 10), b"not json")
    series = per_minute(store(r), now=MINUTE * 60 + 30)
    assert len(series) == HISTORY_MINUTES and series[-1]["minute"] == MINUTE
    by_minute = {p["minute"]: (p["processed"], p["failed"]) for p in series}
    assert by_minute[MINUTE - 2] == (15, 2)
    assert by_minute[MINUTE - 1] == (None, None)  # counters went down: a reset, not -20
    assert by_minute[MINUTE] == (4, 2)
    assert by_minute[MINUTE - 3] == (None, None)  # nothing the minute before: a gap
    assert by_minute[MINUTE - 9] == (None, None)


def test_snapshots_of_real_counters(r) -> None:
    pytest.importorskip("prefork_work.metrics", reason="prefork_work.metrics not on this branch")
    pytest.importorskip("prometheus_client")
    from prefork_work.app import App
    from prefork_work.worker import Worker

    app = App()

    @app.job("ok")
    def ok(job):
        pass

    @app.job("bad", max_fails=1)
    def bad(job):
        raise RuntimeError("no")

    client = Client(NS, r)
    worker = Worker(app, r, NS)
    enqueuer = Enqueuer(NS, r)
    assert record_minute(client, store(r), now=(MINUTE - 1) * 60)
    for name in ("ok", "ok", "ok", "bad"):
        enqueuer.enqueue(name, {})
    while worker.run_one():
        pass
    worker.close()
    assert record_minute(client, store(r), now=MINUTE * 60 + 5)
    # a second writer in the same minute does not overwrite the first snapshot
    enqueuer.enqueue("ok", {})
    Worker(app, r, NS).run_one()
    record_minute(client, store(r), now=MINUTE * 60 + 50)
    last = per_minute(store(r), now=MINUTE * 60 + 59)[-1]
    assert (last["processed"], last["failed"]) == (4, 1)
    assert r.ttl(K.web_minute(MINUTE)) > 3600

"""Poison payloads pushed where producers and Redis users can put them: a queue, the scheduled
set and the retry set (issue 7 item 1, issue 12 item 4).

Random bytes, truncated JSON, a wrong type in every field, huge numbers, nesting 1,000 and
100,000 deep, invalid UTF-8, lone surrogates, payloads over max_payload_bytes, names that
make another key. Each one must end in the dead set exactly once with a short, clear error;
the healthy jobs around them must run exactly once; the worker and the requeuer must never
raise. Randomness is seeded. (The real-server version is in test_server_jobs.py.)
"""

from __future__ import annotations

import collections
import json
import random
import time

from prefork_work.app import App
from prefork_work.enqueuer import Enqueuer
from prefork_work.job import Job
from prefork_work.keys import Keys
from prefork_work.loops.requeuer import Requeuer
from prefork_work.store.pools import PoolStore
from prefork_work.worker import Worker

NS = "fz"
K = Keys(NS)
SEED = 20261128
MAX_PAYLOAD = 1_000_000  # over the 100,000-deep payloads: those are decoded, nested too deeply
HANDLER_ERROR = "fuzz payload ran and failed"

WRONG_TYPES = {
    "name": [1, 1.5, [], {}, True],
    "id": [1, -1.5, ["x"], {"a": 1}, False],
    "t": ["1", 1.5, [1], {}, True, 2**64, -(2**63) - 1],
    "args": ["x", 1, [1, 2], True, 1.5],
    "unique": ["true", 1, [], {}],
    "unique_key": [1, [], {}, True],
    "fails": ["0", 0.5, [], True, 2**63],
    "err": [1, [], {"e": 1}, False],
    "failed_at": ["1", 2.5, [], {}],
}


def job_text(tag: str, **fields: object) -> str:
    return json.dumps({"name": "fuzz", "id": tag, "t": 1_700_000_000, "args": {"a": 1}, **fields})


def poison(place: str, rng: random.Random) -> list[bytes]:
    """Every kind of bad payload once; ``place`` goes into ids so that no two places make
    byte-identical dead entries."""
    out: list[bytes] = []
    out += [rng.randbytes(rng.randrange(1, 300)) for _ in range(20)]
    valid = job_text(f"{place}-trunc").encode()
    out += [valid[:cut] for cut in sorted(rng.sample(range(1, len(valid)), 12))]
    for field, values in WRONG_TYPES.items():
        for i, value in enumerate(values):
            fields: dict[str, object] = {field: value}
            if field != "id":
                fields["id"] = f"{place}-{field}-{i}"
            out.append(job_text(f"{place}-{field}-{i}", **fields).encode())
    head = f'{{"name":"fuzz","id":"{place}-num","t":1,"args":{{"x":'.encode()
    out += [head + number + b"}}" for number in
            (b"1e999", b"-1e400", b"9" * 400, b"1" + b"0" * 5000, b"1.5e308000")]
    out.append(b'{"name":"fuzz","id":"n","t":1e400}')
    for levels in (1_000, 100_000):
        out.append(job_text(f"{place}-deep-{levels}").encode()[:-1]
                   + b',"deep":' + b"[" * levels + b"]" * levels + b"}")
        out.append(b'{"name":"fuzz","args":{"a":' + b'{"a":' * levels + b"1" + b"}" * levels + b"}}")
        out.append(b"[" * levels)
    # decodable (Go too: invalid UTF-8 and lone surrogates become U+FFFD): they run and fail
    tag = f"{place}-utf8"
    out.append(job_text(tag).encode().replace(b'"a": 1', b'"a": "\xff\xfe\xc3"'))
    out.append(job_text(tag + "-err", err="x").encode().replace(b'"x"', b'"\xed\xa0\x80"'))
    out.append(job_text(f"{place}-surrogate", args={"s": "\ud800 \udfff"}).encode())
    out.append(job_text(f"{place}-big", args={"blob": "p" * MAX_PAYLOAD}).encode())  # too big
    out.append(job_text(f"{place}-lock", name="fuzz:lock").encode())  # its queue is a lock key
    out.append(b"{}")  # no name
    return out


def test_poison_payloads_end_in_dead_and_healthy_jobs_run(r) -> None:
    rng = random.Random(SEED)
    app = App()
    runs: collections.Counter[str] = collections.Counter()
    app.register("healthy", lambda job: runs.update([job.id]))

    def fuzz(job: Job) -> None:
        raise RuntimeError(HANDLER_ERROR)

    app.register("fuzz", fuzz, max_fails=1)
    r.set(K.lock("fuzz"), 0)  # <ns>:jobs:fuzz:lock exists, as it does once "fuzz" ran
    enqueuer = Enqueuer(NS, r)
    now = int(time.time())
    healthy = [enqueuer.enqueue("healthy", {"i": 0})]
    placed = 0
    for raw in poison("queue", rng):
        r.lpush(K.jobs("fuzz"), raw)
        healthy.append(enqueuer.enqueue("healthy", {"i": len(healthy)}))
        placed += 1
    for zset in (K.scheduled(), K.retry()):
        members = poison(zset, rng)
        assert len(set(members)) == len(members)
        for raw in members:
            r.zadd(zset, {raw: now - rng.randrange(1, 100)})
            healthy.append(enqueuer.enqueue_in("healthy", 0, {"i": len(healthy)}).job)
            placed += 1
    healthy[-1:] = [enqueuer.enqueue("healthy", {"i": "last"})]  # and one queued at the end

    worker = Worker(app, r, NS, max_payload_bytes=MAX_PAYLOAD, idle_waits=(0.01,))
    worker.log_success = False
    requeuer = Requeuer(PoolStore(r, K))
    for _ in range(5):  # none of this may raise
        requeuer.tick(time.time() + 1)  # the healthy ones were scheduled after "now"
        worker.drain()
        if not (r.zcard(K.scheduled()) or r.zcard(K.retry()) or r.llen(K.jobs("fuzz"))):
            break
    worker.close()

    assert {j.id for j in healthy} <= set(runs) and set(runs.values()) == {1}
    dead = [Job.from_json(member) for member in r.zrange(K.dead(), 0, -1)]
    assert len(dead) == placed  # every poison payload, once, nowhere else
    kinds: collections.Counter[str] = collections.Counter()
    for job in dead:
        assert 0 < len(job.err) < 200, job.err
        if job.err.startswith("malformed job"):
            kinds["malformed"] += 1
            assert "malformed_payload" in (job.args or {})
        elif job.err == "stray job: no handler":
            kinds["stray"] += 1
        else:
            assert job.err == HANDLER_ERROR, job.err
            kinds["ran"] += 1
    assert kinds["ran"] == 3 * 3  # per place, the decodable ones: invalid UTF-8 twice, surrogates
    assert kinds["stray"] == 2  # the queue's "fuzz:lock" and "{}" (no handler for them)
    assert sum("over server.max_payload_bytes" in job.err for job in dead) == 3
    assert sum("holds another type" in job.err for job in dead) == 2
    assert sum("nested too deeply" in job.err for job in dead) == 3 * 6
    assert r.zcard(K.scheduled()) == 0 and r.zcard(K.retry()) == 0
    for name in ("fuzz", "healthy"):
        assert r.llen(K.jobs(name)) == 0
        assert r.llen(K.in_progress(name, worker.pool_id)) == 0
    assert r.get(K.lock("healthy")) == b"0"
    assert r.get(K.lock("fuzz")) == b"0"

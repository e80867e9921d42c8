"""Dashboard and API page times on big data: 1,000,000 queued jobs and 100,000 dead jobs.

    python -m benches.web_pages [--queued 1000000] [--dead 100000] [--names 10] [--runs 5]

Fills a private redis-server (enqueue_many for the queues; pipelined ZADDs for the dead,
retry and scheduled sets; a few pool heartbeats and busy observations), serves the web app
with uvicorn on a free loopback port, and times each page over HTTP: the median and the
worst of ``--runs`` requests after one warm-up. The target is < 300 ms per page: no page
may scan a whole list or set (LLEN, LINDEX, ZCARD, ZRANGEBYSCORE ... LIMIT only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

from benches.common import PrivateRedis, free_port, print_table

PAGES = [
    "/", "/ui/queues", "/ui/processes", "/ui/busy",
    "/ui/scheduled", "/ui/retry", "/ui/dead", "/ui/dead?page={last}",
    "/api/queues", "/api/metrics/queues", "/api/overview", "/api/processes",
    "/queues", "/dead_jobs?page=1", "/dead_jobs?page={last}", "/busy_workers", "/metrics",
    # job status lookups (Client.job_status): a dead job halfway down the set, an unknown id
    "/ui/status?id={dead_id}", "/api/jobs/{dead_id}", "/api/jobs/{unknown_id}",
]
BATCH = 10_000


def fill(client, queued: int, dead: int, names: int) -> None:  # type: ignore[no-untyped-def]
    from prefork_work.enqueuer import Enqueuer
    from prefork_work.job import Job, make_identifier
    from prefork_work.keys import Keys

    keys = Keys("work")
    enqueuer = Enqueuer("work", client)
    job_names = [f"job_{i}" for i in range(names)]
    started = time.monotonic()
    for start in range(0, queued, BATCH):
        count = min(BATCH, queued - start)
        enqueuer.enqueue_many((job_names[(start + i) % names],
                               {"user_id": start + i, "note": "<b>hello</b>"}) for i in range(count))
    now = int(time.time())
    for key, total in ((keys.dead(), dead), (keys.retry(), dead // 10), (keys.scheduled(), dead // 10)):
        for start in range(0, total, BATCH):
            pipe = client.pipeline(transaction=False)
            members = {}
            for i in range(start, min(start + BATCH, total)):
                job = Job(name=job_names[i % names], id=make_identifier(), t=now - 3600,
                          args={"user_id": i}, fails=1, err="boom", failed_at=now - 60)
                members[job.to_json()] = now - total + i
            pipe.zadd(key, members)
            pipe.execute()
    for p in range(8):  # one host, a master and 8 children, half of them busy
        pool, worker = f"pool{p}", f"worker{p}"
        client.sadd(keys.worker_pools(), pool)
        client.hset(keys.heartbeat(pool), mapping={
            "heartbeat_at": now, "started_at": now - 600, "job_names": ",".join(job_names),
            "concurrency": 1, "worker_ids": worker, "host": "bench", "pid": 1000 + p,
            "master_pid": 999, "master_id": "m"})
        if p % 2:
            client.hset(keys.worker_observation(worker), mapping={
                "job_name": job_names[0], "job_id": make_identifier(), "started_at": now,
                "args": '{"user_id":1}', "checkin": "working", "checkin_at": now})
    print(f"filled {queued:,} queued, {dead:,} dead, {dead // 10:,} retry, {dead // 10:,} "
          f"scheduled in {time.monotonic() - started:.1f}s; redis memory "
          f"{client.info('memory')['used_memory_human']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--names", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    import httpx
    import uvicorn

    from prefork_work.client import Client
    from prefork_work.connection import redis_from_url
    from prefork_work.web import create_app

    with PrivateRedis() as server:
        client = redis_from_url(server.unix_url, client_name="bench-web", socket_timeout=60)
        fill(client, args.queued, args.dead, args.names)
        port = free_port()
        app = create_app(Client("work", client))
        web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                            access_log=False, lifespan="off"))
        thread = threading.Thread(target=web.run, daemon=True)
        thread.start()
        while not web.started:
            time.sleep(0.01)
        last = (args.dead + 19) // 20
        middle = client.zrange("work:dead", args.dead // 2, args.dead // 2)[0]
        ids = {"dead_id": json.loads(middle)["id"], "unknown_id": "f" * 24}
        rows = []
        worst = 0.0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for page in PAGES:
                path = page.format(last=last, **ids)
                if "{dead_id}" in page and not hasattr(Client, "job_status"):
                    continue  # job status is not on this branch
                http.get(path)  # warm-up: templates compiled, connections made
                times = []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    response = http.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    if response.status_code >= 500:
                        response.raise_for_status()
                worst = max(worst, max(times))
                rows.append([path, f"{statistics.median(times):.1f}", f"{max(times):.1f}",
                             f"{len(response.content):,}"])
        web.should_exit = True
        thread.join(10)
    print_table(["page", "median ms", "max ms", "bytes"], rows,
                title=f"web pages with {args.queued:,} queued and {args.dead:,} dead jobs "
                      f"({args.runs} runs each)")
    print(f"worst: {worst:.1f} ms (target < 300 ms)")
    return 0 if worst < 300 else 1


if __name__ == "__main__":
    sys.exit(main())

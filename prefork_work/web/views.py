"""What the API and the dashboard show, built over the Client: plain, JSON-ready dicts.

Every function here is a fixed number of Redis round trips whatever the data size: queue
lengths by LLEN, the oldest job by LINDEX, set sizes by ZCARD, a page of a sorted set by
ZRANGEBYSCORE ... LIMIT. Nothing walks a whole list or set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from prefork_work.client import PAGE_SIZE, Client
from prefork_work.errors import MalformedJob, NotDeleted, NotRetried
from prefork_work.job import Job
from prefork_work.store.web import WebStore

# A heartbeat older than this is a pool that has stopped beating: gocraft beats every 5 s
# and its reaper calls a pool dead after 5 minutes.
STALE_HEARTBEAT = 60


class Views:
    """The data of every page and route, over one Client (and its Redis connection)."""

    def __init__(self, client: Client, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.keys = client.keys
        self.store = WebStore(client.store.redis, client.keys)
        self.clock = clock

    # --- gocraft's workwebui shapes -------------------------------------------------------------
    def queues(self) -> list[dict[str, Any]]:
        return [asdict(q) for q in self.client.queues()]

    def worker_pools(self) -> list[dict[str, Any]]:
        return [asdict(b) for b in self.client.worker_pool_heartbeats()]

    def busy_workers(self) -> list[dict[str, Any]]:
        return [asdict(o) for o in self.client.worker_observations() if o.is_busy]

    def jobs_page(self, kind: str, page: int) -> dict[str, Any]:
        """``{"count": total, "jobs": [{"<score field>": score, ...job}]}`` as gocraft.

        Unlike gocraft, an entry that cannot be decoded does not fail the page: it is shown
        with ``name`` and ``id`` empty and its bytes (as text) under ``malformed``."""
        zset, score_field = {"scheduled": (self.keys.scheduled(), "run_at"),
                             "retry": (self.keys.retry(), "retry_at"),
                             "dead": (self.keys.dead(), "died_at")}[kind]
        page = max(page, 1)
        members, count = self.store.zset_page(zset, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        jobs = []
        for member, score in members:
            try:
                jobs.append(_job_dict(score_field, int(score), Job.from_json(member)))
            except MalformedJob:
                jobs.append({score_field: int(score), "name": "", "id": "",
                             "malformed": member.decode("utf-8", "replace")})
        return {"count": count, "jobs": jobs}

    # --- ours ------------------------------------------------------------------------------------
    def queues_detail(self) -> list[dict[str, Any]]:
        """gocraft's queue fields plus paused, max_concurrency (0: none) and running."""
        queues = self.client.queues()
        switches = self.store.queue_controls([q.job_name for q in queues])
        return [
            {**asdict(q), "paused": paused, "max_concurrency": cap, "running": running}
            for q, (paused, cap, running) in zip(queues, switches, strict=True)
        ]

    def queue_metrics(self) -> dict[str, Any]:
        """KEDA metrics-api shape: ``valueLocation`` "total.count" or "queues.<name>.latency"."""
        queues = self.client.queues()
        return {
            "total": {"count": sum(q.count for q in queues),
                      "latency": max((q.latency for q in queues), default=0)},
            "queues": {q.job_name: {"count": q.count, "latency": q.latency} for q in queues},
        }

    def totals(self) -> dict[str, int]:
        queued = sum(q.count for q in self.client.queues())
        scheduled, retry, dead = self.store.zset_sizes()
        return {"queued": queued, "scheduled": scheduled, "retry": retry, "dead": dead}

    def processes(self) -> list[dict[str, Any]]:
        """Hosts, each with its masters (one per prefork server; gocraft pools stand alone)
        and their children, from the heartbeats and observations in Redis."""
        now = int(self.clock())
        pool_ids = self.store.pool_ids()
        beats = self.store.hashes([self.keys.heartbeat(p) for p in pool_ids])
        worker_ids = [[w for w in beat.get("worker_ids", "").split(",") if w] for beat in beats]
        flat = [w for ws in worker_ids for w in ws]
        observed = dict(zip(flat, self.store.hashes([self.keys.worker_observation(w) for w in flat]),
                            strict=True))
        hosts: dict[str, dict[str, dict[str, Any]]] = {}
        for pool_id, beat, workers in zip(pool_ids, beats, worker_ids, strict=True):
            host = beat.get("host", "")
            master_key = beat.get("master_id", "") or "gocraft:" + pool_id
            master = hosts.setdefault(host, {}).setdefault(master_key, {
                "master_id": beat.get("master_id", ""), "pid": _int(beat.get("master_pid")),
                "children": [],
            })
            heartbeat_at = _int(beat.get("heartbeat_at"))
            started_at = _int(beat.get("started_at"))
            for worker_id in workers or [""]:
                obs = observed.get(worker_id, {})
                busy = bool(obs)
                state = "stale" if now - heartbeat_at > STALE_HEARTBEAT else (
                    "busy" if busy else "idle")
                master["children"].append({
                    "pool_id": pool_id, "worker_id": worker_id, "pid": _int(beat.get("pid")),
                    "state": state, "job_names": sorted(n for n in beat.get("job_names", "").split(",") if n),
                    "concurrency": _int(beat.get("concurrency")),
                    "started_at": started_at, "uptime": max(now - started_at, 0) if started_at else 0,
                    "heartbeat_at": heartbeat_at,
                    "job_name": obs.get("job_name", ""), "job_id": obs.get("job_id", ""),
                    "job_started_at": _int(obs.get("started_at")), "args_json": obs.get("args", ""),
                    "checkin": obs.get("checkin", ""), "checkin_at": _int(obs.get("checkin_at")),
                })
        from prefork_work.web.history import host_counters

        counters = host_counters(self.client)
        return [
            {"host": host, **counters.get(host, {"deaths": {}, "reclaimed": 0}), "masters": [
                {**m, "children": sorted(m["children"], key=lambda c: (c["pid"], c["worker_id"]))}
                for _, m in sorted(masters.items())
            ]}
            for host, masters in sorted(hosts.items())
        ]

    def job_status(self, job_id: str) -> dict[str, Any] | None:
        """Client.job_status(job_id).to_dict(); None for an unknown id."""
        lookup = getattr(self.client, "job_status", None)
        if lookup is None:
            raise NotImplementedError("job status needs a Client with job_status()")
        status = lookup(job_id)
        return None if status is None else dict(status.to_dict())

    # --- changes ---------------------------------------------------------------------------------
    def delete_queued(self, name: str, job_id: str) -> None:
        """Remove one waiting job from its queue; NotDeleted if it is not (or no longer) there."""
        needle = b'"id":' + json.dumps(job_id).encode()

        def same_id(entry: bytes) -> bool:
            try:
                return Job.from_json(entry).id == job_id
            except MalformedJob:
                return False

        entry = self.store.find_queued_entry(name, needle, same_id)
        if entry is None or not self.store.remove_queued(name, entry):
            raise NotDeleted()

    def run_now(self, kind: str, score: int, job_id: str) -> None:
        """Move one scheduled or retry job to its queue now, as the requeuer does when due."""
        zset = self.keys.scheduled() if kind == "scheduled" else self.keys.retry()
        now = int(self.clock())
        moves = []
        for member in self.store.members_at(zset, score):
            try:
                job = Job.from_json(member)
            except MalformedJob:
                continue
            if job.id == job_id and job.name:
                job.t = now
                moves.append((member, job.to_json(), self.keys.jobs(job.name)))
        if not self.store.move_due(zset, now, moves):
            raise NotRetried()

    def delete_all_retry(self) -> None:
        self.store.delete_key(self.keys.retry())


def _job_dict(score_field: str, score: int, job: Job) -> dict[str, Any]:
    """The score first, then the job's fields as Go encodes them (Go's embedded struct)."""
    fields: dict[str, Any] = json.loads(job.to_json())
    return {score_field: score, **fields}


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0

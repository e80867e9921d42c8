"""Redis I/O of the master-side loops: heartbeats, observations, reaping, requeuing, cron."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prefork_work.errors import MalformedJob
from prefork_work.job import Job
from prefork_work.store.base import (
    WAKE_TOKENS_MAX,
    RedisStore,
    decode_hash,
    text,
    translate_errors,
)

OBSERVATION_TTL_SECONDS = 86400  # what gocraft gives an observation hash

REAP_CLAIM_SECONDS = 60
CRASH_COUNTER_SECONDS = 7 * 86400


@dataclass(slots=True)
class Heartbeat:
    """gocraft's heartbeat hash ``<p>worker_pools:<poolID>``, as the reaper and the Client read it.

    Any process may write these hashes: a field that is missing and one that is not an
    integer (Go's ParseInt would fail) are both None, never an exception.
    """

    pool_id: str
    started_at: int | None
    heartbeat_at: int | None  # None: no hash, or a field Go could not parse
    concurrency: int | None
    pid: int | None
    host: str
    job_names: list[str] | None  # None: no such field; else split on "," as Go splits it
    worker_ids: list[str] | None

    def names(self) -> set[str]:
        """The job names the pool registered (no empty name from an empty field)."""
        return {n for n in self.job_names or () if n}

    def workers(self) -> list[str]:
        """The pool's worker ids (no empty id from an empty field)."""
        return [w for w in self.worker_ids or () if w]


def parse_heartbeat(pool_id: str, fields: Mapping[str, str]) -> Heartbeat:
    """The one parser of a heartbeat hash (decoded fields; an empty mapping: no hash)."""
    job_names, worker_ids = fields.get("job_names"), fields.get("worker_ids")
    return Heartbeat(
        pool_id=pool_id,
        started_at=parse_int(fields.get("started_at")),
        heartbeat_at=parse_int(fields.get("heartbeat_at")),
        concurrency=parse_int(fields.get("concurrency")),
        pid=parse_int(fields.get("pid")),
        host=fields.get("host", ""),
        job_names=None if job_names is None else job_names.split(","),
        worker_ids=None if worker_ids is None else worker_ids.split(","),
    )


_INT64 = re.compile(r"[+-]?[0-9]{1,19}")


def parse_int(value: str | None) -> int | None:
    """An integer field as Go's ``strconv.ParseInt(value, 10, 64)`` reads it; None when it is
    missing or Go could not parse it (no spaces, underscores or digits of other scripts)."""
    if value is None or not _INT64.fullmatch(value):
        return None
    number = int(value)
    return number if -(2**63) <= number < 2**63 else None


class PoolStore(RedisStore):
    """Heartbeats, observations, the reaper's, requeuer's and periodic enqueuer's Redis work."""

    # --- heartbeats -------------------------------------------------------------------------
    @translate_errors
    def write_heartbeats(self, beats: Sequence[tuple[str, dict[str, str | int]]]) -> None:
        """SADD every pool and HSET every heartbeat hash, in one pipeline."""
        if not beats:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.keys.worker_pools(), *(pool_id for pool_id, _ in beats))
        for pool_id, fields in beats:
            pipe.hset(self.keys.heartbeat(pool_id), mapping=fields)
        pipe.execute()

    @translate_errors
    def remove_pool(self, pool_id: str, worker_ids: Iterable[str]) -> None:
        """Forget a pool that is gone: its heartbeat, its fetch fence, its observations."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.srem(self.keys.worker_pools(), pool_id)
        pipe.delete(self.keys.heartbeat(pool_id))
        pipe.hdel(self.keys.fence(), pool_id)
        for worker_id in worker_ids:
            pipe.delete(self.keys.worker_observation(worker_id))
        pipe.execute()

    @translate_errors
    def heartbeats(self, pool_ids: Iterable[str]) -> dict[str, Heartbeat]:
        ids = list(pool_ids)
        pipe = self.redis.pipeline(transaction=False)
        for pool_id in ids:
            pipe.hgetall(self.keys.heartbeat(pool_id))
        return {pool_id: parse_heartbeat(pool_id, decode_hash(raw))
                for pool_id, raw in zip(ids, pipe.execute(), strict=True)}

    @translate_errors
    def pool_ids(self) -> set[str]:
        return {text(m) for m in self.redis.smembers(self.keys.worker_pools())}

    @translate_errors
    def fenced_pool_ids(self) -> set[str]:
        """Pools with a fetch fence: one that never had a heartbeat (an in-process worker)
        or lost it to a Go reaper is still found, and its field removed once it is dead."""
        return {text(m) for m in self.redis.hkeys(self.keys.fence())}

    @translate_errors
    def in_progress_lists(self, pool_id: str | None = None) -> dict[str, set[str]]:
        """pool id -> job names that have an in-progress list, found by SCAN (not trusted
        from heartbeats, which may be missing: W1)."""
        found: dict[str, set[str]] = {}
        pattern = self.keys.in_progress_pattern(pool_id)
        for key in self.redis.scan_iter(match=pattern, count=1000):
            parsed = self.keys.parse_in_progress(key.decode("utf-8", "replace"))
            if parsed is not None and (pool_id is None or parsed[1] == pool_id):
                found.setdefault(parsed[1], set()).add(parsed[0])
        return found

    # --- observations ------------------------------------------------------------------------
    @translate_errors
    def write_observations(
        self,
        started: Sequence[tuple[str, str, str, int, str]],
        checkins: Sequence[tuple[str, str, int]],
        idle: Sequence[str],
    ) -> None:
        """gocraft's observation hashes for many workers in one pipeline.

        started: (worker_id, job_name, job_id, started_at, args_json); checkins:
        (worker_id, message, checkin_at); idle: worker ids whose hash is deleted.
        """
        pipe = self.redis.pipeline(transaction=False)
        for worker_id, name, job_id, started_at, args in started:
            key = self.keys.worker_observation(worker_id)
            pipe.delete(key)  # gocraft's HMSET keeps an earlier job's check-in (W20)
            pipe.hset(key, mapping={"job_name": name, "job_id": job_id,
                                    "started_at": started_at, "args": args})
            pipe.expire(key, OBSERVATION_TTL_SECONDS)
        for worker_id, message, checkin_at in checkins:
            key = self.keys.worker_observation(worker_id)
            pipe.hset(key, mapping={"checkin": message, "checkin_at": checkin_at})
            pipe.expire(key, OBSERVATION_TTL_SECONDS)
        for worker_id in idle:
            pipe.delete(self.keys.worker_observation(worker_id))
        pipe.execute()

    # --- reaping --------------------------------------------------------------------------------
    @translate_errors
    def claim_pool(self, pool_id: str, claimant: str) -> bool:
        return bool(self.redis.set(self.keys.reap_claim(pool_id), claimant, nx=True,
                                   ex=REAP_CLAIM_SECONDS))

    @translate_errors
    def release_claim(self, pool_id: str) -> None:
        self.redis.delete(self.keys.reap_claim(pool_id))

    @translate_errors
    def reclaim_pool(self, pool_id: str, names: Iterable[str]) -> int:
        """Requeue all of the pool's in-progress jobs of these names and release its locks."""
        keys: list[str] = []
        for name in sorted(set(names)):
            keys += [self.keys.in_progress(name, pool_id), self.keys.jobs(name),
                     self.keys.lock(name), self.keys.lock_info(name)]
        if not keys:
            return 0
        keys.append(self.keys.wake())
        return int(self.run_script("reclaim_pool", keys, [pool_id, WAKE_TOKENS_MAX]))

    @translate_errors
    def in_progress_job(self, pool_id: str, name: str, job_id: str) -> tuple[bytes, Job] | None:
        """The entry of job ``job_id`` in a pool's in-progress list, raw and decoded."""
        for raw in self.redis.lrange(self.keys.in_progress(name, pool_id), 0, -1):
            try:
                job = Job.from_json(raw)
            except MalformedJob:
                continue
            if job.id == job_id:
                return raw, job
        return None

    @translate_errors
    def count_crash(self, job_id: str) -> int:
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(self.keys.crashes(job_id))
        pipe.expire(self.keys.crashes(job_id), CRASH_COUNTER_SECONDS)
        count, _ = pipe.execute()
        return int(count)

    @translate_errors
    def forget_crashes(self, job_id: str) -> None:
        self.redis.delete(self.keys.crashes(job_id))

    @translate_errors
    def settle_in_progress(
        self, pool_id: str, name: str, raw: bytes, dead: bool, score: int, payload: bytes
    ) -> bool:
        keys = [self.keys.in_progress(name, pool_id), self.keys.lock(name),
                self.keys.lock_info(name), self.keys.dead() if dead else self.keys.retry()]
        return bool(self.run_script("settle_in_progress", keys, [pool_id, raw, score, payload]))

    @translate_errors
    def mark_in_progress(self, pool_id: str, name: str, raw: bytes, payload: bytes) -> bool:
        """Rewrite one entry of a pool's in-progress list (before reclaim_pool requeues it)."""
        return bool(self.run_script("mark_in_progress", [self.keys.in_progress(name, pool_id)],
                                    [raw, payload]))

    @translate_errors
    def recompute_locks(self, name: str, pools: Iterable[str]) -> int:
        known = {text(k) for k in self.redis.hkeys(self.keys.lock_info(name))}
        ids = sorted(set(pools) | known)
        keys = [self.keys.lock(name), self.keys.lock_info(name)]
        keys += [self.keys.in_progress(name, pool_id) for pool_id in ids]
        return int(self.run_script("recompute_locks", keys, ids))

    # --- requeuer ---------------------------------------------------------------------------------
    @translate_errors
    def due_members(self, zset: str, now: int, limit: int) -> list[bytes]:
        members: list[bytes] = self.redis.zrangebyscore(zset, "-inf", now, start=0, num=limit)
        return members

    # --- periodic enqueuer ----------------------------------------------------------------------
    @translate_errors
    def last_periodic_enqueue(self) -> bytes | None:
        value: bytes | None = self.redis.get(self.keys.last_periodic_enqueue())
        return value

    @translate_errors
    def schedule_periodic(self, members: dict[bytes, int], now: int) -> None:
        """ZADD every slot's member (identical bytes on every host: idempotent), then SET last."""
        pipe = self.redis.pipeline(transaction=False)
        if members:
            pipe.zadd(self.keys.scheduled(), members)
        pipe.set(self.keys.last_periodic_enqueue(), now)
        pipe.execute()

"""Redis I/O of the Client: queue stats, heartbeats, observations, the three sorted sets."""

from __future__ import annotations

from collections.abc import Sequence

from prefork_work.store.base import (
    WAKE_TOKENS_MAX,
    RedisStore,
    decode_hash,
    text,
    translate_errors,
)


class AdminStore(RedisStore):
    """Reads are pipelined; every change to a sorted set is one atomic script call."""

    @translate_errors
    def known_job_names(self) -> list[str]:
        return sorted(text(n) for n in self.redis.smembers(self.keys.known_jobs()))

    @translate_errors
    def queue_heads(self, names: Sequence[str]) -> list[tuple[int, bytes | None]]:
        """(length, oldest entry) of each queue, both read in one MULTI: never torn (W18)."""
        pipe = self.redis.pipeline(transaction=True)
        for name in names:
            pipe.llen(self.keys.jobs(name))
            pipe.lindex(self.keys.jobs(name), -1)
        replies = pipe.execute()
        return [(int(replies[2 * i]), replies[2 * i + 1]) for i in range(len(names))]

    @translate_errors
    def pool_ids(self) -> list[str]:
        return sorted(text(p) for p in self.redis.smembers(self.keys.worker_pools()))

    @translate_errors
    def hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [decode_hash(raw) for raw in pipe.execute()]

    @translate_errors
    def zset_page(self, zset: str, start: int, count: int) -> tuple[list[tuple[bytes, float]], int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebyscore(zset, "-inf", "+inf", start=start, num=count, withscores=True)
        pipe.zcard(zset)
        members, total = pipe.execute()
        return [(m, s) for m, s in members], int(total)

    @translate_errors
    def members_at(self, zset: str, score: int) -> list[bytes]:
        members: list[bytes] = self.redis.zrangebyscore(zset, score, score)
        return members

    @translate_errors
    def oldest_members(self, zset: str, upto: int, offset: int, limit: int) -> list[bytes]:
        members: list[bytes] = self.redis.zrangebyscore(zset, "-inf", upto, start=offset, num=limit)
        return members

    @translate_errors
    def remove_members(self, zset: str, members: Sequence[bytes], also_delete: Sequence[str] = ()) -> int:
        """ZREM exact members (and DEL keys, e.g. a unique lock) in one transaction."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(zset, *members)
        if also_delete:
            pipe.delete(*also_delete)
        return int(pipe.execute()[0])

    @translate_errors
    def delete_key(self, key: str) -> None:
        self.redis.delete(key)

    @translate_errors
    def set_paused(self, name: str, paused: bool) -> None:
        if paused:
            self.redis.set(self.keys.paused(name), "1")
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.paused(name))
        # a queue that became fetchable should not wait for idle workers' next timeout
        self.wake(pipe, WAKE_TOKENS_MAX)
        pipe.execute()

    @translate_errors
    def set_max_concurrency(self, name: str, limit: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.max_concurrency(name), limit)
        self.wake(pipe, WAKE_TOKENS_MAX)
        pipe.execute()

    @translate_errors
    def queue_controls(self, names: Sequence[str]) -> list[tuple[bool, int, int]]:
        """(paused, max concurrency, lock) of each name; a value that is not an int is 0."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(self.keys.paused(name))
            pipe.get(self.keys.max_concurrency(name))
            pipe.get(self.keys.lock(name))
        replies = pipe.execute()
        return [(bool(replies[3 * i]), _int(replies[3 * i + 1]), _int(replies[3 * i + 2]))
                for i in range(len(names))]

    @translate_errors
    def zcard(self, zset: str) -> int:
        return int(self.redis.zcard(zset))

    # --- job status -------------------------------------------------------------------------------
    @translate_errors
    def status_record(self, job_id: str) -> bytes | None:
        value: bytes | None = self.redis.hget(self.keys.status(), job_id)
        return value

    @translate_errors
    def scan_zset(self, zset: str, needle: bytes, step: int = 10_000) -> list[tuple[bytes, float]]:
        """Every member containing ``needle``: O(N) in the set, ``step`` members a call.

        A lookup by id has no index into the scheduled, retry and dead sets (Go writes them
        too). Measured on 100,000 dead jobs: ZRANGE in steps with the search done here took
        54 ms; ZSCAN MATCH (a glob per member in Redis) 360 ms; the same search in Lua
        210 ms (turning each reply into Lua strings is the cost). The price is bandwidth:
        the set crosses the connection once. A member that moves while the scan runs can be
        missed, as a job moving between sets can be by any lookup.
        """
        found: list[tuple[bytes, float]] = []
        start = 0
        while True:
            members: list[bytes] = self.redis.zrange(zset, start, start + step - 1)
            matches = [member for member in members if needle in member]
            if matches:
                scores = self.redis.zmscore(zset, matches)
                found.extend((m, float(s)) for m, s in zip(matches, scores, strict=True)
                             if s is not None)
            if len(members) < step:
                return found
            start += step

    @translate_errors
    def find_queued(self, names: Sequence[str], needle: bytes, limit: int) -> tuple[str, bytes] | None:
        """(queue name, entry) of the first entry containing ``needle`` among both ends of
        each queue (``limit`` entries each): lua/find_job.lua."""
        if not names:
            return None
        found = self.run_script("find_job", [self.keys.jobs(n) for n in names], [needle, limit])
        if not found:
            return None
        return names[int(found[0]) - 1], found[1]

    @translate_errors
    def in_progress_entries(
        self, names: Sequence[str], pool_ids: Sequence[str]
    ) -> list[tuple[str, str, list[bytes]]]:
        """(name, pool id, entries) of every in-progress list of these names and pools."""
        pairs = [(n, p) for p in pool_ids for n in names]
        pipe = self.redis.pipeline(transaction=False)
        for name, pool_id in pairs:
            pipe.lrange(self.keys.in_progress(name, pool_id), 0, -1)
        return [(n, p, entries) for (n, p), entries in zip(pairs, pipe.execute(), strict=True)]

    @translate_errors
    def zset_sizes(self) -> tuple[int, int, int]:
        pipe = self.redis.pipeline(transaction=False)
        for key in (self.keys.scheduled(), self.keys.retry(), self.keys.dead()):
            pipe.zcard(key)
        scheduled, retry, dead = pipe.execute()
        return int(scheduled), int(retry), int(dead)


def _int(value: bytes | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0

"""Every Redis key name of the data model, built here and nowhere else.

Names follow gocraft/work's ``redis.go`` (``redisKeyJobsInProgress`` -> ``in_progress``), so a
key here can be checked against the reference in ``shared/reference`` and its vectors. Job
names and pool ids are inserted unescaped, as Go does; the enqueuer refuses names that would
make keys collide (``:``) or break the heartbeat's comma list (``,``).

Keys marked *extension* are ours: Go never reads or writes them, so they are wire-safe.
"""

from __future__ import annotations

from typing import Any


def namespace_prefix(namespace: str) -> str:
    """``work`` -> ``work:``; a namespace that is empty or already ends in ``:`` is kept as is."""
    if not namespace or namespace.endswith(":"):
        return namespace
    return namespace + ":"


class Keys:
    """Key builder for one namespace."""

    __slots__ = ("namespace", "prefix", "_jobs_prefix")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.prefix = namespace_prefix(namespace)
        self._jobs_prefix = self.prefix + "jobs:"

    # --- gocraft/work keys -------------------------------------------------------------
    def known_jobs(self) -> str:
        return self.prefix + "known_jobs"

    def jobs_prefix(self) -> str:
        """``<p>jobs:``: never a key itself; scripts append a job name to it."""
        return self._jobs_prefix

    def jobs(self, name: str) -> str:
        return self._jobs_prefix + name

    def in_progress(self, name: str, pool_id: str) -> str:
        return self._jobs_prefix + name + ":" + pool_id + ":inprogress"

    def paused(self, name: str) -> str:
        return self._jobs_prefix + name + ":paused"

    def lock(self, name: str) -> str:
        return self._jobs_prefix + name + ":lock"

    def lock_info(self, name: str) -> str:
        return self._jobs_prefix + name + ":lock_info"

    def max_concurrency(self, name: str) -> str:
        return self._jobs_prefix + name + ":max_concurrency"

    def scheduled(self) -> str:
        return self.prefix + "scheduled"

    def retry(self) -> str:
        return self.prefix + "retry"

    def dead(self) -> str:
        return self.prefix + "dead"

    def unique(self, name: str, key_map: dict[str, Any] | None) -> str:
        """The unique-job lock: the map's Go JSON plus a newline (Go's stream encoder); none for nil."""
        from prefork_work.gojson import dumps_stream

        suffix = "" if key_map is None else dumps_stream(key_map)
        return self.prefix + "unique:" + name + ":" + suffix

    def worker_pools(self) -> str:
        return self.prefix + "worker_pools"

    def heartbeat(self, pool_id: str) -> str:
        return self.prefix + "worker_pools:" + pool_id

    def worker_observation(self, worker_id: str) -> str:
        return self.prefix + "worker:" + worker_id

    def last_periodic_enqueue(self) -> str:
        return self.prefix + "last_periodic_enqueue"

    # --- extensions of ours ------------------------------------------------------------
    def wake(self) -> str:
        """List idle workers block on; our enqueue paths push a token after pushing a job."""
        return self.prefix + "pw:wake"

    def crashes(self, job_id: str) -> str:
        """How many times a job's process died under it (poison-job detection)."""
        return self.prefix + "pw:crashes:" + job_id

    def reap_claim(self, pool_id: str) -> str:
        """Held by the one reaper reclaiming a dead pool, so two reapers never both requeue it."""
        return self.prefix + "pw:reaping:" + pool_id

    def fence(self) -> str:
        """The highest fetch call sequence seen per pool (hash: pool id -> sequence): a late
        copy of a fetch whose reply was lost is refused once the worker has recovered
        (``lua/fetch.lua``); the field goes with the pool's heartbeat."""
        return self.prefix + "pw:fence"

    def web_minute(self, minute: int) -> str:
        """The web app's snapshot of job counters at one minute (epoch // 60), kept two hours."""
        return self.prefix + "pw:web:minute:" + str(minute)

    def metrics(self) -> str:
        """Namespace-wide counters of every worker (hash): ``processed:<name>``,
        ``failed:<name>``, ``retried:<name>``, ``dead:<name>``, ``dropped:<name>``, duration
        histogram buckets ``duration:<name>:<i>`` and ``duration_sum:<name>`` (µs), and
        ``redis_errors``. Only ever HINCRBY'd, so it is exact across hosts and restarts."""
        return self.prefix + "pw:metrics"

    def host_metrics(self) -> str:
        """Counters written by masters (hash), per host: ``deaths\t<host>\t<cause>`` and
        ``reclaimed\t<host>`` (a tab never occurs in a host name or a cause)."""
        return self.prefix + "pw:host_metrics"

    def status(self) -> str:
        """Job status records (hash: job id -> JSON) of job types that ask for them."""
        return self.prefix + "pw:status"

    def status_expiry(self) -> str:
        """When each status record expires (sorted set: job id scored by epoch seconds): a
        hash field has no TTL before Redis 7.4, so the fetch script prunes by this index."""
        return self.prefix + "pw:status_expiry"

    def in_progress_pattern(self, pool_id: str | None = None) -> str:
        """SCAN MATCH pattern for every in-progress list of the namespace, or of one pool."""
        pool = "" if pool_id is None else _glob_escape(pool_id) + ":"
        return _glob_escape(self._jobs_prefix) + "*:" + pool + "inprogress"

    def parse_in_progress(self, key: str) -> tuple[str, str] | None:
        """``<p>jobs:<name>:<poolID>:inprogress`` -> (name, pool_id); None for anything else."""
        if not key.startswith(self._jobs_prefix) or not key.endswith(":inprogress"):
            return None
        middle = key[len(self._jobs_prefix) : -len(":inprogress")]
        name, sep, pool_id = middle.rpartition(":")
        if not sep or not name or not pool_id:
            return None
        return name, pool_id


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def has_hash_tag(namespace: str) -> bool:
    """Redis Cluster hashes only the part between the first "{" and the next "}" when that
    part is not empty: such a namespace puts every one of its keys in one slot."""
    start = namespace.find("{")
    end = namespace.find("}", start + 1)
    return start >= 0 and end > start + 1

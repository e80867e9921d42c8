"""Redis I/O of the metrics: counters the master adds, and the reads of a scrape.

The hot path's counters are written by ``lua/fetch.lua`` (outcomes per job name) with the
worker's histogram riding the same call; this module holds the rare writes of the master
(child deaths, reclaimed jobs, outcomes it settles itself) and what a scrape reads.
"""

from __future__ import annotations

from prefork_work.outcome import Outcome
from prefork_work.store.base import RedisStore, translate_errors

# the counters lua/fetch.lua adds for an acknowledged outcome
OUTCOME_FIELDS = {Outcome.SUCCESS: ("processed",),
                  Outcome.RETRY: ("processed", "failed", "retried"),
                  Outcome.DEAD: ("processed", "failed", "dead"),
                  Outcome.DROPPED: ("processed", "failed", "dropped")}


class MetricsStore(RedisStore):
    """Counters in ``<p>pw:metrics`` and ``<p>pw:host_metrics`` (HINCRBY only: exact, additive)."""

    @translate_errors
    def count_outcome(self, name: str, outcome: Outcome) -> None:
        """A job's outcome settled outside the fetch script (the master's hard timeout and
        poison-job verdicts), counted as the script counts its acknowledgements."""
        pipe = self.redis.pipeline(transaction=False)
        for kind in OUTCOME_FIELDS[outcome]:
            pipe.hincrby(self.keys.metrics(), f"{kind}:{name}", 1)
        pipe.execute()

    @translate_errors
    def count_host(self, host: str, death: str | None = None, reclaimed: int = 0) -> None:
        """A child's death (by cause) and the jobs reclaimed, counted under this host."""
        pipe = self.redis.pipeline(transaction=False)
        if death is not None:
            pipe.hincrby(self.keys.host_metrics(), f"deaths\t{host}\t{death}", 1)
        if reclaimed:
            pipe.hincrby(self.keys.host_metrics(), f"reclaimed\t{host}", reclaimed)
        pipe.execute()

    @translate_errors
    def scrape(self) -> tuple[dict[str, int], dict[str, int], tuple[int, int, int]]:
        """(namespace counters, host counters, sizes of scheduled / retry / dead), one trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.metrics())
        pipe.hgetall(self.keys.host_metrics())
        pipe.zcard(self.keys.scheduled())
        pipe.zcard(self.keys.retry())
        pipe.zcard(self.keys.dead())
        counters, hosts, scheduled, retry, dead = pipe.execute()
        return _ints(counters), _ints(hosts), (int(scheduled), int(retry), int(dead))


def _ints(raw: dict[bytes, bytes]) -> dict[str, int]:
    """Hash fields as ints; anything that is not one (untrusted data) is skipped."""
    result = {}
    for field, value in raw.items():
        try:
            result[field.decode("utf-8", "replace")] = int(value)
        except ValueError:
            continue
    return result

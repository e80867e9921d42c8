"""Prometheus metrics of a namespace, read from Redis at scrape time.

``render(client)`` returns the exposition (prometheus_client's ``generate_latest`` over a
registry holding one custom collector) and its content type; the web app serves it at
``/metrics``. Nothing here counts anything: the counters live in Redis, written by every
worker of every host in the fetch/ack script and by the masters (README "Metrics"), so
they are exact across children, hosts, recycling and restarts, and any scraper of any host
sees the same figures.

Needs the ``metrics`` extra (``pip install 'prefork-work[metrics]'``; ``web`` includes it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prefork_work.errors import RedisUnavailable
from prefork_work.store.metrics import MetricsStore
from prefork_work.worker import DURATION_BUCKETS

if TYPE_CHECKING:
    from prefork_work.client import Client

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
except ImportError as err:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "prefork_work.metrics needs prometheus_client: pip install 'prefork-work[metrics]'"
    ) from err

PREFIX = "prefork_work_"
# a pool whose heartbeat is older than this is not counted as alive (heartbeats: every 5 s)
ALIVE_SECONDS = 60
OUTCOMES = (
    ("processed", "Jobs that finished a run, whatever the outcome (namespace-wide)."),
    ("failed", "Jobs whose run failed: retried + dead + dropped (namespace-wide)."),
    ("retried", "Failed jobs scheduled for a retry (namespace-wide)."),
    ("dead", "Failed jobs moved to the dead set (namespace-wide)."),
    ("dropped", "Failed jobs dropped for good, skip_dead (namespace-wide)."),
)


class WorkCollector:
    """A prometheus_client collector reading one namespace's figures from Redis."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.store = MetricsStore(client.store.redis, client.keys)

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(PREFIX + "redis_up", "1 when this scrape could read Redis.")
        try:
            families = list(self._families())
        except RedisUnavailable:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Any]:
        counters, hosts, (scheduled, retry, dead) = self.store.scrape()
        queues = self.client.queues()
        names = sorted({q.job_name for q in queues} | _names(counters))

        for kind, doc in OUTCOMES:
            family = CounterMetricFamily(PREFIX + "jobs_" + kind, doc, labels=["job_name"])
            for name in names:
                family.add_metric([name], counters.get(f"{kind}:{name}", 0))
            yield family

        histogram = HistogramMetricFamily(
            PREFIX + "job_duration_seconds",
            "Run time of jobs, handler and middleware (namespace-wide).", labels=["job_name"])
        for name in names:
            cumulative, buckets = 0, []
            for i, bound in enumerate((*DURATION_BUCKETS, float("inf"))):
                cumulative += counters.get(f"duration:{name}:{i}", 0)
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            total = counters.get(f"duration_sum:{name}", 0) / 1_000_000
            histogram.add_metric([name], buckets, total)
        yield histogram

        depth = GaugeMetricFamily(PREFIX + "queue_depth", "Jobs waiting in the queue.",
                                  labels=["job_name"])
        latency = GaugeMetricFamily(
            PREFIX + "queue_latency_seconds",
            "Age of the oldest queued job (0 for an empty queue).", labels=["job_name"])
        for queue in queues:
            depth.add_metric([queue.job_name], queue.count)
            latency.add_metric([queue.job_name], max(queue.latency, 0))
        yield depth
        yield latency

        for zset, size in (("scheduled", scheduled), ("retry", retry), ("dead", dead)):
            gauge = GaugeMetricFamily(PREFIX + zset + "_jobs", f"Jobs in the {zset} set.")
            gauge.add_metric([], size)
            yield gauge

        errors = CounterMetricFamily(
            PREFIX + "redis_errors",
            "Redis calls of workers that failed (connection lost, timeout), namespace-wide.")
        errors.add_metric([], counters.get("redis_errors", 0))
        yield errors

        yield from self._hosts(hosts)

    def _hosts(self, hosts: dict[str, int]) -> Iterator[Any]:
        alive: dict[str, int] = defaultdict(int)
        busy: dict[str, int] = defaultdict(int)
        now = int(self.client.clock())
        beats = [b for b in self.client.worker_pool_heartbeats()
                 if now - b.heartbeat_at <= ALIVE_SECONDS]
        workers = self.client.store.hashes(
            [self.client.keys.worker_observation(w) for b in beats for w in b.worker_ids or []])
        index = 0
        for beat in beats:
            for _ in beat.worker_ids or []:
                alive[beat.host] += 1
                busy[beat.host] += 1 if workers[index] else 0
                index += 1
        children = GaugeMetricFamily(
            PREFIX + "children",
            "Worker processes alive (a Go pool: its workers), per host, from heartbeats.",
            labels=["host"])
        running = GaugeMetricFamily(
            PREFIX + "children_busy",
            "Worker processes running a job, per host, from observations (up to 1 s late).",
            labels=["host"])
        for host in sorted(alive):
            children.add_metric([host], alive[host])
            running.add_metric([host], busy[host])
        yield children
        yield running

        deaths = CounterMetricFamily(
            PREFIX + "child_deaths",
            "Children that died (a signal, or a non-zero exit code), per host, by the master.",
            labels=["host", "cause"])
        reclaimed = CounterMetricFamily(
            PREFIX + "jobs_reclaimed",
            "Jobs a master took back from dead children or pools and requeued, per host.",
            labels=["host"])
        for field, value in sorted(hosts.items()):
            parts = field.split("\t")
            if parts[0] == "deaths" and len(parts) == 3:
                deaths.add_metric(parts[1:], value)
            elif parts[0] == "reclaimed" and len(parts) == 2:
                reclaimed.add_metric(parts[1:], value)
        yield deaths
        yield reclaimed


def _names(counters: dict[str, int]) -> set[str]:
    names = set()
    for field in counters:
        kind, sep, rest = field.partition(":")
        if not sep or not rest:
            continue
        if kind == "duration":
            rest = rest.rpartition(":")[0]
        if kind in {k for k, _ in OUTCOMES} | {"duration", "duration_sum"} and rest:
            names.add(rest)
    return names


def render(client: Client) -> tuple[bytes, str]:
    """The Prometheus exposition of ``client``'s namespace and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkCollector(client))
    return generate_latest(registry), CONTENT_TYPE_LATEST


__all__ = ["WorkCollector", "render"]

"""Processed and failed jobs per minute for the overview, from snapshots of the job counters.

The counters are cumulative and namespace-wide (``prefork_work.metrics`` reads them from
Redis). A web process writes one snapshot a minute (``<p>pw:web:minute:<m>``, SET NX, two
hours TTL: several web processes share the work and Redis does not grow); the overview
shows the differences between consecutive minutes. So the history covers the minutes when
at least one web process (standalone, mounted, or the server's supervised one) was running;
a gap reads as "no data", never as zero.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog

from prefork_work.client import Client
from prefork_work.errors import PreforkWorkError
from prefork_work.store.web import WebStore

log = structlog.get_logger("prefork_work.web")

HISTORY_MINUTES = 60
COUNTERS = ("processed", "failed")


def metric_families(client: Client) -> list[Any] | None:
    """The parsed Prometheus exposition of ``prefork_work.metrics``; None without that module."""
    try:
        from prometheus_client.parser import text_string_to_metric_families

        from prefork_work import metrics  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    body, _ = metrics.render(client)
    return list(text_string_to_metric_families(body.decode("utf-8")))


def counter_totals(client: Client) -> dict[str, int] | None:
    """Namespace-wide totals of processed and failed jobs; None when no metrics module exists."""
    families = metric_families(client)
    if families is None:
        return None
    totals = dict.fromkeys(COUNTERS, 0)
    found = False
    for family in families:
        for counter in COUNTERS:
            if family.type == "counter" and family.name.endswith("jobs_" + counter):
                found = True
                totals[counter] += int(sum(s.value for s in family.samples
                                           if s.name.endswith("_total")))
    return totals if found else None


def host_counters(client: Client) -> dict[str, dict[str, Any]]:
    """Per host: child deaths by cause and jobs reclaimed, as the masters counted them
    (``prefork_work_child_deaths``, ``prefork_work_jobs_reclaimed``); {} without metrics."""
    try:
        families = metric_families(client)
    except PreforkWorkError:
        return {}
    hosts: dict[str, dict[str, Any]] = {}
    for family in families or []:
        for sample in family.samples:
            host = sample.labels.get("host")
            if host is None or not sample.name.endswith("_total"):
                continue
            entry = hosts.setdefault(host, {"deaths": {}, "reclaimed": 0})
            if family.name.endswith("child_deaths"):
                entry["deaths"][sample.labels.get("cause", "?")] = int(sample.value)
            elif family.name.endswith("jobs_reclaimed"):
                entry["reclaimed"] = int(sample.value)
    return hosts


def record_minute(client: Client, store: WebStore, now: float | None = None) -> bool:
    """Write this minute's snapshot if nobody has; False when there are no counters to read."""
    minute = int((time.time() if now is None else now) // 60)
    if store.has_minute(minute):
        return True  # every overview load calls this: skip the scrape once the minute is taken
    try:
        totals = counter_totals(client)
    except PreforkWorkError as err:
        log.warning("could not read job counters", error=str(err))
        return False
    if totals is None:
        return False
    store.put_minute(minute, json.dumps(totals).encode())
    return True


def per_minute(store: WebStore, now: float | None = None) -> list[dict[str, Any]]:
    """The last hour, oldest first: ``{"minute": epoch_minute, "processed": n|None, "failed": n|None}``."""
    last = int((time.time() if now is None else now) // 60)
    minutes = list(range(last - HISTORY_MINUTES, last + 1))
    snapshots: list[dict[str, int] | None] = []
    for raw in store.minutes(minutes):
        try:
            value = json.loads(raw) if raw is not None else None
            snapshots.append(value if isinstance(value, dict) else None)
        except ValueError:
            snapshots.append(None)
    series = []
    for i in range(1, len(minutes)):
        before, after = snapshots[i - 1], snapshots[i]
        point: dict[str, Any] = {"minute": minutes[i]}
        for counter in COUNTERS:
            delta = None
            if before is not None and after is not None:
                b, a = before.get(counter), after.get(counter)
                if isinstance(a, int) and isinstance(b, int) and a >= b:
                    delta = a - b  # a drop means the counters were reset: no data, not negative
            point[counter] = delta
        series.append(point)
    return series

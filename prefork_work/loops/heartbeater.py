"""Heartbeats of worker pools (gocraft's heartbeater.go), for every child in one pipeline."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prefork_work.store.pools import PoolStore

HEARTBEAT_INTERVAL = 5.0


def hostname() -> str:
    return socket.gethostname() or "hostname_errored"


@dataclass(slots=True)
class PoolInfo:
    """What one pool's heartbeat says; ``extra`` fields are ours (Go ignores them)."""

    pool_id: str
    pid: int
    worker_ids: list[str]
    job_names: list[str]
    concurrency: int
    started_at: int
    extra: dict[str, str] = field(default_factory=dict)


class Heartbeater:
    """Writes ``<p>worker_pools`` and each pool's hash with every field Go reads.

    All pools go in one pipeline per tick, and nothing slow runs before it in the tick, so
    a Go reaper on another host (10 s dead time) never takes a live pool for dead.
    """

    def __init__(
        self,
        store: PoolStore,
        pools: Callable[[], Iterable[PoolInfo]],
        host: str | None = None,
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.store = store
        self.pools = pools
        self.host = host or hostname()
        self.interval = interval

    def tick(self, now: float, pools: Iterable[PoolInfo] | None = None) -> None:
        """Beat ``pools`` when given (the master passes its children's), else the callable's."""
        beating = self.pools() if pools is None else pools
        self.store.write_heartbeats([self._fields(info, now) for info in beating])

    def beat_one(self, info: PoolInfo, now: float) -> None:
        """One pool at once: a new child's heartbeat exists before its first fetch."""
        self.store.write_heartbeats([self._fields(info, now)])

    def remove(self, pool_id: str, worker_ids: Iterable[str] = ()) -> None:
        self.store.remove_pool(pool_id, worker_ids)

    def _fields(self, info: PoolInfo, now: float) -> tuple[str, dict[str, str | int]]:
        fields: dict[str, str | int] = dict(info.extra)
        fields.update(
            heartbeat_at=int(now),
            started_at=int(info.started_at),
            job_names=",".join(sorted(info.job_names)),
            concurrency=int(info.concurrency),
            worker_ids=",".join(sorted(info.worker_ids)),
            host=self.host,
            pid=int(info.pid),
        )
        return info.pool_id, fields

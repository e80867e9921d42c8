"""Redis I/O of the web dashboard and API beyond the Client's: queue switches, one queued
job found by id, counter snapshots. Every page load is a fixed number of round trips with
no full scan of a list or a set; only an explicit delete of a queued job walks its queue."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prefork_work.store.admin import AdminStore
from prefork_work.store.base import translate_errors

QUEUE_SCAN_CHUNK = 1000  # LRANGE size while looking for one queued job to delete
MINUTE_SNAPSHOT_TTL = 2 * 3600  # the overview shows one hour; keep a margin


class WebStore(AdminStore):
    @translate_errors
    def find_queued_entry(self, name: str, needle: bytes, match: Callable[[bytes], bool]) -> bytes | None:
        """The oldest entry of ``name``'s queue that contains ``needle`` (a cheap byte test)
        and satisfies ``match`` (the decoded check). O(queue length): for an operator's explicit delete, never a page."""
        key = self.keys.jobs(name)
        end = -1
        while True:
            chunk: list[bytes] = self.redis.lrange(key, end - QUEUE_SCAN_CHUNK + 1, end)
            for entry in reversed(chunk):
                if needle in entry and match(entry):
                    return entry
            if len(chunk) < QUEUE_SCAN_CHUNK:
                return None
            end -= QUEUE_SCAN_CHUNK

    @translate_errors
    def remove_queued(self, name: str, entry: bytes) -> bool:
        """LREM the exact entry; False when a worker fetched it first."""
        return int(self.redis.lrem(self.keys.jobs(name), 1, entry)) > 0

    @translate_errors
    def put_minute(self, minute: int, snapshot: bytes) -> None:
        """First writer of a minute wins (several web processes may sample the same minute)."""
        self.redis.set(self.keys.web_minute(minute), snapshot, nx=True, ex=MINUTE_SNAPSHOT_TTL)

    @translate_errors
    def has_minute(self, minute: int) -> bool:
        return bool(self.redis.exists(self.keys.web_minute(minute)))

    @translate_errors
    def minutes(self, minutes: Sequence[int]) -> list[bytes | None]:
        if not minutes:
            return []
        values: list[bytes | None] = self.redis.mget([self.keys.web_minute(m) for m in minutes])
        return values


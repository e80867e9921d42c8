"""Redis I/O of the job path: enqueue, batched fetch + acknowledge, unique locks, observations.

This is the hot path. A worker makes one script call per *batch* of jobs (acknowledging the
previous batch and fetching the next), and an enqueue is one pipelined round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prefork_work.keys import Keys
from prefork_work.outcome import Outcome
from prefork_work.store.base import WAKE_TOKENS_MAX, RedisStore, redis_errors, translate_errors

# outcomes whose ack carries "<score> <payload>" (a tuple of members: no enum lookup per job)
_SCORED = (Outcome.RETRY, Outcome.DEAD)


@dataclass(slots=True)
class Ack:
    """The fate of one fetched job, sent back with the next fetch.

    ``name`` is the queue it was fetched from; ``score``/``payload`` only for retry and dead.
    """

    name: str
    raw: bytes
    outcome: Outcome
    score: int = 0
    payload: bytes = b""


class QueueStore(RedisStore):
    """Enqueue and worker-side Redis operations of one namespace."""

    _fetch_head: list[str] | None = None  # the fetch script's first keys, built once

    # --- enqueue ------------------------------------------------------------------------
    @translate_errors
    def push(self, name: str, payloads: Sequence[bytes], add_known: bool) -> None:
        """LPUSH jobs of one name (in order: the first is served first) and wake idle workers."""
        keys = [self.keys.jobs(name), self.keys.wake(), self.keys.known_jobs()]
        self.run_script_held("push", keys, [name if add_known else "", WAKE_TOKENS_MAX, *payloads])

    @translate_errors
    def push_many(self, by_name: dict[str, list[bytes]], known: Iterable[str]) -> None:
        """One round trip for a batch of jobs of several names."""
        pipe = self.redis.pipeline(transaction=False)
        total = 0
        for name, payloads in by_name.items():
            pipe.lpush(self.keys.jobs(name), *payloads)
            total += len(payloads)
        self.wake(pipe, total)
        names = list(known)
        if names:
            pipe.sadd(self.keys.known_jobs(), *names)
        pipe.execute()

    @translate_errors
    def schedule(self, name: str, payload: bytes, run_at: int, add_known: bool) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.keys.scheduled(), {payload: run_at})
        if add_known:
            pipe.sadd(self.keys.known_jobs(), name)
        pipe.execute()

    @translate_errors
    def push_unique(
        self, name: str, unique_key: str, payload: bytes, stored: bytes, run_at: int | None
    ) -> bool:
        """gocraft's unique enqueue: True when enqueued, False for a duplicate."""
        self.redis.sadd(self.keys.known_jobs(), name)
        reply = self.run_script("enqueue_unique", *unique_call(
            self.keys, name, unique_key, payload, stored, run_at))
        return bool(reply == b"ok")

    # --- worker ---------------------------------------------------------------------------
    def fetch_keys(self, pool_id: str, name: str) -> list[str]:
        """The six keys of one job name's fetch group, in the script's order."""
        k = self.keys
        return [
            k.jobs(name),
            k.in_progress(name, pool_id),
            k.paused(name),
            k.lock(name),
            k.lock_info(name),
            k.max_concurrency(name),
        ]

    def fetch(
        self,
        pool_id: str,
        sequence: int,
        order: Sequence[str],
        group_keys: dict[str, list[str]],
        want: int,
        acks: Sequence[Ack],
        *,
        max_payload_bytes: int = 0,
        max_batch_bytes: int = 0,
        now: int = 0,
        count: bool = True,
        statuses: Sequence[tuple[int, str, bytes]] = (),
        status_ttl: int = 0,
        increments: Mapping[str, int] | None = None,
    ) -> tuple[str | None, list[bytes]]:
        """Acknowledge ``acks`` and fetch up to ``want`` jobs from the first eligible queue.

        An entry over ``max_payload_bytes`` (0: no limit) goes to the dead set instead of
        being returned; the batch stops early once its payloads reach ``max_batch_bytes``
        (0: no limit; the first job is always taken).

        ``order`` is the priority-sampled order of job names; every acked job's name must be
        among them. Returns (name of the queue served or None, raw jobs oldest first).
        Never retried here: a retried fetch could claim a second batch (the worker recovers
        its own in-progress lists after a connection error instead, with ``recover``).
        ``sequence`` must be above every earlier call's of this pool (``worker.FETCH_SEQUENCE``):
        a call at or below the pool's fence is refused, changes nothing and returns
        (None, []) — only ever a late copy of a call whose reply was lost.

        The same call counts the acknowledged outcomes in ``<p>pw:metrics`` (``count``),
        adds ``increments`` to it, and writes ``statuses`` — (index of the ack in ``acks``,
        job id, record JSON) — to the status hash, kept ``status_ttl`` seconds past ``now``.
        """
        if self._fetch_head is None:
            k = self.keys
            self._fetch_head = [k.retry(), k.dead(), k.wake(), k.metrics(), k.status(),
                                k.status_expiry(), k.fence()]
        keys = self._fetch_head[:]
        group_of: dict[str, int] = {}
        for number, name in enumerate(order, start=1):
            keys.extend(group_keys[name])
            group_of[name] = number
        args: list[bytes | str | int] = [pool_id, sequence, want, max_payload_bytes,
                                         max_batch_bytes or 2**53, WAKE_TOKENS_MAX, len(acks)]
        for ack in acks:
            extra = b"%d %s" % (ack.score, ack.payload) if ack.outcome in _SCORED else b""
            args.extend((group_of[ack.name], ack.raw, ack.outcome, extra))
        args.extend((now, status_ttl, 1 if count else 0, len(statuses)))
        for index, job_id, record in statuses:
            args.extend((index + 1, job_id, record))
        args.append(len(increments) if increments else 0)
        if increments:
            for field, value in increments.items():
                args.extend((field, value))
        with redis_errors():
            group, jobs = self.run_script("fetch", keys, args)
        if group <= 0:  # 0: nothing fetched; -1: refused by the fence
            return None, []
        return order[int(group) - 1], list(jobs)

    @translate_errors
    def recover(self, pool_id: str, sequence: int, names: Iterable[str]) -> dict[str, list[bytes]]:
        """Raise the pool's fence to ``sequence`` (its last fetch call sent) and return every
        entry of its in-progress lists by job name, in one script (``lua/recover.lua``): a
        late copy of a lost call ran before this read, or is refused after it."""
        names = list(names)
        keys = [self.keys.fence(), *(self.keys.in_progress(name, pool_id) for name in names)]
        lists = self.run_script("recover", keys, [pool_id, sequence])
        return dict(zip(names, lists, strict=True))

    @translate_errors
    def wait_for_work(self, timeout: float) -> bool:
        """Block until a wake token arrives or ``timeout`` passes; True when woken."""
        return self.redis.blpop([self.keys.wake()], timeout=timeout) is not None

    @translate_errors
    def take_unique(self, unique_key: str) -> bytes | None:
        """GETDEL of a unique lock: atomic, unlike gocraft's GET then DEL (W13)."""
        value: bytes | None = self.redis.getdel(unique_key)
        return value

    @translate_errors
    def set_max_concurrency(self, caps: dict[str, int]) -> None:
        """What gocraft's WorkerPool.Start writes for every registered job type."""
        if not caps:
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, cap in caps.items():
            pipe.set(self.keys.max_concurrency(name), cap)
        pipe.sadd(self.keys.known_jobs(), *caps)
        pipe.execute()


def unique_call(keys: Keys, name: str, unique_key: str, payload: bytes, stored: bytes,
                run_at: int | None) -> tuple[list[str], list[bytes | int]]:
    """KEYS and ARGV of ``lua/enqueue_unique.lua`` (the sync and the asyncio store's)."""
    if run_at is None:
        return [keys.jobs(name), unique_key, keys.wake()], [payload, stored, WAKE_TOKENS_MAX]
    return ([keys.scheduled(), unique_key, keys.wake()],
            [payload, stored, WAKE_TOKENS_MAX, run_at])

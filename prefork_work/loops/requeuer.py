"""Due scheduled and retry jobs back to their queues (gocraft's requeuer.go, both sets).

Unlike gocraft, a due job goes back to its own queue whatever its name: a pool that does
not register a name simply never fetches it, so mixed fleets never dead-letter each
other's jobs (W10). Jobs are re-encoded exactly (t = now) rather than through cjson (W26).

Nothing in the sets may stop the requeuer: a member that cannot be decoded or re-encoded,
or whose name makes a key of another type (``hello:lock``), goes to the dead set wrapped
in a job that says why, and every member due after it still moves.
"""

from __future__ import annotations

import structlog

from prefork_work.errors import MalformedJob, RedisUnavailable, truncate
from prefork_work.job import Job
from prefork_work.outcome import malformed
from prefork_work.store.pools import PoolStore

log = structlog.get_logger("prefork_work.requeuer")

REQUEUER_INTERVAL = 1.0
BATCH = 500


class Requeuer:
    def __init__(self, store: PoolStore, interval: float = REQUEUER_INTERVAL) -> None:
        self.store = store
        self.interval = interval

    def tick(self, now: float) -> int:
        """Move every member due at ``now``; returns how many went to queues."""
        keys = self.store.keys
        return self.requeue(keys.retry(), int(now)) + self.requeue(keys.scheduled(), int(now))

    def requeue(self, zset: str, now: int) -> int:
        moved = 0
        while True:
            members = self.store.due_members(zset, now, BATCH)
            moves = [self._move(member, now) for member in members]
            refused: list[int] = []
            moved += self.store.move_due(zset, now, moves, refused)
            if refused:
                dead = self.store.keys.dead()
                self.store.move_due(zset, now, [
                    (moves[i][0], self._wrap(moves[i][0], now, self._wrong_type(moves[i][2])), dead)
                    for i in refused
                ])
            if len(members) < BATCH:
                return moved

    def _move(self, member: bytes, now: int) -> tuple[bytes, bytes, str]:
        keys = self.store.keys
        try:
            job = Job.from_json(member)
            if not job.name:
                raise MalformedJob(member, "job has no name")
            job.t = now
            return member, job.to_json(), keys.jobs(job.name)
        except RedisUnavailable:
            raise
        except Exception as err:  # whatever the member holds, it must not stop the batch
            return member, self._wrap(member, now, err), keys.dead()

    def _wrong_type(self, queue_key: str) -> str:
        shown = truncate(queue_key)
        return f"malformed job: its name makes the queue key {shown!r}, which holds another type"

    def _wrap(self, member: bytes, now: int, error: BaseException | str) -> bytes:
        # kept visible and deletable in the dead set instead of blocking the set; named ""
        # (not a queue's name, as the worker's): it was never fetched from a queue
        return malformed("", member, error, now, logger=log)

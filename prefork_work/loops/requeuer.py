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

from prefork_work.errors import MalformedJob, PreforkWorkError, RedisUnavailable, truncate
from prefork_work.job import Job, make_identifier
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
            if isinstance(err, MalformedJob):
                error = str(err)
            elif isinstance(err, PreforkWorkError):  # decoded, but cannot be written back
                error = f"malformed job: {err}"
            else:
                error = f"malformed job: {type(err).__name__}: {truncate(str(err))}"
            return member, self._wrap(member, now, error), keys.dead()

    def _wrong_type(self, queue_key: str) -> str:
        shown = truncate(queue_key)
        return f"malformed job: its name makes the queue key {shown!r}, which holds another type"

    def _wrap(self, member: bytes, now: int, error: str) -> bytes:
        # kept visible and deletable in the dead set instead of blocking the set
        text = member.decode("utf-8", "replace")
        wrapper = Job(name="", id=make_identifier(), t=now, args={"malformed_payload": text},
                      fails=1, err=error, failed_at=now)
        log.warning("malformed job moved to dead", job_id=wrapper.id, error=error)
        return wrapper.to_json()

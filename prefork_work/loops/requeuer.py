"""Due scheduled and retry jobs back to their queues (gocraft's requeuer.go, both sets).

Unlike gocraft, a due job goes back to its own queue whatever its name: a pool that does
not register a name simply never fetches it, so mixed fleets never dead-letter each
other's jobs (W10). Jobs are re-encoded exactly (t = now) rather than through cjson (W26).
"""

from __future__ import annotations

import structlog

from prefork_work.errors import MalformedJob
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
            moved += self.store.move_due(zset, now, moves)
            if len(members) < BATCH:
                return moved

    def _move(self, member: bytes, now: int) -> tuple[bytes, bytes, str]:
        keys = self.store.keys
        try:
            job = Job.from_json(member)
            if not job.name:
                raise MalformedJob(member, "job has no name")
        except MalformedJob as err:
            # kept visible and deletable in the dead set instead of blocking the set
            text = member.decode("utf-8", "replace")
            wrapper = Job(name="", id=make_identifier(), t=now, args={"malformed_payload": text},
                          fails=1, err=str(err), failed_at=now)
            log.warning("malformed job moved to dead", error=str(err))
            return member, wrapper.to_json(), keys.dead()
        job.t = now
        return member, job.to_json(), keys.jobs(job.name)

"""The periodic (cron) enqueuer (gocraft's periodic_enqueuer.go).

Every pool schedules the next 4 minutes of slots of its periodic jobs into ``<p>scheduled``
with Go's deterministic ids and bytes, so any number of hosts, Go or Python, make exactly
one member per slot.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from prefork_work import cron
from prefork_work.job import Job
from prefork_work.store.pools import PoolStore

PERIODIC_INTERVAL = 120.0  # gocraft: 2 min + a random 0-29 s
HORIZON_SECONDS = 240  # gocraft's periodicEnqueuerHorizon (its README says 5 minutes)


class PeriodicEnqueuer:
    def __init__(
        self,
        store: PoolStore,
        periodic: Sequence[tuple[str, str]],
        interval: float | None = None,
    ) -> None:
        """``periodic``: (job name, spec) pairs; specs are parsed (and checked) here."""
        self.store = store
        self.jobs = [(name, spec, cron.parse(spec)) for name, spec in periodic]
        self.interval = interval if interval is not None else PERIODIC_INTERVAL + random.randrange(30)

    def tick(self, now: float) -> int:
        """Schedule the slots in (now, now + 240 s) if due; returns how many members were written."""
        now_s = int(now)
        if not self.jobs:
            # gocraft still writes last_periodic_enqueue here; a pool with nothing to
            # schedule should not move the shared marker (W17)
            return 0
        if not should_enqueue(self.store.last_periodic_enqueue(), now_s):
            return 0
        members: dict[bytes, int] = {}
        for name, spec, schedule in self.jobs:
            for t in cron.slots(schedule, now_s, HORIZON_SECONDS):
                members[periodic_job_bytes(name, spec, t)] = t
        self.store.schedule_periodic(members, now_s)
        return len(members)


def periodic_job_id(name: str, spec: str, t: int) -> str:
    return f"periodic:{name}:{spec}:{t}"


def periodic_job_bytes(name: str, spec: str, t: int) -> bytes:
    """Exactly the member a Go periodic enqueuer ZADDs for this slot."""
    return Job(name=name, id=periodic_job_id(name, spec, t), t=t, args=None).to_json()


def should_enqueue(last: bytes | str | None, now: int) -> bool:
    """gocraft's shouldEnqueue as it behaves: run unless the last run was < 2 s ago.

    Go compares with now - 2 *seconds* where it meant minutes (W17); a missing value, or
    one Go's strconv.ParseInt rejects, means "run". Running often is harmless: the enqueue
    is idempotent.
    """
    if last is None:
        return True
    text = last.decode("utf-8", "replace") if isinstance(last, bytes) else str(last)
    if not _GO_INT.fullmatch(text):
        return True
    value = int(text)
    if not -(2**63) <= value < 2**63:
        return True
    return value < now - 2


_GO_INT = re.compile(r"[+-]?[0-9]+")

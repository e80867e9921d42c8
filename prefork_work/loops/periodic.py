"""The periodic (cron) enqueuer (gocraft's periodic_enqueuer.go).

Every pool schedules the next 4 minutes of slots of its periodic jobs into ``<p>scheduled``
with Go's deterministic ids and bytes, so any number of hosts, Go or Python, make exactly
one member per slot.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from prefork_work import cron
from prefork_work.store.pools import PoolStore

PERIODIC_INTERVAL = 120.0  # gocraft: 2 min + a random 0-29 s


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
        if not cron.should_enqueue(self.store.last_periodic_enqueue(), now_s):
            return 0
        members: dict[bytes, int] = {}
        for name, spec, schedule in self.jobs:
            for t in cron.slots(schedule, now_s):
                members[cron.periodic_job_bytes(name, spec, t)] = t
        self.store.schedule_periodic(members, now_s)
        return len(members)

"""The dead-pool reaper (gocraft's dead_pool_reaper.go), made fast and safe.

Differences from gocraft, each fixing a way it loses or duplicates jobs (shared/reference §8):

- Dead pools are found from the in-progress lists themselves (SCAN), not only from
  ``<p>worker_pools``: a pool whose heartbeat hash is missing still gets its jobs back
  (W1). To never take a live Go pool that has fetched before its first heartbeat for a
  dead one, a pool without any heartbeat is reaped only once it has been seen without one
  for ``dead_after`` seconds. Pools are also found by their field of the fetch fence
  (``Keys.fence``), so the field of one that never had a heartbeat goes too.
- A dead pool is claimed (``SET NX``) so two reapers never both requeue it, every reply is
  checked (W2), and the pool's record is removed only after its lists are empty.
- Requeue and lock release are one atomic script; afterwards ``lock``/``lock_info`` of
  each job name are recomputed from the in-progress lists (W21, W23).
- The master reaps its own dead children at once (``reclaim_pool``) and runs a pass every
  10 s, not every 10 minutes (W8).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import psutil
import structlog

from prefork_work.job import make_identifier
from prefork_work.outcome import settle_in_progress
from prefork_work.store.pools import PoolStore

log = structlog.get_logger("prefork_work.reaper")

DEAD_AFTER = 15.0  # Go reapers use 10 s; a margin over it costs little and avoids false reaps
REAPER_INTERVAL = 10.0
LOCK_REPAIR_EVERY = 6  # passes


class DeadPoolReaper:
    def __init__(
        self,
        store: PoolStore,
        job_names: Callable[[], Iterable[str]] | Iterable[str],
        live_pools: Callable[[], set[str]] = set,
        dead_after: float = DEAD_AFTER,
        interval: float | None = None,
    ) -> None:
        self.store = store
        self._job_names = job_names
        self.live_pools = live_pools
        self.dead_after = dead_after
        self.interval = interval if interval is not None else REAPER_INTERVAL + random.uniform(0, 3)
        self.claimant = make_identifier()
        self.first_seen_without_heartbeat: dict[str, float] = {}
        self.passes = 0

    def job_names(self) -> list[str]:
        names = self._job_names() if callable(self._job_names) else self._job_names
        return sorted(names)

    # --- passes ---------------------------------------------------------------------------
    def tick(self, now: float) -> int:
        """One reap pass; returns how many jobs were requeued."""
        self.passes += 1
        lists = self.store.in_progress_lists()
        candidates = (set(lists) | self.store.pool_ids()
                      | self.store.fenced_pool_ids()) - self.live_pools()
        beats = self.store.heartbeats(candidates)
        requeued = 0
        reaped_names: set[str] = set()
        for pool_id in sorted(candidates):
            beat = beats[pool_id]
            if not self._is_dead(pool_id, beat.heartbeat_at, now):
                continue
            names = lists.get(pool_id, set()) | beat.names()
            moved = self._reclaim(pool_id, names, beat.workers())
            if moved:
                log.info("reclaimed a dead pool's jobs", pool_id=pool_id, jobs=moved,
                         heartbeat_at=beat.heartbeat_at)
            requeued += moved
            reaped_names |= names
        if reaped_names or self.passes % LOCK_REPAIR_EVERY == 0:
            self.repair_locks(set(self.job_names()) | reaped_names, lists)
        return requeued

    def reclaim_pool(self, pool_id: str, now: float, names: Iterable[str] | None = None) -> int:
        """Requeue one pool's jobs now (a child the master saw die); returns the count.

        Logs nothing: the caller knows why the pool died and says so in one line."""
        if names is None:
            names = self.store.in_progress_lists(pool_id).get(pool_id, set())
        worker_ids = self.store.heartbeats([pool_id])[pool_id].workers()
        return self._reclaim(pool_id, set(names) | set(self.job_names()), worker_ids)

    def reap_local_orphans(
        self, host: str, now: float, pid_alive: Callable[[int], bool] | None = None
    ) -> int:
        """Pools of this host whose process is gone are reclaimed at once (a restarted master)."""
        pid_alive = pid_alive or process_alive
        candidates = self.store.pool_ids() - self.live_pools()
        requeued = 0
        for pool_id, beat in self.store.heartbeats(candidates).items():
            if beat.host == host and beat.pid and not pid_alive(beat.pid):
                names = self.store.in_progress_lists(pool_id).get(pool_id, set())
                moved = self._reclaim(pool_id, names | beat.names(), beat.workers())
                if moved:
                    log.info("reclaimed a dead pool's jobs", pool_id=pool_id, jobs=moved,
                             reason="its process on this host is gone", pid=beat.pid)
                requeued += moved
        return requeued

    def record_crash(
        self, pool_id: str, job_name: str, job_id: str, reason: str, max_crashes: int, now: float
    ) -> str:
        """Count a death of ``job_id``'s process; at ``max_crashes`` the job goes to dead.

        Returns "dead" or "requeued" (the caller's reclaim_pool then requeues it). A job
        that later succeeds keeps its counter until it expires (7 days): cheap, and a
        job that crashed before is worth watching.
        """
        count = self.store.count_crash(job_id)
        if count < max_crashes:
            return "requeued"
        outcome = settle_in_progress(self.store, pool_id, job_name, job_id, None,
                                     f"worker died: {reason} ({count} times)", now,
                                     cause="poison job", poison=True)
        if outcome is None:
            return "requeued"
        self.store.forget_crashes(job_id)
        return "dead"

    def repair_locks(self, names: Iterable[str], lists: dict[str, set[str]] | None = None) -> None:
        lists = self.store.in_progress_lists() if lists is None else lists
        for name in sorted(names):
            pools = [pool_id for pool_id, pool_names in lists.items() if name in pool_names]
            self.store.recompute_locks(name, pools)

    # --- internals -------------------------------------------------------------------------------
    def _is_dead(self, pool_id: str, heartbeat_at: int | None, now: float) -> bool:
        if heartbeat_at is not None:
            self.first_seen_without_heartbeat.pop(pool_id, None)
            return heartbeat_at + self.dead_after <= now
        first = self.first_seen_without_heartbeat.setdefault(pool_id, now)
        return now - first >= self.dead_after

    def _reclaim(self, pool_id: str, names: Iterable[str], worker_ids: Iterable[str]) -> int:
        if not self.store.claim_pool(pool_id, self.claimant):
            return 0  # another reaper has it
        try:
            moved = self.store.reclaim_pool(pool_id, names)
            self.store.remove_pool(pool_id, worker_ids)
            self.first_seen_without_heartbeat.pop(pool_id, None)
        finally:
            self.store.release_claim(pool_id)
        return moved  # each caller logs it once, saying why the pool was dead


def process_alive(pid: int) -> bool:
    """A zombie is dead: an orphaned child whose new parent does not reap it stays one."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False

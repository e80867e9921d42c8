"""gocraft's observation hashes ``<p>worker:<worker id>``: the job each worker runs now.

One writer for both ways a job is observed: per job in process (``worker.RedisObserver``),
and by the prefork master, which mirrors its children's scoreboard slots once a second
(``ObservationWriter.mirror``), so the children keep Redis off their per-job path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prefork_work.errors import InvalidJobArguments, PreforkWorkError
from prefork_work.job import Job
from prefork_work.store.pools import PoolStore


def observation_args(job: Job) -> str:
    """gocraft writes the args' JSON, or the empty string for nil or empty args."""
    if not job.args:
        return ""
    from prefork_work.gojson import dumps

    try:
        return dumps(job.args)
    except InvalidJobArguments:  # decoded, yet not re-encodable (e.g. nested very deep)
        return ""


class ObservedSlot(Protocol):
    """What the mirror reads of a scoreboard slot (``supervisor.SlotState``)."""

    @property
    def busy(self) -> bool: ...
    @property
    def label(self) -> str: ...  # "<job id> <job name>"
    @property
    def started_at(self) -> float: ...
    @property
    def extra(self) -> bytes: ...  # raw job bytes [NUL checkin_at NUL message]


@dataclass(slots=True)
class SlotRecord:
    """What the master last wrote to Redis for one job slot (one gocraft worker id)."""

    worker_id: str
    observed: str | None = None  # the slot label last written as an observation
    checkin: bytes = b""  # the check-in (time and message) last written for that job


class ObservationWriter:
    """The one writer of observation hashes: any number of workers in one pipeline."""

    def __init__(self, store: PoolStore) -> None:
        self.store = store

    def write(
        self,
        started: Sequence[tuple[str, str, str, int, str]] = (),
        checkins: Sequence[tuple[str, str, int]] = (),
        idle: Sequence[str] = (),
    ) -> None:
        """started: (worker_id, job_name, job_id, started_at, args_json); checkins:
        (worker_id, message, checkin_at); idle: worker ids whose hash goes."""
        if started or checkins or idle:
            self.store.write_observations(started, checkins, idle)

    def started(self, worker_id: str, job: Job, at: int) -> None:
        self.write(started=[(worker_id, job.name, job.id, at, observation_args(job))])

    def checkin(self, worker_id: str, message: str, at: int) -> None:
        self.write(checkins=[(worker_id, message, at)])

    def done(self, worker_id: str) -> None:
        self.write(idle=[worker_id])

    def mirror(self, slots: Iterable[tuple[SlotRecord, ObservedSlot]], now: float) -> None:
        """The master's side: each worker's slot, written where it changed since the last call."""
        started: list[tuple[str, str, str, int, str]] = []
        checkins: list[tuple[str, str, int]] = []
        idle: list[str] = []
        for record, state in slots:
            if state.busy:
                raw, _, checkin = state.extra.partition(b"\0")
                if state.label != record.observed:
                    job_id, _, name = state.label.partition(" ")
                    started.append((record.worker_id, name, job_id, int(state.started_at),
                                    _args_of(raw)))
                    record.observed = state.label
                    record.checkin = b""
                if checkin and checkin != record.checkin:  # written when it changes, as Go's
                    at, _, message = checkin.partition(b"\0")
                    checkins.append((record.worker_id, message.decode("utf-8", "replace"),
                                     int(at) if at.isdigit() else int(now)))
                    record.checkin = checkin
            elif record.observed is not None:
                idle.append(record.worker_id)
                record.observed = None
        self.write(started, checkins, idle)


def _args_of(raw: bytes) -> str:
    try:
        return observation_args(Job.from_json(raw))
    except PreforkWorkError:
        return ""

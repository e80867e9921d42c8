"""The one observation writer: the master's mirror of its children's slots writes a worker's
hash when its job starts, when a check-in changes, and once when it goes idle."""

from __future__ import annotations

from dataclasses import dataclass

from prefork_work.job import Job
from prefork_work.observations import ObservationWriter, SlotRecord


@dataclass(frozen=True)
class Slot:
    busy: bool = False
    label: str = ""
    started_at: float = 0.0
    extra: bytes = b""


class Store:
    def __init__(self) -> None:
        self.calls: list[tuple[list, list, list]] = []

    def write_observations(self, started, checkins, idle) -> None:
        self.calls.append((list(started), list(checkins), list(idle)))


def test_each_change_of_a_slot_is_written_once() -> None:
    store = Store()
    writer = ObservationWriter(store)  # type: ignore[arg-type]
    record = SlotRecord("w1")
    raw = Job(name="mail", id="j1", t=1, args={"to": "a"}).to_json()
    running = Slot(True, "j1 mail", 100.0, raw)
    writer.mirror([(record, running)], now=105.0)
    assert store.calls == [([("w1", "mail", "j1", 100, '{"to":"a"}')], [], [])]
    writer.mirror([(record, running)], now=106.0)  # nothing changed: no write at all
    assert len(store.calls) == 1
    checked_in = Slot(True, "j1 mail", 100.0, raw + b"\x00107\x00half done")
    writer.mirror([(record, checked_in)], now=108.0)
    writer.mirror([(record, checked_in)], now=109.0)
    assert store.calls[1:] == [([], [("w1", "half done", 107)], [])]
    writer.mirror([(record, Slot())], now=110.0)
    writer.mirror([(record, Slot())], now=111.0)
    assert store.calls[2:] == [([], [], ["w1"])]


def test_a_new_job_is_a_new_observation_without_the_last_jobs_checkin() -> None:
    store = Store()
    writer = ObservationWriter(store)  # type: ignore[arg-type]
    record = SlotRecord("w1")
    checkin = b"\x00107\x00half done"
    writer.mirror([(record, Slot(True, "j1 mail", 100.0, b"{}" + checkin))], now=108.0)
    # the next job in the same slot, checked in with the same text at the same second
    writer.mirror([(record, Slot(True, "j2 mail", 108.0, b"not json" + checkin))], now=109.0)
    assert store.calls[1] == ([("w1", "mail", "j2", 108, "")], [("w1", "half done", 107)], [])

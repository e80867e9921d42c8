"""Cron schedules: croniter, plus a thin adapter so Go and Python pools make the same slots.

gocraft/work parses periodic specs with robfig/cron v3.0.1 and de-duplicates periodic jobs by
identical bytes for identical slots, so a Python pool must pick exactly the slots Go picks.
croniter parses and iterates the spec (fields, names, ranges, steps, the day-of-month OR
day-of-week rule, time zones, the repeated autumn hour: a 01:30 slot fires twice on the
fall-back day, as in Go). The adapter adds what robfig/cron has and croniter does not:

- a ``TZ=`` / ``CRON_TZ=`` prefix names the spec's zone; without one the process's local
  zone is used, as Go's ``time.Local``;
- 6 fields mean seconds first (``second_at_beginning``); 5 fields fire at second 0;
- robfig's descriptors (``@yearly``/``@annually``, ``@monthly``, ``@weekly``, ``@daily``/
  ``@midnight``, ``@hourly``, ``@every <Go duration>``);
- the next slot is strictly after ``now``, on whole epoch seconds;
- a slot whose local wall-clock time does not match the spec is skipped: in the
  spring-forward gap croniter moves 02:30 to 03:00, Go skips that day (``croniter.match``
  decides).

Two deliberate differences from Go, both fixing gocraft bugs (shared/reference §8):

- ``@every <duration>`` slots are aligned to the Unix epoch (multiples of the duration), so
  every run on every host makes the same slots (Go's are relative to "now": W16). Go and
  Python pools therefore make different ids for ``@every`` specs.
- A spec that can never fire (``0 0 0 30 2 *``) is rejected when parsed instead of making
  the periodic enqueuer loop for ever (W37).

The periodic job's id and bytes, and when to enqueue, are the periodic enqueuer's
(``loops/periodic.py``); this module only says when a spec fires.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

_UTC = dt.UTC
# robfig/cron's Next gives up (returns the zero time) after 5 years without a match
_YEARS_TO_FIND_A_MATCH = 5
# a spec whose slots all fall in DST gaps would never match: give up after this many tries
_GAP_SKIPS = 16

# robfig/cron v3's descriptors, as 6-field specs (seconds first)
_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}


class CronSpecError(ValueError):
    """A cron spec that cannot be parsed, or one that can never fire."""


def local_zone() -> dt.tzinfo:
    """The process's local zone, the one Go's time.Local means (TZ, else /etc/localtime)."""
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle)
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return _UTC


class Schedule:
    """What ``parse`` returns: ``next(t)`` is the first activation strictly after ``t``."""

    def next(self, t: int) -> int | None:  # pragma: no cover - interface
        raise NotImplementedError

    def after(self, t: int) -> Iterator[int]:
        """Every activation strictly after ``t``, in order."""
        slot = self.next(t)
        while slot is not None:
            yield slot
            slot = self.next(slot)


@dataclass(frozen=True)
class SpecSchedule(Schedule):
    """A 6-field spec (seconds first) in a zone, iterated by croniter."""

    fields: str
    zone: dt.tzinfo

    def next(self, t: int) -> int | None:
        """The first slot strictly after ``t`` whose wall-clock time matches; None: none in 5 years."""
        return next(self.after(t), None)

    def after(self, t: int) -> Iterator[int]:
        """The slots strictly after ``t``, in order, from one croniter iterator."""
        it = croniter(self.fields, dt.datetime.fromtimestamp(t, self.zone), second_at_beginning=True,
                      max_years_between_matches=_YEARS_TO_FIND_A_MATCH)
        skipped = 0
        while skipped < _GAP_SKIPS:
            try:
                slot: dt.datetime = it.get_next(dt.datetime)
            except CroniterBadDateError:
                return
            # croniter moves a slot in the spring-forward gap to the first instant after
            # it; robfig/cron skips it (Go's time.Date lands it back on a non-matching
            # time). Matched as naive wall-clock time, where croniter has no DST to bend.
            if croniter.match(self.fields, slot.replace(tzinfo=None), second_at_beginning=True):
                skipped = 0
                yield int(slot.timestamp())
            else:
                skipped += 1


@dataclass(frozen=True)
class EverySchedule(Schedule):
    """``@every d``, aligned to the epoch (our fix of W16)."""

    seconds: int

    def next(self, t: int) -> int | None:
        return (t // self.seconds + 1) * self.seconds


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")


def _parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` (the subset @every needs: positive durations)."""
    original = text
    if text.startswith("+"):
        text = text[1:]
    if text == "0":
        return 0.0
    total = 0.0
    position = 0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if not match or match.group(1) in ("", "."):
            raise CronSpecError(f"invalid duration {original!r}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not text:
        raise CronSpecError(f"invalid duration {original!r}")
    return total


def _descriptor(spec: str, zone: dt.tzinfo) -> Schedule:
    if spec in _DESCRIPTORS:
        return SpecSchedule(_DESCRIPTORS[spec], zone)
    if spec.startswith("@every "):
        seconds = int(_parse_duration(spec[len("@every "):].strip()))
        return EverySchedule(max(seconds, 1))  # robfig rounds below 1 s up to 1 s
    raise CronSpecError(f"unrecognized descriptor: {spec!r}")


def _fields(body: str, spec: str) -> str:
    fields = body.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise CronSpecError(f"expected 5 or 6 fields, found {len(fields)}: {spec!r}")
    text = " ".join(fields)
    try:
        croniter(text, 0, second_at_beginning=True)
    except (CroniterError, ValueError) as err:
        raise CronSpecError(f"bad spec {spec!r}: {err}") from None
    return text


def parse(spec: str, default_zone: dt.tzinfo | None = None, now: int | None = None) -> Schedule:
    """Parse a 5-field, 6-field (seconds first) or descriptor spec, with an optional TZ= prefix."""
    if not isinstance(spec, str) or not spec.strip():
        raise CronSpecError("empty spec string")
    zone = default_zone or local_zone()
    body = spec
    if body.startswith(("TZ=", "CRON_TZ=")):
        space = body.find(" ")
        if space < 0:
            raise CronSpecError(f"missing schedule after time zone in {spec!r}")
        name = body[body.index("=") + 1 : space]
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise CronSpecError(f"provided bad location {name}: {err}") from None
        body = body[space:].strip()
    schedule = _descriptor(body, zone) if body.startswith("@") else SpecSchedule(_fields(body, spec), zone)
    reference = int(dt.datetime.now(_UTC).timestamp()) if now is None else now
    if schedule.next(reference) is None:
        raise CronSpecError(f"spec {spec!r} never fires (nothing matches within 5 years)")
    return schedule


def slots(schedule: Schedule, now: int, horizon: int) -> list[int]:
    """Every activation t with now < t < now + horizon."""
    found = []
    for t in schedule.after(now):
        if t >= now + horizon:
            break
        found.append(t)
    return found


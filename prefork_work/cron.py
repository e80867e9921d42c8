"""Cron schedules with robfig/cron v3's semantics, so Go and Python pools make the same slots.

gocraft/work parses periodic specs with robfig/cron v3.0.1 (seconds optional, descriptors)
and de-duplicates periodic jobs by identical bytes for identical slots, so this module
reproduces ``SpecSchedule.Next`` step by step, including how Go's ``time.Date`` resolves
wall-clock times in a DST gap (a 02:30 slot is skipped on the spring-forward day) and a
repeated hour (a 01:30 slot fires twice on the fall-back day). Specs without a ``TZ=`` /
``CRON_TZ=`` prefix use the process's local zone, as Go does.

Two deliberate differences, both fixing gocraft bugs (shared/reference §8):

- ``@every <duration>`` slots are aligned to the Unix epoch (multiples of the duration), so
  every run on every host makes the same slots (Go's are relative to "now": W16). Go and
  Python pools therefore make different ids for ``@every`` specs.
- A spec that can never fire (``0 0 0 30 2 *``) is rejected when parsed instead of making
  the periodic enqueuer loop for ever (W37).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefork_work.job import Job

HORIZON_SECONDS = 240  # gocraft's periodicEnqueuerHorizon (its README says 5 minutes)
STAR_BIT = 1 << 63
_UTC = dt.UTC
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


class CronSpecError(ValueError):
    """A cron spec robfig/cron would reject, or one that can never fire."""


@dataclass(frozen=True)
class _Bounds:
    low: int
    high: int
    names: dict[str, int] | None = None


_MONTH_NAMES = {m: i + 1 for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}
_DOW_NAMES = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_FIELDS = (
    ("seconds", _Bounds(0, 59)),
    ("minutes", _Bounds(0, 59)),
    ("hours", _Bounds(0, 23)),
    ("day of month", _Bounds(1, 31)),
    ("month", _Bounds(1, 12, _MONTH_NAMES)),
    ("day of week", _Bounds(0, 6, _DOW_NAMES)),
)


def _bits(low: int, high: int, step: int = 1) -> int:
    if step == 1:
        return ~(~0 << (high + 1)) & (~0 << low)
    value = 0
    for i in range(low, high + 1, step):
        value |= 1 << i
    return value


def _all(bounds: _Bounds) -> int:
    return _bits(bounds.low, bounds.high) | STAR_BIT


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


@dataclass(frozen=True)
class SpecSchedule(Schedule):
    second: int
    minute: int
    hour: int
    dom: int
    month: int
    dow: int
    zone: dt.tzinfo

    def next(self, t: int) -> int | None:
        """robfig/cron v3 ``SpecSchedule.Next`` on whole epoch seconds; None for its zero time."""
        zone = self.zone
        t = t + 1
        added = False
        year_limit = _wall(t, zone).year + 5
        while True:  # the WRAP label
            w = _wall(t, zone)
            if w.year > year_limit:
                return None
            wrapped = False
            while not (1 << w.month) & self.month:
                if not added:
                    added = True
                    t = _date(w.year, w.month, 1, 0, 0, 0, zone)
                    w = _wall(t, zone)
                t = _date(w.year, w.month + 1, w.day, w.hour, w.minute, w.second, zone)
                w = _wall(t, zone)
                if w.month == 1:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not self._day_matches(w):
                if not added:
                    added = True
                    t = _date(w.year, w.month, w.day, 0, 0, 0, zone)
                    w = _wall(t, zone)
                t = _date(w.year, w.month, w.day + 1, w.hour, w.minute, w.second, zone)
                w = _wall(t, zone)
                # robfig: notice when the hour is no longer midnight because of DST
                if w.hour != 0:
                    t += (24 - w.hour) * 3600 if w.hour > 12 else -w.hour * 3600
                    w = _wall(t, zone)
                if w.day == 1:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << w.hour) & self.hour:
                if not added:
                    added = True
                    t = _date(w.year, w.month, w.day, w.hour, 0, 0, zone)
                t += 3600
                w = _wall(t, zone)
                if w.hour == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << w.minute) & self.minute:
                if not added:
                    added = True
                    t -= t % 60
                t += 60
                w = _wall(t, zone)
                if w.minute == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << w.second) & self.second:
                if not added:
                    added = True
                t += 1
                w = _wall(t, zone)
                if w.second == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            return t

    def _day_matches(self, w: dt.datetime) -> bool:
        dom_match = bool((1 << w.day) & self.dom)
        dow_match = bool((1 << ((w.weekday() + 1) % 7)) & self.dow)
        if self.dom & STAR_BIT or self.dow & STAR_BIT:
            return dom_match and dow_match
        return dom_match or dow_match


@dataclass(frozen=True)
class EverySchedule(Schedule):
    """``@every d``, aligned to the epoch (our fix of W16)."""

    seconds: int

    def next(self, t: int) -> int | None:
        return (t // self.seconds + 1) * self.seconds


def _wall(t: int, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, zone)


def _offset(instant: int, zone: dt.tzinfo) -> int:
    offset = dt.datetime.fromtimestamp(instant, zone).utcoffset()
    return int(offset.total_seconds()) if offset else 0


def _date(year: int, month: int, day: int, hour: int, minute: int, second: int, zone: dt.tzinfo) -> int:
    """Go's ``time.Date``: normalise overflowing fields, then resolve the wall time like Go.

    Go looks up the zone offset at the wall time read as UTC, and if the resulting instant
    falls outside that offset's period, uses the offset in force at that instant instead.
    """
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    ordinal = dt.date(year, month, 1).toordinal() + day - 1
    unix = (ordinal - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second
    first = _offset(unix, zone)
    utc = unix - first
    second_offset = _offset(utc, zone)
    return unix - second_offset if second_offset != first else utc


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


def _parse_number(text: str, bounds: _Bounds, expr: str) -> int:
    if bounds.names and text.lower() in bounds.names:
        return bounds.names[text.lower()]
    if not text or not text.lstrip("-").isdigit():
        raise CronSpecError(f"failed to parse int from {text!r} in {expr!r}")
    value = int(text)
    if value < 0:
        raise CronSpecError(f"negative number ({value}) not allowed: {expr!r}")
    return value


def _parse_range(expr: str, bounds: _Bounds) -> int:
    range_and_step = expr.split("/")
    low_and_high = range_and_step[0].split("-")
    single = len(low_and_high) == 1
    extra = 0
    if low_and_high[0] in ("*", "?"):
        start, end, extra = bounds.low, bounds.high, STAR_BIT
    else:
        start = _parse_number(low_and_high[0], bounds, expr)
        if len(low_and_high) == 1:
            end = start
        elif len(low_and_high) == 2:
            end = _parse_number(low_and_high[1], bounds, expr)
        else:
            raise CronSpecError(f"too many hyphens: {expr!r}")
    if len(range_and_step) == 1:
        step = 1
    elif len(range_and_step) == 2:
        step = _parse_number(range_and_step[1], _Bounds(0, 0), expr)
        if single:  # "N/step" means "N-max/step"
            end = bounds.high
        if step > 1:
            extra = 0
    else:
        raise CronSpecError(f"too many slashes: {expr!r}")
    if start < bounds.low:
        raise CronSpecError(f"beginning of range ({start}) below minimum ({bounds.low}): {expr!r}")
    if end > bounds.high:
        raise CronSpecError(f"end of range ({end}) above maximum ({bounds.high}): {expr!r}")
    if start > end:
        raise CronSpecError(f"beginning of range ({start}) beyond end of range ({end}): {expr!r}")
    if step == 0:
        raise CronSpecError(f"step of range should be a positive number: {expr!r}")
    return _bits(start, end, step) | extra


def _descriptor(spec: str, zone: dt.tzinfo) -> Schedule:
    _, minute, hour, dom, month, dow = (b for _, b in _FIELDS)
    if spec in ("@yearly", "@annually"):
        return SpecSchedule(1, 1, 1, 1 << 1, 1 << 1, _all(dow), zone)
    if spec == "@monthly":
        return SpecSchedule(1, 1, 1, 1 << 1, _all(month), _all(dow), zone)
    if spec == "@weekly":
        return SpecSchedule(1, 1, 1, _all(dom), _all(month), 1, zone)
    if spec in ("@daily", "@midnight"):
        return SpecSchedule(1, 1, 1, _all(dom), _all(month), _all(dow), zone)
    if spec == "@hourly":
        return SpecSchedule(1, 1, _all(hour), _all(dom), _all(month), _all(dow), zone)
    if spec.startswith("@every "):
        seconds = int(_parse_duration(spec[len("@every "):].strip()))
        return EverySchedule(max(seconds, 1))  # robfig rounds below 1 s up to 1 s
    raise CronSpecError(f"unrecognized descriptor: {spec!r}")


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
    if body.startswith("@"):
        schedule = _descriptor(body, zone)
    else:
        fields = body.split()
        if len(fields) == 5:
            fields = ["0", *fields]
        if len(fields) != 6:
            raise CronSpecError(f"expected 5 or 6 fields, found {len(fields)}: {spec!r}")
        bits = []
        for (label, bounds), expr in zip(_FIELDS, fields, strict=True):
            try:
                value = 0
                for part in expr.split(","):
                    value |= _parse_range(part, bounds)
            except CronSpecError as err:
                raise CronSpecError(f"{label} field: {err}") from None
            bits.append(value)
        second, minute, hour, dom, month, dow = bits
        schedule = SpecSchedule(second, minute, hour, dom, month, dow, zone)
    reference = int(dt.datetime.now(_UTC).timestamp()) if now is None else now
    if schedule.next(reference) is None:
        raise CronSpecError(f"spec {spec!r} never fires (nothing matches within 5 years)")
    return schedule


def slots(schedule: Schedule, now: int, horizon: int = HORIZON_SECONDS) -> list[int]:
    """Every activation t with now < t < now + horizon (gocraft's periodic enqueue window)."""
    found = []
    t = schedule.next(now)
    while t is not None and t < now + horizon:
        found.append(t)
        t = schedule.next(t)
    return found


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

"""Cron slots, ids and bytes against what gocraft/work + robfig/cron v3 produced (periodic.json)."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest

from prefork_work import cron
from prefork_work.loops.periodic import (
    HORIZON_SECONDS,
    periodic_job_bytes,
    periodic_job_id,
    should_enqueue,
)

UTC = dt.UTC


def load(vectors):
    return json.loads((vectors / "periodic.json").read_text())


def expected_members(run) -> list[tuple[str, int]]:
    return [(item["member"], int(item["score"])) for item in run["scheduled"]]


def our_members(specs, now: int) -> list[tuple[str, int]]:
    members = {}
    for item in specs:
        schedule = cron.parse(item["spec"], default_zone=UTC, now=now)
        for t in cron.slots(schedule, now, HORIZON_SECONDS):
            members[periodic_job_bytes(item["job_name"], item["spec"], t).decode()] = t
    return sorted(members.items(), key=lambda kv: (kv[1], kv[0]))


def test_every_vector_run_matches_go(vectors) -> None:
    data = load(vectors)
    assert data["tz"] == "UTC" and data["horizon_seconds"] == HORIZON_SECONDS
    compared = 0
    previous_members: list[tuple[str, int]] = []
    for run in data["runs"]:
        if any(s["spec"].startswith("@every") for s in run["specs"]):
            continue  # ours are aligned to the epoch on purpose (W16); tested below
        ours = our_members(run["specs"], run["now"])
        if run["case"].endswith("second_run_plus_1s_same_zset"):
            # ran on the previous run's set: the union must be what Go left
            ours = sorted(set(ours) | set(previous_members), key=lambda kv: (kv[1], kv[0]))
        expected = sorted(expected_members(run), key=lambda kv: (kv[1], kv[0]))
        assert ours == expected, run["case"]
        assert run["count"] == len(expected)
        previous_members = ours
        compared += 1
    assert compared >= 40


def test_go_suite_vector_twenty_jobs() -> None:
    now = 1468359453
    specs = [("foo", "0/29 * * * * *"), ("bar", "3/49 * * * * *"), ("baz", "* * * 2 * *")]
    got = {name: cron.slots(cron.parse(spec, default_zone=UTC, now=now), now, HORIZON_SECONDS) for name, spec in specs}
    assert sum(len(v) for v in got.values()) == 20
    assert [t - 1468359000 for t in got["bar"]] == [472, 483, 532, 543, 592, 603, 652, 663]
    assert [t - 1468359000 for t in got["foo"]] == [
        478, 480, 509, 538, 540, 569, 598, 600, 629, 658, 660, 689]
    assert got["baz"] == []
    assert periodic_job_id("bar", "3/49 * * * * *", 1468359472) == "periodic:bar:3/49 * * * * *:1468359472"


def test_should_enqueue_matches_go(vectors) -> None:
    for case in load(vectors)["should_enqueue"]:
        stored = case["last_periodic_enqueue_stored"]
        got = should_enqueue(None if stored is None else stored.encode(), case["now"])
        assert got is case["should_enqueue"], case["case"]


def test_never_firing_spec_is_rejected(vectors) -> None:
    spec = load(vectors)["never_firing_spec"]["spec"]
    with pytest.raises(cron.CronSpecError, match="never fires"):
        cron.parse(spec, default_zone=UTC)


def test_dst_new_york() -> None:
    ny = ZoneInfo("America/New_York")
    # spring forward 2024-03-10: 02:30 does not exist and is skipped
    spring = cron.parse("0 30 2 * * *", default_zone=ny)
    start = int(dt.datetime(2024, 3, 9, 12, tzinfo=UTC).timestamp())
    first = spring.next(start)
    second = spring.next(first)
    # Go skips the day; croniter alone would fire at 03:00 on the 10th
    assert dt.datetime.fromtimestamp(first, ny) == dt.datetime(2024, 3, 11, 2, 30, tzinfo=ny)
    assert second - first == 24 * 3600
    # fall back 2024-11-03: 01:30 happens twice, at 05:30Z and 06:30Z
    fall = cron.parse("TZ=America/New_York 0 30 1 * * *", default_zone=UTC)
    start = int(dt.datetime(2024, 11, 3, 0, tzinfo=UTC).timestamp())
    a = fall.next(start)
    b = fall.next(a)
    assert dt.datetime.fromtimestamp(a, UTC).strftime("%H:%M") == "05:30"
    assert dt.datetime.fromtimestamp(b, UTC).strftime("%H:%M") == "06:30"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("* * * *", "expected 5 or 6 fields"),
        ("61 * * * *", "'61 \\* \\* \\* \\*'.*out of range"),
        ("* * * * * * *", "expected 5 or 6 fields"),
        ("0 0 * * 8", "out of range"),
        ("*/0 * * * * *", "step '0'"),
        ("1-2-3 * * * * *", "not acceptable"),
        ("0 0 0 * * H", "hash_id"),
        ("TZ=Nowhere/Land 0 * * * *", "bad location"),
        ("@fortnightly", "unrecognized descriptor"),
        ("@every 5x", "invalid duration"),
    ],
)
def test_bad_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(cron.CronSpecError, match=message):
        cron.parse(spec, default_zone=UTC)


def test_croniter_syntax_beyond_robfig_is_accepted() -> None:
    # croniter accepts a superset of robfig/cron's syntax; Go refuses these specs when it
    # registers them, so they run on Python pools only (the README says so)
    sunday = cron.parse("0 0 * * 7", default_zone=UTC).next(0)
    assert sunday == 3 * 86400  # 1970-01-04, a Sunday
    assert cron.parse("58-1 * * * * *", default_zone=UTC).next(57) == 58
    assert cron.parse("58-1 * * * * *", default_zone=UTC).next(59) == 60


def test_names_ranges_steps_and_or_rule() -> None:
    utc = UTC
    s = cron.parse("0 0 12 * JAN-mar mon,WED", default_zone=utc)
    t = s.next(int(dt.datetime(2024, 1, 1, 13, tzinfo=utc).timestamp()))
    assert dt.datetime.fromtimestamp(t, utc) == dt.datetime(2024, 1, 3, 12, tzinfo=utc)
    # day of month OR day of week when neither is a star: the 13th or any Friday
    s = cron.parse("0 0 0 13 * 5", default_zone=utc)
    t = s.next(int(dt.datetime(2023, 12, 9, tzinfo=utc).timestamp()))
    assert dt.datetime.fromtimestamp(t, utc).day == 13
    t = s.next(t)
    assert dt.datetime.fromtimestamp(t, utc).day == 15  # Friday Dec 15
    assert cron.parse("@hourly", default_zone=utc).next(0) == 3600
    assert cron.parse("@weekly", default_zone=utc).next(0) == 3 * 86400  # 1970-01-04, a Sunday


def test_every_is_aligned_to_the_epoch() -> None:
    s = cron.parse("@every 1m30s", default_zone=UTC)
    assert s.next(1000) == 1080 and s.next(1080) == 1170
    # every run, from any "now", makes slots on the same grid: they dedupe across hosts
    assert all(t % 90 == 0 for now in (1000, 1001, 1037) for t in cron.slots(s, now, HORIZON_SECONDS))
    assert cron.parse("@every 500ms", default_zone=UTC).next(10) == 11

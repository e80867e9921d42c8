"""Our key builders against the keys the Go library produced (vectors/keys.json)."""

from __future__ import annotations

import json

import pytest

from prefork_work.errors import InvalidJobArguments
from prefork_work.keys import Keys

GO_TO_OURS = {
    "redisKeyDead": lambda k, c: k.dead(),
    "redisKeyHeartbeat": lambda k, c: k.heartbeat(c["pool_id"]),
    "redisKeyJobs": lambda k, c: k.jobs(c["job_name"]),
    "redisKeyJobsConcurrency": lambda k, c: k.max_concurrency(c["job_name"]),
    "redisKeyJobsInProgress": lambda k, c: k.in_progress(c["job_name"], c["pool_id"]),
    "redisKeyJobsLock": lambda k, c: k.lock(c["job_name"]),
    "redisKeyJobsLockInfo": lambda k, c: k.lock_info(c["job_name"]),
    "redisKeyJobsPaused": lambda k, c: k.paused(c["job_name"]),
    "redisKeyJobsPrefix": lambda k, c: k.jobs_prefix(),
    "redisKeyKnownJobs": lambda k, c: k.known_jobs(),
    "redisKeyLastPeriodicEnqueue": lambda k, c: k.last_periodic_enqueue(),
    "redisKeyRetry": lambda k, c: k.retry(),
    "redisKeyScheduled": lambda k, c: k.scheduled(),
    "redisKeyUniqueJob(nil args)": lambda k, c: k.unique(c["job_name"], None),
    'redisKeyUniqueJob({"a":1,"b":"cool"})': lambda k, c: k.unique(c["job_name"], {"a": 1, "b": "cool"}),
    "redisKeyUniqueJob({})": lambda k, c: k.unique(c["job_name"], {}),
    "redisKeyWorkerObservation": lambda k, c: k.worker_observation(c["worker_id"]),
    "redisKeyWorkerPools": lambda k, c: k.worker_pools(),
    "redisNamespacePrefix": lambda k, c: k.prefix,
}


def load(vectors):
    return json.loads((vectors / "keys.json").read_text())


def test_every_go_key_builder_matches(vectors) -> None:
    data = load(vectors)
    ids = {"job_name": data["job_name"], "pool_id": data["pool_id"], "worker_id": data["worker_id"]}
    namespaces = set()
    for case in data["cases"]:
        keys = Keys(case["namespace"])
        namespaces.add(case["namespace"])
        assert set(case["keys"]) == set(GO_TO_OURS), "a Go key builder has no counterpart"
        for go_name, expected in case["keys"].items():
            assert GO_TO_OURS[go_name](keys, ids) == expected, (case["namespace"], go_name)
    assert {"work", "work:", "", "{app}"} <= namespaces


def test_unique_keys_match_go(vectors) -> None:
    data = json.loads((vectors / "unique_keys.json").read_text())
    checked = 0
    for case in data["args_cases"]:
        if case.get("error"):
            continue
        args = json.loads(case["args_json"])
        for namespace, expected in case["keys"].items():
            assert Keys(namespace).unique(case["job_name"], args) == expected, case["case"]
            checked += 1
    for case in data["by_key_cases"]:
        key_map = json.loads(case["key_map_json"])
        args = json.loads(case["args_json"])
        chosen = args if key_map is None else key_map
        if case.get("error"):
            with pytest.raises(InvalidJobArguments, match="unsupported value"):
                Keys(case["namespace"]).unique(case["job_name"], chosen)
            continue
        assert Keys(case["namespace"]).unique(case["job_name"], chosen) == case["unique_key"]
        checked += 1
    assert checked > 60


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("work:jobs:send_email:97c84119d13cb54119a38743:inprogress", ("send_email", "97c84119d13cb54119a38743")),
        ("work:jobs:send_email:lock", None),
        ("other:jobs:a:b:inprogress", None),
        ("work:jobs::p:inprogress", None),
    ],
)
def test_parse_in_progress(key: str, parsed) -> None:
    assert Keys("work").parse_in_progress(key) == parsed


def test_in_progress_pattern_escapes_glob_characters(r) -> None:
    keys = Keys("{app*}")
    r.lpush(keys.in_progress("a", "p1"), "x")
    r.lpush("{appX}:jobs:a:p2:inprogress", "x")
    found = {k.decode() for k in r.scan_iter(match=keys.in_progress_pattern())}
    assert found == {keys.in_progress("a", "p1")}


def test_in_progress_pattern_of_one_pool(r) -> None:
    keys = Keys("{app*}")
    for name, pool in (("a", "p1"), ("b:c", "p1"), ("a", "p2"), ("a", "xp1")):
        r.lpush(keys.in_progress(name, pool), "x")
    found = {k.decode() for k in r.scan_iter(match=keys.in_progress_pattern("p1"))}
    assert found == {keys.in_progress("a", "p1"), keys.in_progress("b:c", "p1")}
    assert keys.in_progress_pattern("p1") == "{app\\*}:jobs:*:p1:inprogress"

"""The chaos suite, short profile (benches/chaos.py has the scenarios and the long run:
``python -m benches.chaos``). Each scenario runs real servers against a Redis of its own,
injects its fault, and must account for every job: none lost, none run twice without a
kill to explain it, poison and hung jobs in the dead set and nothing else there.

``second-server`` is not here: the first server reclaims a dead server's pools only once
their heartbeat is 15 s stale, on a reaper pass every 10-13 s (no setting shortens either),
so it runs in the long profile only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benches/ is a package of the repository, not installed
    sys.path.insert(0, str(ROOT))

from benches import chaos  # noqa: E402


@pytest.mark.parametrize("name", chaos.SHORT_SCENARIOS)
def test_chaos_scenario(name: str, tmp_path: Path) -> None:
    result = chaos.run_scenario(name, chaos.SHORT, tmp_path, seed=7)
    print("\n" + chaos.table([result]))
    assert result.lost == 0, result.problems
    assert result.duplicated == 0, result.problems
    assert result.dead == result.expected_dead, result.problems
    assert not result.problems, result.problems


def test_accounting_tells_a_rerun_after_a_kill_from_a_duplicate(tmp_path: Path, r: redis.Redis) -> None:
    """The counts the scenarios assert on, from hand-made evidence: a job completed twice is
    a re-run only when the process of its earlier completion was killed."""
    h = chaos.Harness(tmp_path, chaos.SHORT, "unit")
    h.evidence = chaos.Evidence(r)
    h.healthy = {"once", "rerun", "twice", "lost", "dead"}
    h.disturbed = {100}
    h.evidence.ends = {"once": [(1, 0.0)], "rerun": [(100, 0.0), (2, 1.0)],
                       "twice": [(3, 0.0), (4, 1.0)]}
    r.zadd(chaos.K.dead(), {b'{"name":"work","id":"dead","t":1,"args":{}}': 1})
    r.rpush(chaos.K.jobs("work"), b'{"name":"work","id":"lost","t":1,"args":{}}')
    h._account(r)
    result = h.result
    assert (result.run_once, result.rerun_after_kill, result.duplicated, result.lost, result.dead) \
        == (1, 1, 1, 1, 1)
    assert "1 lost: queue: 1" in result.problems
    assert "1 healthy jobs in the dead set" in result.problems

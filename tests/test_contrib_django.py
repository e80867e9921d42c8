"""prefork_work.contrib.django on the real server, two children, the machine's PostgreSQL:
a minimal project (tests/django_project) whose job creates a model row."""

from __future__ import annotations

import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from app_server import AppServer
from conftest import wait_until

from prefork_work.enqueuer import Enqueuer

NS = "dj"
PROJECT = Path(__file__).resolve().parent / "django_project"


@pytest.fixture
def django_server(tmp_path, redis_url, r, postgres_dsn):
    import psycopg

    table = f"pw_django_{uuid.uuid4().hex[:12]}"
    env = {"DJANGO_SETTINGS_MODULE": "pwdjango.settings", "PW_PG_DSN": postgres_dsn,
           "PW_DJANGO_TABLE": table, "PW_APPLICATION": f"pw-dj-{uuid.uuid4().hex[:8]}"}
    server = AppServer(tmp_path, redis_url, None, module="djjobs", namespace=NS, env=env,
                       python_path=[str(PROJECT)])
    server.table = table  # type: ignore[attr-defined]
    yield server
    server.stop()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def rows(dsn: str, table: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(f"SELECT job_id, pid, backend FROM {table}").fetchall()


def test_django_children_use_their_own_connections(django_server, r, postgres_dsn) -> None:
    srv = django_server.start()
    enqueuer = Enqueuer(NS, r)
    kept = enqueuer.enqueue_many([("create_row", {"i": i}) for i in range(300)])
    per_job = enqueuer.enqueue_many([("create_row_per_job", {"i": i}) for i in range(20)])
    table = srv.table  # type: ignore[attr-defined]
    wait_until(lambda: len(rows(postgres_dsn, table)) >= 320, 30, 0.1, "320 rows")
    srv.stop()
    assert srv.process is not None and srv.process.returncode == 0

    found = {job_id: (pid, backend) for job_id, pid, backend in rows(postgres_dsn, table)}
    assert sorted(found) == sorted(j.id for j in kept + per_job)  # every row, once
    master = srv.events("master")[0]

    # CONN_MAX_AGE=60 ("default"): each child kept one connection of its own for its jobs
    by_child: dict[int, set[int]] = defaultdict(set)
    for job in kept:
        pid, backend = found[job.id]
        by_child[pid].add(backend)
    assert len(by_child) == 2, by_child
    assert all(len(b) == 1 for b in by_child.values()), by_child
    used = {next(iter(b)) for b in by_child.values()}
    assert len(used) == 2 and master["backend"] not in used  # nobody shares the master's

    # CONN_MAX_AGE=0 ("per_job"): closed after each job, every job on a fresh connection
    fresh = {found[job.id][1] for job in per_job}
    assert len(fresh) == 20 and master["per_job"] not in fresh

    # the children dropped the inherited connections without ending the master's sessions
    assert srv.events("shutdown")[0] == {**master, "event": "shutdown"}

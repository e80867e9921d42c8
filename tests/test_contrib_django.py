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
    servers: list[AppServer] = []

    def make(conn_max_age: int) -> AppServer:
        env = {"DJANGO_SETTINGS_MODULE": "pwdjango.settings", "PW_PG_DSN": postgres_dsn,
               "PW_DJANGO_TABLE": table, "PW_CONN_MAX_AGE": str(conn_max_age),
               "PW_APPLICATION": f"pw-dj-{uuid.uuid4().hex[:8]}"}
        server = AppServer(tmp_path, redis_url, None, module="djjobs", namespace=NS, env=env,
                           python_path=[str(PROJECT)])
        server.table = table  # type: ignore[attr-defined]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def rows(dsn: str, table: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(f"SELECT job_id, pid, backend FROM {table}").fetchall()


def run_jobs(srv: AppServer, r, dsn: str, count: int) -> list[tuple]:
    jobs = Enqueuer(NS, r).enqueue_many([("create_row", {"i": i}) for i in range(count)])
    table = srv.table  # type: ignore[attr-defined]
    wait_until(lambda: len(rows(dsn, table)) >= count, 30, 0.1, f"{count} rows")
    found = rows(dsn, table)
    assert sorted(row[0] for row in found) == sorted(j.id for j in jobs)
    srv.stop()
    assert srv.process is not None and srv.process.returncode == 0
    return found


def test_django_children_use_their_own_connections(django_server, r, postgres_dsn) -> None:
    srv = django_server(conn_max_age=60).start()
    found = run_jobs(srv, r, postgres_dsn, 300)
    by_child: dict[int, set[int]] = defaultdict(set)
    for _, pid, backend in found:
        by_child[pid].add(backend)
    assert len(by_child) == 2, by_child
    # CONN_MAX_AGE=60: each child kept one connection of its own for all its jobs
    assert all(len(b) == 1 for b in by_child.values()), by_child
    used = {next(iter(b)) for b in by_child.values()}
    master = srv.events("master")[0]["backend"]
    assert len(used) == 2 and master not in used  # nobody shares, nobody uses the master's
    # the children dropped the inherited connection without ending the master's session
    assert srv.events("shutdown")[0]["backend"] == master


def test_django_conn_max_age_zero_closes_after_each_job(django_server, r, postgres_dsn) -> None:
    srv = django_server(conn_max_age=0).start()
    found = run_jobs(srv, r, postgres_dsn, 20)
    # close_old_connections after each job: every job opened a fresh connection
    assert len({backend for _, _, backend in found}) == 20
    assert srv.events("master")[0]["backend"] not in {backend for _, _, backend in found}

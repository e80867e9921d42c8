"""prefork_work.contrib.django on the real server, two children, the machine's PostgreSQL:
a minimal project (tests/django_project) whose job creates a model row."""

from __future__ import annotations

import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from app_server import AppServer
from conftest import stop_all, wait_until

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
    stop_all([server])
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


def test_django_in_process_keeps_the_callers_connection_and_transaction(
        postgres_dsn, monkeypatch) -> None:
    """Inline (prefork_work.testing) inside a test's transaction: the job runs in it, and
    neither the child-start hook (no fork happened) nor close_old_connections closes it."""
    import sys

    monkeypatch.syspath_prepend(str(PROJECT))
    monkeypatch.setenv("PW_PG_DSN", postgres_dsn)
    monkeypatch.setenv("PW_DJANGO_TABLE", f"pw_django_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "pwdjango.settings")
    for name in [n for n in sys.modules if n.startswith("pwdjango")]:
        monkeypatch.delitem(sys.modules, name)
    from django.db import connections, transaction

    from prefork_work.app import App
    from prefork_work.contrib import django as pw_django
    from prefork_work.testing import InlineEnqueuer

    app = App()
    pw_django.install(app)
    from pwdjango.models import Row

    @app.job("create")
    def create(job) -> None:
        Row.objects.using("per_job").create(job_id=job.id, pid=0, backend=0)

    default, per_job = connections["default"], connections["per_job"]
    try:
        with default.schema_editor() as editor:
            editor.create_model(Row)
        app.run_hooks("child_start")  # same process as install(): nothing to drop
        raw = default.connection
        assert raw is not None and not raw.closed
        jobs = InlineEnqueuer(app)
        # CONN_MAX_AGE=0 ("per_job") would close after the job, but not inside a transaction
        with transaction.atomic(using="per_job"):
            job = jobs.enqueue("create", {})
            assert per_job.in_atomic_block and not per_job.needs_rollback
            assert Row.objects.using("per_job").filter(job_id=job.id).exists()
            transaction.set_rollback(True, using="per_job")
        assert not Row.objects.filter(job_id=job.id).exists()  # it was the caller's transaction
        # outside a transaction it is closed after the job
        jobs.enqueue("create", {})
        assert per_job.connection is None
        assert default.connection is raw  # CONN_MAX_AGE=60: kept, never dropped in-process
    finally:
        with default.schema_editor() as editor:
            editor.delete_model(Row)
        connections.close_all()

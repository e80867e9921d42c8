"""Database connections across fork, on the machine's PostgreSQL.

The job module opens a psycopg connection and an SQLAlchemy engine's pooled connection at
import, in the master. Its on_child_start hook replaces the one and disposes the other's
pool without closing it (the README's recipe). Each child must then talk to a backend of
its own, thousands of jobs from two children must run without a protocol error, the
master's own session must survive its children, and a child SIGKILLed inside a transaction
must leave no committed row lost and no backend idle in transaction.
"""

from __future__ import annotations

import textwrap
import uuid
from collections import defaultdict

import pytest
from app_server import AppServer
from conftest import stop_all, wait_until

from prefork_work.enqueuer import Enqueuer
from prefork_work.keys import Keys

NS = "pg"
K = Keys(NS)

APP = textwrap.dedent('''
    import json, os, time
    import psycopg
    from sqlalchemy import create_engine, text
    from prefork_work.app import App

    DSN, TABLE, EVIDENCE = os.environ["PG_DSN"], os.environ["PG_TABLE"], os.environ["EVIDENCE"]
    app = App()

    def record(event, **extra):
        with open(EVIDENCE, "a") as handle:
            handle.write(json.dumps(dict(event=event, pid=os.getpid(), **extra)) + "\\n")

    # opened at import, in the master: every child inherits these sockets
    conn = psycopg.connect(DSN, autocommit=True)
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(DSN))
    with engine.connect() as c:
        SA_MASTER = c.execute(text("SELECT pg_backend_pid()")).scalar()
    MASTER = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    record("master", backends=[MASTER, SA_MASTER])

    if os.environ.get("PG_REOPEN", "1") == "1":
        @app.on_child_start
        def reopen():
            global conn
            # a new connection of the child's own; the inherited one is dropped, never
            # closed: closing it would end the master's session on the shared socket
            conn = psycopg.connect(DSN, autocommit=True)
            engine.dispose(close=False)  # the pool forgets the master's connections

    @app.on_shutdown
    def master_session_survived():
        record("shutdown", backend=conn.execute("SELECT pg_backend_pid()").fetchone()[0])

    @app.job("write")
    def write(job):
        conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s, pg_backend_pid(), 'psycopg')",
                     (job.id, os.getpid()))

    @app.job("write_sa")
    def write_sa(job):
        with engine.begin() as c:
            c.execute(text(f"INSERT INTO {TABLE} VALUES (:id, :pid, pg_backend_pid(), 'sqlalchemy')"),
                      {"id": job.id, "pid": os.getpid()})

    @app.job("slow_tx")
    def slow_tx(job):
        marker = EVIDENCE + ".ran"
        with conn.transaction():
            conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s, pg_backend_pid(), 'slow')",
                         (job.id, os.getpid()))
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            record("in_tx", id=job.id, backend=backend)
            if not os.path.exists(marker):  # the first run waits to be killed; a rerun commits
                open(marker, "w").close()
                time.sleep(60)
''')


@pytest.fixture
def pg_server(tmp_path, redis_url, r, postgres_dsn, pg_table):
    servers: list[AppServer] = []
    application = f"pw-test-{uuid.uuid4().hex[:8]}"  # finds our backends in pg_stat_activity
    dsn = f"{postgres_dsn} application_name={application}"

    def make(reopen: bool = True, **options: object) -> AppServer:
        env = {"PG_DSN": dsn, "PG_TABLE": pg_table, "PG_REOPEN": "1" if reopen else "0"}
        server = AppServer(tmp_path, redis_url, APP, namespace=NS, env=env, **options)
        server.application = application  # type: ignore[attr-defined]
        servers.append(server)
        return server

    yield make
    stop_all(servers)


def query(dsn: str, sql: str, *params: object) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def test_children_have_their_own_backends_and_a_killed_one_leaves_no_open_transaction(
        pg_server, r, postgres_dsn, pg_table) -> None:
    srv = pg_server().start()
    enqueuer = Enqueuer(NS, r)

    def ids() -> list[str]:
        return [row[0] for row in query(postgres_dsn, f"SELECT job_id FROM {pg_table}")]

    # --- 2000 jobs from two children, half through psycopg, half through SQLAlchemy
    jobs = enqueuer.enqueue_many([("write" if i % 2 else "write_sa", {"i": i}) for i in range(2000)])
    wait_until(lambda: len(ids()) >= 2000, 60, 0.1, "2000 rows")
    rows = query(postgres_dsn, f"SELECT job_id, pid, backend, via FROM {pg_table}")
    assert sorted(row[0] for row in rows) == sorted(j.id for j in jobs)  # each exactly once
    assert r.zcard(K.retry()) == 0 and r.zcard(K.dead()) == 0  # no job failed

    backends: dict[tuple[int, str], set[int]] = defaultdict(set)
    for _, pid, backend, via in rows:
        backends[(pid, via)].add(backend)
    assert len({pid for pid, _ in backends}) == 2, backends  # both children worked
    assert all(len(b) == 1 for b in backends.values()), backends  # one session per child
    used = [next(iter(b)) for b in backends.values()]
    assert len(set(used)) == len(used) == 4, backends  # no two share one
    master = srv.events("master")[0]["backends"]
    assert not set(master) & set(used)  # none is the master's inherited session

    # --- SIGKILL of a child inside a transaction
    slow = enqueuer.enqueue("slow_tx", {})
    in_tx = wait_until(lambda: srv.events("in_tx"), 15, message="a job inside its transaction")[0]  # type: ignore[index]
    state = query(postgres_dsn, "SELECT state FROM pg_stat_activity WHERE pid = %s", in_tx["backend"])
    assert state == [("idle in transaction",)]  # the job sleeps inside its open transaction
    next(c for c in srv.children() if c.pid == in_tx["pid"]).kill()

    def open_transactions() -> list[tuple]:
        return query(postgres_dsn, "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s "
                     "AND state LIKE 'idle in transaction%%'", srv.application)  # type: ignore[attr-defined]

    # the kernel closed the child's socket: its backend rolled back and went away (a socket
    # shared with the master would have kept it open, idle in transaction, for ever)
    wait_until(lambda: not open_transactions(), 10, 0.05, "no backend idle in transaction")
    wait_until(lambda: not query(postgres_dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                 in_tx["backend"]), 10, 0.05, "the killed child's backend gone")
    # every committed row is still there; the killed transaction left nothing, and the job,
    # requeued, committed once when it ran again
    wait_until(lambda: len(ids()) == 2001, 20, 0.1, "the rerun's row")
    assert sorted(ids()) == sorted([j.id for j in jobs] + [slow.id])
    assert len(srv.events("in_tx")) == 2

    # --- the children never touched the master's session: it answers, as the same backend
    srv.stop()
    assert srv.process.returncode == 0
    assert srv.events("shutdown")[0]["backend"] == master[0]

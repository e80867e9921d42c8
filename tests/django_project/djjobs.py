"""The job module the Django test runs under the real server."""

import json
import os

from prefork_work.app import App
from prefork_work.contrib import django as pw_django

app = App()
pw_django.install(app)  # django.setup() in the master, before the models are imported

from django.db import connection, connections  # noqa: E402
from pwdjango.models import Row  # noqa: E402

EVIDENCE = os.environ["EVIDENCE"]


def record(event: str, **extra: object) -> None:
    with open(EVIDENCE, "a") as handle:
        handle.write(json.dumps(dict(event=event, pid=os.getpid(), **extra)) + "\n")


def backend_pid(alias: str = "default") -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@app.on_startup
def create_table() -> None:
    # the master's connection is open when the children fork: they must not share it
    with connection.schema_editor() as editor:
        editor.create_model(Row)
    record("master", backend=backend_pid(), per_job=backend_pid("per_job"))


@app.on_shutdown
def master_session_survived() -> None:
    record("shutdown", backend=backend_pid(), per_job=backend_pid("per_job"))


@app.job("create_row")
def create_row(job) -> None:
    Row.objects.create(job_id=job.id, pid=os.getpid(), backend=backend_pid())


@app.job("create_row_per_job")
def create_row_per_job(job) -> None:
    Row.objects.using("per_job").create(job_id=job.id, pid=os.getpid(),
                                        backend=backend_pid("per_job"))

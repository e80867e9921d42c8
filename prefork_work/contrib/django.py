"""Django in a prefork-work server (``pip install 'prefork-work[django]'``).

Call :func:`install` at the top of the job module, before it imports models::

    app = App()
    prefork_work.contrib.django.install(app)   # django.setup(), from DJANGO_SETTINGS_MODULE
    from myproject.models import Invoice

What it does, as celery's Django fix-up and Django's request cycle do:

* ``django.setup()`` in the master, at import, so models load once before the fork.
* After fork (``on_child_start``): the connections the master opened are dropped in the
  child *without a word to the database*: closing them the ordinary way would send
  PostgreSQL's goodbye through the socket the child shares with the master and end the
  master's session. Each child then opens its own connection on first use.
* Around each job (middleware): ``close_old_connections`` before and after, as Django does
  around each request, so ``CONN_MAX_AGE`` works (0 closes after every job; N keeps a
  connection for N seconds; a broken one is replaced before the next job).
* When a child stops cleanly (``on_child_exit``): its connections are closed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import django
from django.conf import settings
from django.db import connections

from prefork_work.app import App
from prefork_work.errors import ConfigError
from prefork_work.job import Job


def install(app: App, settings_module: str | None = None) -> None:
    """Set Django up now (in the master) and register the fork and per-job handling on ``app``.

    ``settings_module`` is a default for ``DJANGO_SETTINGS_MODULE``; the environment wins.
    """
    if settings_module:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module)
    if not os.environ.get("DJANGO_SETTINGS_MODULE") and not settings.configured:
        raise ConfigError("DJANGO_SETTINGS_MODULE is not set: prefork_work.contrib.django needs "
                          "the settings module of the project (or settings.configure())")
    django.setup()
    forked_from = os.getpid()

    def close_inherited_connections() -> None:
        if os.getpid() == forked_from:
            return  # an in-process worker: these are this process's own connections
        for conn in connections.all(initialized_only=True):
            forget_connection(conn)

    app.on_child_start(close_inherited_connections)
    app.middleware(close_old_connections_middleware)
    app.on_child_exit(connections.close_all)


def close_old_connections_middleware(job: Job, next: Callable[[], Any]) -> Any:
    """Django's ``close_old_connections`` before and after the job (as around a request)."""
    close_old_connections()
    try:
        return next()
    finally:
        close_old_connections()


def close_old_connections() -> None:
    """Close connections that are broken or older than ``CONN_MAX_AGE``.

    A connection inside an atomic block is left alone: only a job run inline inside the
    caller's transaction (a test with ``prefork_work.testing``) has one, and closing it
    would break the caller's transaction."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


def forget_connection(conn: Any) -> None:
    """Drop a Django connection inherited across fork without touching the database.

    The driver's close would send the protocol's terminate message through the socket the
    parent still uses; pointing the descriptor at /dev/null first makes that message go
    nowhere, and Django's own close then resets its state (the next query reconnects)."""
    raw = getattr(conn, "connection", None)
    fileno = getattr(raw, "fileno", None)
    if raw is None:
        return
    if fileno is None:  # not a socket (SQLite): an ordinary close is harmless
        conn.close()
        return
    try:
        target = fileno()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, target)
        finally:
            os.close(null)
    except (OSError, ValueError, TypeError):
        # cannot detach the socket: leave it open (a leak in this child) rather than end
        # the parent's session; Django reconnects on the next query
        conn.connection = None
        return
    with contextlib.suppress(Exception):  # the goodbye fails on /dev/null, as intended
        conn.close()
    conn.connection = None

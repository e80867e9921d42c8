"""The operator's web surface: JSON API, dashboard and /metrics as one ASGI app.

``create_app(client)`` returns the app (FastAPI); mount it in your own ASGI application, or
run it with ``prefork-work -c FILE web``. Needs the ``web`` extra: ``pip install
'prefork-work[web]'``.
"""

from prefork_work.web.app import create_app

__all__ = ["create_app"]

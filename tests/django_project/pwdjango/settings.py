"""A minimal Django project for the contrib.django tests, on the machine's PostgreSQL."""

import os

from psycopg.conninfo import conninfo_to_dict

_pg = conninfo_to_dict(os.environ["PW_PG_DSN"])

SECRET_KEY = "tests-only"
USE_TZ = True
INSTALLED_APPS = ["pwdjango"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
_database = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": _pg.get("dbname", "test"),
    "USER": _pg.get("user", ""),
    "HOST": _pg.get("host", ""),
    "PORT": _pg.get("port", ""),
    "OPTIONS": {"application_name": os.environ.get("PW_APPLICATION", "pw-django")},
}
# two aliases of one database: connections kept for a minute, and one per job
DATABASES = {
    "default": {**_database, "CONN_MAX_AGE": 60},
    "per_job": {**_database, "CONN_MAX_AGE": 0},
}

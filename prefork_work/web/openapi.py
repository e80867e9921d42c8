"""Print the web app's OpenAPI document: ``python -m prefork_work.web.openapi > docs/openapi.json``.

The app builds the document from its routes; docs/openapi.json is the checked-in copy a
test compares with what the app serves, so an API change is always a visible diff.
"""

from __future__ import annotations

import json
import sys

from prefork_work.client import Client
from prefork_work.connection import redis_from_url
from prefork_work.web.app import create_app


def main() -> None:
    # no connection is made: the document depends on the routes only
    app = create_app(Client("work", redis_from_url("redis://localhost:6379/0")))
    json.dump(app.openapi(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

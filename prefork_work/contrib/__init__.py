"""Integrations with what job modules live with, each behind its own extra:
``django`` (``prefork_work.contrib.django``), ``sentry`` (``.sentry``), ``otel`` (``.otel``).
Nothing here is imported by the core."""

"""structlog setup: JSON lines for journald, readable lines on a terminal.

Children bind pool_id (and the worker binds job_id/job_name where it logs about a job)
through contextvars, so every line from a child says which pool and job it is about.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    use_json = format == "json" or (format == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # one write() per line: print() writes the line and its newline separately, and two
        # children sharing stderr then glue their lines ("{...}{...}\n\n"), corrupting both
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )

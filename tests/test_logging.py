"""The server's log lines: one write() each, so processes sharing stderr never glue them."""

from __future__ import annotations

import json

import structlog

from prefork_work.logging import configure_logging


class WriteRecorder:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_a_log_line_and_its_newline_are_one_write() -> None:
    # print() wrote the line, then "\n": two children logging at once on a shared stderr left
    # '{...}{...}\n\n', and both JSON lines were lost to anything reading the log
    stream = WriteRecorder()
    configure_logging(format="auto", level="info", stream=stream)  # type: ignore[arg-type]
    structlog.get_logger("test").warning("master unresponsive; not fetching", pool_id="p1")
    assert len(stream.writes) == 1, stream.writes
    line = stream.writes[0]
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line)["event"] == "master unresponsive; not fetching"

"""The exception tree of prefork-work: one root, few leaves, raised at boundaries."""

from __future__ import annotations


class PreforkWorkError(Exception):
    """Root of every error raised by prefork-work."""


class ConfigError(PreforkWorkError):
    """The configuration (file, key or value) is invalid; the message names the key."""


class InvalidJobArguments(PreforkWorkError, ValueError):
    """A job name or its arguments cannot be enqueued (bad name, not JSON-serializable)."""


class MalformedJob(PreforkWorkError):
    """Bytes read from Redis are not a job gocraft/work could decode; carries the raw bytes."""

    def __init__(self, raw: bytes, reason: str) -> None:
        super().__init__(f"malformed job: {reason}")
        self.raw = raw
        self.reason = reason


class RedisUnavailable(PreforkWorkError):
    """Redis could not be reached or did not answer in time."""


class JobTimeout(PreforkWorkError):
    """Raised inside a job that ran past its soft timeout."""


class NotDeleted(PreforkWorkError):
    """A client delete matched no job (gocraft's ErrNotDeleted)."""

    def __init__(self) -> None:
        super().__init__("nothing deleted")


class NotRetried(PreforkWorkError):
    """A client retry requeued no job (gocraft's ErrNotRetried)."""

    def __init__(self) -> None:
        super().__init__("nothing retried")

"""The exception tree of prefork-work: one root, few leaves, raised at boundaries."""

from __future__ import annotations

from typing import Any

EXCERPT_CHARS = 64


def truncate(text: str, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of a message that may quote a payload."""
    return text if len(text) <= limit else text[:limit] + "..."


def describe(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A value for an error message: its type and at most ``limit`` characters of it.

    Errors about payloads end up in logs and in the dead set's ``err`` field: never the
    whole value (personal data, unbounded lines), and never a full ``repr`` of something
    huge or deeply nested (which costs memory or raises RecursionError itself).
    """
    kind = type(value).__name__
    if isinstance(value, str | bytes | bytearray):
        text = repr(value[:limit])
    elif isinstance(value, dict | list | tuple | set):
        return f"{kind} of {len(value)} items"
    elif isinstance(value, int | float | bool) or value is None:
        try:
            text = repr(value)
        except ValueError:  # an int past the str-conversion digit limit
            return f"{kind} of about {value.bit_length() * 3 // 10} digits"  # type: ignore[union-attr]
    else:
        return kind
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{kind} {text}"


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

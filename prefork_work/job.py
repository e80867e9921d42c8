"""The job: gocraft/work's JSON wire format as one type with two conversion functions.

``Job.from_json(raw)`` applies Go's decoding rules (shared/reference §2.3): field names
match case-insensitively, ``t``/``fails``/``failed_at`` must be JSON integers (or null),
``args`` an object or null, ``name``/``id`` strings; anything else is a ``MalformedJob``
carrying the raw bytes. ``job.to_json()`` writes the bytes Go's ``Job.serialize`` writes.
Fields a newer writer added survive a round trip in ``extra`` (Go itself would drop them).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefork_work.errors import InvalidJobArguments, MalformedJob, describe
from prefork_work.gojson import dumps

# ArgInt64 accepts whole floats within this bound: 100 less than 2^53 in gocraft (W36);
# kept as Go has it so both sides accept the same values.
MAX_SAFE_FLOAT_INT = 9007199254740892
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_FIELDS = ("name", "id", "t", "args", "unique", "unique_key", "fails", "err", "failed_at")
_INT_FIELDS = ("t", "fails", "failed_at")
_STR_FIELDS = ("name", "id", "unique_key", "err")


def make_identifier() -> str:
    """12 random bytes as 24 lowercase hex characters (job, pool and worker ids)."""
    return os.urandom(12).hex()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Go decodes every JSON number into a float64: one beyond its range is an error there
# ("1e999", a 400-digit integer), and here a value Go could not read back.
_FLOAT64_MAX = int(sys.float_info.max)
_FLOAT64_MAX_DIGITS = len(str(_FLOAT64_MAX))  # 309


def _parse_int(text: str) -> int | float:
    # Go decodes numbers as float64, so "-0" keeps its sign; Python's int("-0") would not.
    if text == "-0":
        return -0.0
    value = int(text)
    if len(text) >= _FLOAT64_MAX_DIGITS and abs(value) > _FLOAT64_MAX:
        raise ValueError(f"a number of {len(text.lstrip('-'))} digits is out of range")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float).decode
# Only a text holding "-0" or a run of digits wider than a float64 needs the (slower) int hook.
_LONG_NUMBER = re.compile(f"[0-9]{{{_FLOAT64_MAX_DIGITS}}}")
_decode_checked_ints = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int
).decode
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_lone_surrogates(value: Any) -> Any:
    # Go decodes a lone surrogate escape ("\ud800") as U+FFFD; json.loads keeps the lone
    # surrogate, a str that cannot even be encoded to UTF-8. (Valid pairs are already joined.)
    if type(value) is str:
        return _SURROGATE.sub("\ufffd", value)
    if type(value) is dict:
        return {_no_lone_surrogates(k): _no_lone_surrogates(v) for k, v in value.items()}
    if type(value) is list:
        return [_no_lone_surrogates(item) for item in value]
    return value


def _last_of_each_field(text: str) -> dict[str, Any]:
    """Go's decoder matches field names case-insensitively and lets each later key overwrite
    the field: re-read the (rare) job that spells one field twice, in document order."""
    objects: list[list[tuple[str, Any]]] = []

    def keep(items: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(items)  # innermost first: the job object itself comes last
        return dict(items)

    json.JSONDecoder(object_pairs_hook=keep, parse_constant=_reject_constant,
                     parse_float=_parse_float, parse_int=_parse_int).decode(text)
    values: dict[str, Any] = {}
    for key, value in objects[-1]:
        folded = key if key in _FIELDS else key.lower()
        if folded in _FIELDS:
            values[folded] = value
    return values


@dataclass(slots=True, eq=False)
class Job:
    """One job; field order is Go's. ``raw`` holds the exact bytes it was fetched as."""

    name: str
    id: str
    t: int
    args: dict[str, Any] | None = None
    unique: bool = False
    unique_key: str = ""
    fails: int = 0
    err: str = ""
    failed_at: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = field(default=None, repr=False)
    # per-run state, never serialized
    context: Any = field(default=None, repr=False)
    arg_error: InvalidJobArguments | None = field(default=None, repr=False)
    _checkin_hook: Callable[[Job, str], None] | None = field(default=None, repr=False)

    # --- wire format ----------------------------------------------------------------------
    @classmethod
    def new(cls, name: str, args: dict[str, Any] | None = None, now: float | None = None) -> Job:
        import time

        return cls(name=name, id=make_identifier(), t=int(time.time() if now is None else now), args=args)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Job:
        """Decode a job; every failure, whatever raised it, is a MalformedJob.

        Bytes from Redis are untrusted: nesting deeper than the recursion limit (Go accepts
        10,000 levels) raises RecursionError, a huge document MemoryError; none of that may
        escape to a worker or a master loop as anything but a job to dead-letter.
        """
        raw_bytes = b""
        try:  # one try around it all: free in Python 3.11 unless something raises
            raw_bytes = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
            text = raw_bytes.decode("utf-8", "replace")
            if "-0" in text or (len(text) > _FLOAT64_MAX_DIGITS and _LONG_NUMBER.search(text)):
                data = _decode_checked_ints(text)
            else:
                data = _decode(text)
            if "\\u" in text and _SURROGATE_ESCAPE.search(text):  # the common job has no escape
                data = _no_lone_surrogates(data)
            if not isinstance(data, dict):
                raise MalformedJob(raw_bytes, f"a job must be a JSON object, got {type(data).__name__}")
            values: dict[str, Any] = {}
            extra: dict[str, Any] = {}
            for key, value in data.items():
                folded = key if key in _FIELDS else key.lower()
                if folded not in _FIELDS:
                    extra[key] = value
                elif folded in values:  # "t" and "T" both: Go keeps the one written last
                    values.update(_last_of_each_field(text))
                    break
                else:
                    values[folded] = value
            for name in _INT_FIELDS:
                value = values.get(name)
                if value is None:
                    values[name] = 0
                elif type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
                    raise MalformedJob(raw_bytes, f"field {name!r} must be an integer, got {describe(value)}")
            for name in _STR_FIELDS:
                value = values.get(name)
                if value is None:
                    values[name] = ""
                elif type(value) is not str:
                    raise MalformedJob(raw_bytes, f"field {name!r} must be a string, got {describe(value)}")
            args = values.get("args")
            if args is not None and type(args) is not dict:
                raise MalformedJob(raw_bytes, f"field 'args' must be an object or null, got {describe(args)}")
            unique = values.get("unique")
            if unique is None:
                unique = False
            elif type(unique) is not bool:
                raise MalformedJob(raw_bytes, f"field 'unique' must be a bool, got {describe(unique)}")
            return cls(
                name=values["name"],
                id=values["id"],
                t=values["t"],
                args=args,
                unique=unique,
                unique_key=values["unique_key"],
                fails=values["fails"],
                err=values["err"],
                failed_at=values["failed_at"],
                extra=extra,
                raw=raw_bytes,
            )
        except MalformedJob:
            raise
        except RecursionError:
            raise MalformedJob(raw_bytes, "invalid JSON: nested too deeply") from None
        except MemoryError:
            raise MalformedJob(raw_bytes, f"too large to decode ({len(raw_bytes)} bytes)") from None
        except ValueError as err:  # json.JSONDecodeError, numbers out of range
            raise MalformedJob(raw_bytes, f"invalid JSON: {str(err)[:200]}") from None
        except Exception as err:  # anything else a hostile payload finds
            raise MalformedJob(raw_bytes, f"cannot decode: {type(err).__name__}") from None

    def to_json(self) -> bytes:
        """Go's ``Job.serialize`` bytes (omitempty fields left out, compact, Go escaping)."""
        parts = ["{"]
        if self.name:
            parts.append('"name":' + dumps(self.name) + ",")
        parts.append('"id":' + dumps(self.id))
        parts.append(',"t":' + _int(self.t, "t"))
        parts.append(',"args":' + ("null" if self.args is None else dumps(self.args)))
        if self.unique:
            parts.append(',"unique":true')
        if self.unique_key:
            parts.append(',"unique_key":' + dumps(self.unique_key))
        if self.fails:
            parts.append(',"fails":' + _int(self.fails, "fails"))
        if self.err:
            parts.append(',"err":' + dumps(self.err))
        if self.failed_at:
            parts.append(',"failed_at":' + _int(self.failed_at, "failed_at"))
        for key, value in self.extra.items():
            parts.append("," + dumps(key) + ":" + dumps(value))
        parts.append("}")
        return "".join(parts).encode("utf-8")

    # --- arguments (gocraft's ArgString, ArgInt64, ArgFloat64, ArgBool) ------------------------
    def arg_string(self, key: str) -> str:
        value = self._arg(key)
        if type(value) is str:
            return value
        self._arg_problem(key, "string", value)
        return ""

    def arg_int64(self, key: str) -> int:
        value = self._arg(key)
        if type(value) is int and INT64_MIN <= value <= INT64_MAX:
            return value
        if type(value) is float and value.is_integer() and abs(value) <= MAX_SAFE_FLOAT_INT:
            return int(value)
        self._arg_problem(key, "int64", value)
        return 0

    def arg_float64(self, key: str) -> float:
        value = self._arg(key)
        if type(value) in (int, float):
            return float(value)
        self._arg_problem(key, "float64", value)
        return 0.0

    def arg_bool(self, key: str) -> bool:
        value = self._arg(key)
        if type(value) is bool:
            return value
        self._arg_problem(key, "bool", value)
        return False

    def checkin(self, message: str) -> None:
        """Record progress; shown in the job's observation (the web UI's busy workers)."""
        if self._checkin_hook is not None:
            self._checkin_hook(self, message)

    _MISSING = object()

    def _arg(self, key: str) -> Any:
        return (self.args or {}).get(key, Job._MISSING)

    def _arg_problem(self, key: str, wanted: str, value: Any) -> None:
        if value is Job._MISSING:
            self.arg_error = InvalidJobArguments(
                f"looking for {wanted} in {key!r} but it is missing"
            )
        else:
            self.arg_error = InvalidJobArguments(
                f"looking for {wanted} in {key!r} but got {describe(value)}"
            )


def _int(value: int, field_name: str) -> str:
    if type(value) is not int:
        raise InvalidJobArguments(f"field {field_name!r} must be an integer, got {describe(value)}")
    return int.__repr__(value)

"""JSON text byte-identical to Go 1.19's ``encoding/json`` for JSON-like Python values.

Byte identity matters where Go and Python must agree on bytes (shared/reference §2.4):
job payloads removed by exact value, unique keys, periodic job members. Go's rules that
Python's ``json`` does not follow:

- ``<``, ``>``, ``&``, U+2028 and U+2029 are escaped (``\\u003c`` ...);
- backspace and form feed are ``\\u0008`` / ``\\u000c`` (not ``\\b`` / ``\\f``);
- invalid UTF-8 (a lone surrogate in a Python str) becomes U+FFFD;
- floats are written in the shortest round-trip form, in plain notation for
  1e-6 <= |x| < 1e21 with no ``.0`` (``1.0`` is ``1``), otherwise ``1e-7`` / ``1e+21``;
- map keys are sorted by the bytes of their UTF-8 encoding.

``dumps`` takes a C-speed path through ``json.dumps`` when the value holds no floats and no
strings needing Go-specific escapes, and an exact pure-Python encoder otherwise.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

from prefork_work.errors import InvalidJobArguments, describe, truncate

_c_dumps = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
).encode
_encode_string = json.encoder.encode_basestring

# Characters the C path cannot write as Go does: \b, \f and lone surrogates.
_NEEDS_SLOW = re.compile("[\x08\x0c\ud800-\udfff]")
_HTML = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_SURROGATES = re.compile("[\ud800-\udfff]")


def dumps(value: Any) -> str:
    """Go's ``json.Marshal`` of ``value``; InvalidJobArguments for what Go cannot encode.

    Every failure is an InvalidJobArguments, whatever raised it: nesting past the recursion
    limit (RecursionError), a cycle (ValueError), a value too large (MemoryError,
    OverflowError), a broken ``__str__`` of a key... Callers (enqueue, re-encoding a failed
    job, observations) then have one error to handle.
    """
    try:  # free in Python 3.11 unless something raises
        if _plain(value):
            text = _c_dumps(value)
        else:
            parts: list[str] = []
            _encode(value, parts, "args")
            text = "".join(parts)
        if "<" in text or ">" in text or "&" in text or "\u2028" in text or "\u2029" in text:
            # Only strings can hold these characters, and escaping never produces them, so a
            # translation of the finished text is exact.
            text = text.translate(_HTML)
        return text
    except InvalidJobArguments:
        raise
    except RecursionError:
        raise InvalidJobArguments("value nested too deeply to encode") from None
    except ValueError as err:
        if "ircular" in str(err):
            raise InvalidJobArguments("value contains a reference to itself") from None
        raise InvalidJobArguments(f"cannot encode: {type(err).__name__}") from None
    except Exception as err:
        raise InvalidJobArguments(f"cannot encode: {type(err).__name__}") from None


def dumps_stream(value: Any) -> str:
    """What Go's ``json.Encoder.Encode`` writes: ``dumps`` plus a newline (unique keys)."""
    return dumps(value) + "\n"


def _plain(value: Any) -> bool:
    """True when json.dumps writes Go's bytes (before the HTML translation)."""
    kind = type(value)
    if kind is str:
        return not _NEEDS_SLOW.search(value)
    if kind is int or kind is bool or value is None:
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or _NEEDS_SLOW.search(key) or not _plain(item):
                return False
        # sort_keys sorts by code point; Go by UTF-8 bytes: the same for valid scalars.
        return True
    if kind is list or kind is tuple:
        return all(_plain(item) for item in value)
    return False  # floats, subclasses and anything else take the exact path


def _encode(value: Any, out: list[str], path: str) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(format_float(value, path))
    elif isinstance(value, dict):
        items = []
        for key in value:
            if not isinstance(key, str):
                raise InvalidJobArguments(f"{_short(path)}: map keys must be strings, got {describe(key)}")
            items.append((_scalar_bytes(key), key))
        items.sort()
        out.append("{")
        for i, (_, key) in enumerate(items):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out, f"{path}.{key}")
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out, f"{path}[{i}]")
        out.append("]")
    else:
        raise InvalidJobArguments(
            f"{_short(path)}: {type(value).__name__} is not JSON-serializable "
            "(use str, int, float, bool, None, list or dict)"
        )


def _short(path: str) -> str:
    # a path is made of the caller's keys: bounded in messages like any other value
    return truncate(path)


def _scalar_bytes(text: str) -> bytes:
    return _SURROGATES.sub("\ufffd", text).encode("utf-8")


def _string(text: str) -> str:
    if _NEEDS_SLOW.search(text):
        text = _SURROGATES.sub("\ufffd", text)
        encoded: str = _encode_string(text)
        if "\x08" in text or "\x0c" in text:
            # encode_basestring wrote \b and \f; re-escape character by character so an
            # escaped backslash followed by "b" is never mistaken for one.
            return '"' + "".join(_go_char(c) for c in text) + '"'
        return encoded
    result: str = _encode_string(text)
    return result


def _go_char(char: str) -> str:
    if char == "\x08":
        return "\\u0008"
    if char == "\x0c":
        return "\\u000c"
    escaped: str = _encode_string(char)
    return escaped[1:-1]


def format_float(value: float, path: str = "value") -> str:
    """Go's float64 encoding: shortest round-trip digits, 'f' or 'e' format by magnitude."""
    if math.isnan(value) or math.isinf(value):
        shown = "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
        raise InvalidJobArguments(f"{_short(path)}: json: unsupported value: {shown}")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    # value = 0.<text> * 10^point
    point = len(digits) + int(exponent)
    prefix = "-" if sign else ""
    magnitude = abs(value)
    if 1e-6 <= magnitude < 1e21:
        if point <= 0:
            return prefix + "0." + "0" * -point + text
        if point >= len(text):
            return prefix + text + "0" * (point - len(text))
        return prefix + text[:point] + "." + text[point:]
    exp = point - 1
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    exp_text = f"{abs(exp):02d}" if exp >= 0 else str(abs(exp))
    return f"{prefix}{mantissa}e{'+' if exp >= 0 else '-'}{exp_text}"

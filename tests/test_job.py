"""Job JSON against the bytes of the real Go library (shared/reference/vectors/job_json.json).

Every raw byte string in the vector file is a JSON string holding exactly those bytes as
UTF-8 (vectors/README.md); ``args_json`` is parsed with Python's ``json.loads`` (``1.0`` is a
float, ``1`` an int, NaN/Infinity allowed, ``null`` = no args).
"""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any

import pytest
from conftest import VECTORS

from prefork_work.errors import InvalidJobArguments, MalformedJob
from prefork_work.job import MAX_SAFE_FLOAT_INT, Job

DATA = json.loads((VECTORS / "job_json.json").read_text(encoding="utf-8"))
FIXED = DATA["fixed"]
ARGS_CASES = {c["case"]: c for c in DATA["args_cases"]}
FIELD_CASES = {c["case"]: c for c in DATA["field_cases"]}
DECODE_CASES = {c["case"]: c for c in DATA["decode_cases"]}
FIELDS = ("name", "id", "t", "unique", "unique_key", "fails", "err", "failed_at")


def fixed_job(args: dict[str, Any] | None) -> Job:
    return Job(name=FIXED["name"], id=FIXED["id"], t=FIXED["t"], args=args)


def as_go_reads_it(raw: bytes | str) -> Any:
    """The value a Go reader gets: every number a float64 (map[string]interface{})."""
    return json.loads(raw, parse_int=float)


def fields_of(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in FIELDS}


def test_vector_file_has_what_the_tests_expect() -> None:
    assert len(ARGS_CASES) >= 25 and len(FIELD_CASES) >= 20 and len(DECODE_CASES) >= 20
    assert FIXED == {"id": "5f2b9e4a1c7d3e8f90a1b2c3", "name": "send_email", "t": 1700000000}


# --- serialization: Job.serialize -------------------------------------------------------------
@pytest.mark.parametrize("case", ARGS_CASES.values(), ids=list(ARGS_CASES))
def test_args_case_bytes_match_go(case: dict[str, Any]) -> None:
    job = fixed_job(json.loads(case["args_json"]))
    if case.get("error"):
        assert case["job_bytes"] is None
        with pytest.raises(InvalidJobArguments, match=re.escape(case["error"])):
            job.to_json()
        return
    assert job.to_json() == case["job_bytes"].encode("utf-8")


@pytest.mark.parametrize(
    "case", [c for c in ARGS_CASES.values() if not c.get("error")],
    ids=[n for n, c in ARGS_CASES.items() if not c.get("error")],
)
def test_args_case_decode_and_reserialize(case: dict[str, Any]) -> None:
    go_bytes = case["job_bytes"].encode("utf-8")
    job = Job.from_json(go_bytes)
    assert fields_of(job) == fields_of(fixed_job(None)) | {"name": FIXED["name"]}
    assert job.raw == go_bytes
    ours = job.to_json()
    if case["reserialized"] == case["job_bytes"]:
        assert ours == go_bytes  # Go's bytes are a fixed point of decode + encode
        return
    # Deliberate difference (README "How it differs", W26): Go decodes args into float64,
    # so its retry/dead copies round integers above 2^53 (9007199254740993 -> ...992). We
    # keep Python ints and write back exactly what the producer wrote. A Go reader still
    # decodes our bytes to the very float64 values it would have got from its own.
    assert case["case"] in ("ints", "uint64_range_ints")
    assert ours == go_bytes
    assert as_go_reads_it(ours) == as_go_reads_it(case["reserialized"])


@pytest.mark.parametrize("case", FIELD_CASES.values(), ids=list(FIELD_CASES))
def test_field_case_bytes_match_go(case: dict[str, Any]) -> None:
    spec = dict(case["job"])
    args = json.loads(spec.pop("args_json"))
    job = Job(args=args, **spec)
    go_bytes = case["job_bytes"].encode("utf-8")
    assert job.to_json() == go_bytes
    back = Job.from_json(go_bytes)
    assert fields_of(back) == fields_of(job)
    assert back.args == args and back.extra == {}


def test_via_failed_cases_are_what_our_failure_path_writes() -> None:
    # Go's Job.failed(err): fails+1, err, failed_at = now; the worker does the same (_failed).
    job = Job.from_json(FIELD_CASES["base"]["job_bytes"])
    for case_name, err, now in [("via_failed_once", "first failure", 1700000030),
                                ("via_failed_twice", "second failure", 1700000090)]:
        job.fails += 1
        job.err = err
        job.failed_at = now
        assert job.to_json() == FIELD_CASES[case_name]["job_bytes"].encode("utf-8")


# --- decoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", DECODE_CASES.values(), ids=list(DECODE_CASES))
def test_decode_case_matches_go(case: dict[str, Any]) -> None:
    raw = case["input"].encode("utf-8")
    if case.get("error"):
        assert case["reserialized"] is None
        with pytest.raises(MalformedJob) as caught:
            Job.from_json(raw)
        assert caught.value.raw == raw
        go_field = re.search(r"Go struct field Job\.(\w+) ", case["error"]).group(1)
        assert f"'{go_field}'" in str(caught.value)  # names the field Go complains about
        return
    job = Job.from_json(raw)
    go_bytes = case["reserialized"].encode("utf-8")
    go_job = Job.from_json(go_bytes)  # Go's canonical bytes hold the fields Go decoded
    assert fields_of(job) == fields_of(go_job)
    assert as_go_reads_it(json.dumps(job.args)) == as_go_reads_it(json.dumps(go_job.args))
    if case["case"] == "unknown_fields_dropped":
        # Deliberate (job.py, ARCHITECTURE.md): fields a newer writer added survive a round
        # trip in ``extra``; Go drops them. Without them the bytes are Go's.
        assert job.extra == {"extra": "x", "priority": 5}
        job.extra = {}
        assert job.to_json() == go_bytes
    elif case["case"] == "big_ints_lose_precision":
        # Deliberate (W26): ints keep their exact value; Go's float64 rounds them.
        assert job.args["a"] == 12345678901234567890 and job.args["b"] == 9007199254740993
        assert job.to_json() != go_bytes
        assert as_go_reads_it(job.to_json()) == as_go_reads_it(go_bytes)
    else:
        assert job.extra == {}
        assert job.to_json() == go_bytes


def test_decode_details() -> None:
    # field names fold case as in Go; null for an integer field is 0 (vectors: t_null_ok)
    job = Job.from_json(DECODE_CASES["case_insensitive_fields"]["input"])
    assert (job.name, job.id, job.t, job.args) == ("send_email", FIXED["id"], FIXED["t"], {"a": 1})
    assert Job.from_json(DECODE_CASES["t_null_ok"]["input"]).t == 0
    # a lone surrogate escape is U+FFFD after decoding, as in Go: a handler gets a str that
    # can be encoded, and the bytes written back are Go's
    job = Job.from_json(DECODE_CASES["lone_surrogate_escape"]["input"])
    assert job.args == {"s": "\ufffdx"}
    job.arg_string("s").encode("utf-8")
    # missing args are nil, not {}; missing name is "" and omitted again
    assert Job.from_json(DECODE_CASES["missing_args"]["input"]).args is None
    assert Job.from_json(DECODE_CASES["missing_name"]["input"]).name == ""


# --- the Go rules, spelled out --------------------------------------------------------------
def test_go_encoding_rules() -> None:
    def args_bytes(args: dict[str, Any] | None) -> bytes:
        raw = fixed_job(args).to_json()
        prefix = b'{"name":"send_email","id":"5f2b9e4a1c7d3e8f90a1b2c3","t":1700000000,"args":'
        assert raw.startswith(prefix) and raw.endswith(b"}")
        return raw[len(prefix):-1]

    assert args_bytes({"s": "<a href='x'>&</a>"}) == (
        b'{"s":"\\u003ca href=\'x\'\\u003e\\u0026\\u003c/a\\u003e"}'
    )
    assert args_bytes({"s": "a\u2028b\u2029c"}) == b'{"s":"a\\u2028b\\u2029c"}'
    assert args_bytes({"s": "\b\f\\b"}) == b'{"s":"\\u0008\\u000c\\\\b"}'  # Go 1.19
    # a form feed alone (no backspace to force the slow path), in a value and in a key, on
    # the C path (no float) and on the exact path (a float beside it)
    assert args_bytes({"s": "a\fb"}) == b'{"s":"a\\u000cb"}'
    assert args_bytes({"s": "a\fb", "f": 1.5}) == b'{"f":1.5,"s":"a\\u000cb"}'
    assert args_bytes({"k\f": 1}) == b'{"k\\u000c":1}'
    assert args_bytes({"k\f": 1.5}) == b'{"k\\u000c":1.5}'
    assert args_bytes({"s": "é/😀"}) == '{"s":"é/😀"}'.encode()
    assert args_bytes({"i": 1, "f": 1.0, "g": 1.5, "big": 1e21, "small": 1e-7, "z": -0.0}) == (
        b'{"big":1e+21,"f":1,"g":1.5,"i":1,"small":1e-7,"z":-0}'
    )
    assert args_bytes({"i": 2**63 - 1, "j": 2**64 - 1}) == (
        b'{"i":9223372036854775807,"j":18446744073709551615}'
    )
    assert args_bytes({"b": 1, "a": {"d": 1, "c": 2}}) == b'{"a":{"c":2,"d":1},"b":1}'
    assert args_bytes(None) == b"null" and args_bytes({}) == b"{}"
    # omitempty: unique false, empty unique_key/err, zero fails/failed_at and an empty name
    # are left out; id, t and args are always written
    assert Job(name="", id="", t=0).to_json() == b'{"id":"","t":0,"args":null}'
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(InvalidJobArguments, match="unsupported value"):
            fixed_job({"x": [value]}).to_json()


# --- typed argument accessors (gocraft's ArgString/ArgInt64/ArgFloat64/ArgBool) ------------
def go_job(case: str) -> Job:
    """A job decoded from the bytes Go wrote for an args case."""
    return Job.from_json(ARGS_CASES[case]["job_bytes"])


def test_arg_accessors_on_go_bytes() -> None:
    job = go_job("simple")
    assert job.arg_int64("a") == 1 and job.arg_string("b") == "cool"
    assert job.arg_float64("a") == 1.0 and job.arg_error is None

    job = go_job("floats_basic")
    assert job.arg_int64("f1") == 1 and job.arg_int64("big_int_like") == 100
    assert job.arg_float64("third") == 0.3333333333333333 and job.arg_float64("neg") == -2.5
    assert job.arg_float64("f15") == 1.5 and job.arg_error is None
    assert job.arg_int64("f15") == 0 and job.arg_error is not None  # not whole

    job = go_job("ints")
    assert job.arg_int64("neg") == -42 and job.arg_int64("zero") == 0
    assert job.arg_float64("one") == 1.0 and job.arg_error is None

    job = go_job("uint64_range_ints")
    assert job.arg_int64("u64max") == 0 and job.arg_error is not None  # beyond int64: Go too
    assert job.arg_float64("u64max") == 18446744073709551615.0

    job = go_job("negative_zero")
    nz = job.arg_float64("nz")
    assert nz == 0 and math.copysign(1.0, nz) == -1.0
    assert job.arg_int64("nz") == 0 and job.arg_error is None

    job = go_job("bools_and_null")
    assert job.arg_bool("t") is True and job.arg_bool("f") is False and job.arg_error is None
    assert job.arg_bool("n") is False and "bool" in str(job.arg_error)
    assert job.arg_int64("t") == 0 and job.arg_float64("t") == 0.0  # a bool is not a number

    job = go_job("html_chars")
    assert job.arg_string("s") == "<script>alert('x') && 1 > 0</script>"
    job = go_job("unicode")
    assert job.arg_string("ключ") == "значение" and job.arg_error is None
    job = go_job("numeric_looking_strings")
    assert job.arg_string("s") == "1.0" and job.arg_float64("s") == 0.0
    assert job.arg_error is not None

    job = go_job("nested")
    assert job.arg_string("user") == "" and job.arg_error is not None
    job = go_job("nil_args")
    assert job.arg_string("a") == "" and "missing" in str(job.arg_error)


def test_arg_int64_keeps_exact_ints_where_go_has_float64() -> None:
    # Deliberate (W26): Go decodes every number as float64, so its ArgInt64 refuses whole
    # numbers beyond +-9007199254740892 read back from JSON. We decode integer literals
    # as exact ints and return any value within int64 unchanged.
    job = go_job("ints")
    assert job.arg_int64("p53p1") == 9007199254740993
    assert job.arg_int64("max_i64") == 2**63 - 1 and job.arg_int64("min_i64") == -(2**63)
    assert job.arg_error is None
    job = go_job("floats_exponent")
    assert job.arg_int64("e16") == 10**16  # written by Go as the literal 10000000000000000
    assert job.arg_int64("e21") == 0 and job.arg_error is not None  # 1e+21: a float, too big


def test_arg_accessors_port_of_go_job_test() -> None:
    job = Job(name="j", id="i", t=1, args={
        "str1": "bar", "int1": 77, "float1": 3.14, "bool1": True, "n": None,
        "safe": MAX_SAFE_FLOAT_INT, "safe_f": float(MAX_SAFE_FLOAT_INT),
        "neg_safe_f": -float(MAX_SAFE_FLOAT_INT),
        "max_f": 1.7976931348623157e308, "min_f": 5e-324,
    })
    assert job.arg_string("str1") == "bar"
    assert job.arg_int64("int1") == 77
    assert job.arg_float64("float1") == 3.14 and job.arg_float64("int1") == 77.0
    assert job.arg_bool("bool1") is True
    assert job.arg_int64("safe") == MAX_SAFE_FLOAT_INT == 9007199254740892
    assert job.arg_int64("safe_f") == MAX_SAFE_FLOAT_INT
    assert job.arg_int64("neg_safe_f") == -MAX_SAFE_FLOAT_INT
    assert job.arg_float64("max_f") == 1.7976931348623157e308
    assert job.arg_float64("min_f") == 5e-324
    assert job.arg_error is None

    for value in (1.1, 1.9e16, -1.9e16, 2**63, float(MAX_SAFE_FLOAT_INT + 2), "1", True, None):
        job = Job(name="j", id="i", t=1, args={"x": value})
        assert job.arg_int64("x") == 0, value
        assert job.arg_error is not None, value
    for value in ("3.14", True, None, [1]):
        job = Job(name="j", id="i", t=1, args={"x": value})
        assert job.arg_float64("x") == 0.0, value
        assert job.arg_error is not None, value

    # ArgError keeps the most recent error; later successful calls do not clear it
    job = Job(name="j", id="i", t=1, args={"s": "x", "i": 1})
    assert job.arg_string("missing") == ""
    first = job.arg_error
    assert first is not None and "missing" in str(first)
    assert job.arg_int64("s") == 0
    second = job.arg_error
    assert second is not first and "int64" in str(second)
    assert job.arg_string("s") == "x" and job.arg_int64("i") == 1
    assert job.arg_error is second


@pytest.mark.parametrize(("raw", "t"), [
    (b'{"id":"a","t":1,"T":2}', 2),
    (b'{"id":"a","T":2,"t":1}', 1),
    (b'{"id":"a","t":1,"T":2,"t":3}', 3),
])
def test_a_field_spelled_twice_keeps_the_last_as_go_does(raw: bytes, t: int) -> None:
    # Go matches names case-insensitively and every later key overwrites the field
    job = Job.from_json(raw)
    assert job.t == t and job.id == "a" and job.extra == {}


# --- hostile payloads (issue 7 item 1, issue 12 item 4) ---------------------------------------
def deep(levels: int, opening: bytes = b"[", closing: bytes = b"]") -> bytes:
    return b'{"name":"wat","id":"x","t":1,"args":{"a":' + opening * levels + closing * levels + b"}}"


@pytest.mark.parametrize("raw", [
    deep(1_000), deep(5_000), deep(100_000), deep(3_000, b'{"a":', b"}"),
    b"[" * 100_000, b'{"name":"wat","args":{"a":' + b"[" * 100_000,  # and truncated
    deep(1_000).replace(b'"a":', b'"\\ud800":', 1),  # deep and a lone surrogate: recursive fix-up
])
def test_deep_nesting_is_a_malformed_job_not_a_recursion_error(raw: bytes) -> None:
    with pytest.raises(MalformedJob) as caught:
        Job.from_json(raw)
    assert caught.value.raw == raw


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"name":"wat","t":1e999}', "out of range"),
    (b'{"name":"wat","args":{"x":-1e400}}', "out of range"),
    (b'{"name":"wat","args":{"x":' + b"9" * 400 + b"}}", "out of range"),
    (b'{"name":"wat","args":{"x":' + b"9" * 5000 + b"}}", "invalid JSON"),
    (b'{"name":"wat","t":' + b"1" * 20 + b"}", "must be an integer"),
])
def test_numbers_go_cannot_decode_are_malformed(raw: bytes, reason: str) -> None:
    # Go decodes every number into a float64: these fail there, and here could not be
    # written back (inf) or read by a Go client.
    with pytest.raises(MalformedJob, match=reason):
        Job.from_json(raw)


def test_numbers_within_float64_range_still_decode() -> None:
    big = 10**300
    job = Job.from_json(b'{"name":"wat","id":"x","t":1,"args":{"x":%d,"y":1e300,"z":-0}}' % big)
    assert job.args == {"x": big, "y": 1e300, "z": -0.0}


def test_from_json_raises_only_malformed_job_on_random_input() -> None:
    rng = random.Random(7)
    valid = b'{"name":"wat","id":"abc","t":1700000000,"args":{"a":[1,2.5,"x",null,true]},"fails":1}'
    for _ in range(3000):
        kind = rng.randrange(5)
        if kind == 4:
            depth = rng.randrange(500, 5000)
            raw = b'{"name":"wat","args":{"a":' + rng.choice([b"[", b'{"a":']) * depth
            raw += b"]" * rng.randrange(depth + 1)
        elif kind == 0:
            raw = rng.randbytes(rng.randrange(64))
        elif kind == 1:
            raw = valid[: rng.randrange(len(valid))]
        elif kind == 2:
            mutated = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            raw = bytes(mutated)
        else:
            raw = valid.replace(b"1700000000", rng.choice(
                [b"1e999", b'"1"', b"[]", b"{}", b"1.5", b"-1", b"9" * 400, b"true"]))
        try:
            Job.from_json(raw)
        except MalformedJob:
            pass


@pytest.mark.parametrize("field", ["name", "id", "t", "args", "unique", "fails", "err"])
def test_malformed_job_errors_show_type_and_a_bounded_excerpt(field: str) -> None:
    secret = "4111-1111-1111-1111 " * 500  # personal data, and a very long line
    raw = json.dumps({"name": "wat", "id": "x", "t": 1, field: [secret] if field != "t" else secret})
    with pytest.raises(MalformedJob) as caught:
        Job.from_json(raw.encode())
    message = str(caught.value)
    assert len(message) < 160, message
    assert message.count("4111") <= 4
    assert "list" in message or "str" in message


def test_arg_errors_show_a_bounded_excerpt() -> None:
    job = Job(name="wat", id="x", t=1, args={"n": "x" * 10_000})
    job.arg_int64("n")
    assert job.arg_error is not None and len(str(job.arg_error)) < 160


def test_encoding_failures_are_invalid_job_arguments() -> None:
    nested: dict[str, Any] = {}
    for _ in range(5_000):
        nested = {"a": nested}
    cycle: list[Any] = []
    cycle.append(cycle)
    for args in ({"a": nested}, {"a": cycle}, {"a": float("inf")}, {1: 2}, {"a": object()},
                 {"k" * 1000: {2: "v"}}):
        with pytest.raises(InvalidJobArguments) as caught:
            Job(name="wat", id="x", t=1, args=args).to_json()  # type: ignore[arg-type]
        assert len(str(caught.value)) < 200

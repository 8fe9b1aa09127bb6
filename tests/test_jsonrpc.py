"""JSON-RPC parsing and classification: every malformed shape maps to the right code and id."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from proxy.mcp import jsonrpc
from proxy.mcp.jsonrpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_BATCH_ITEMS,
    MAX_BODY_VALUES,
    MAX_JSON_DEPTH,
    MAX_METHOD_CHARS,
    MAX_NAME_CHARS,
    Kind,
    Message,
    MessageError,
    count_values,
    error_body,
    too_many_values,
    is_read_method,
    parse_message,
    same_id,
)


def test_request_notification_response_batch() -> None:
    assert parse_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}').kind is Kind.REQUEST
    assert parse_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').kind is Kind.NOTIFICATION
    assert parse_message(b'{"jsonrpc":"2.0","id":"s1","result":{}}').kind is Kind.RESPONSE
    batch = parse_message(b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"x"}]')
    assert batch.kind is Kind.BATCH


@pytest.mark.parametrize(
    ("raw", "code", "request_id"),
    [
        (b"{not json", -32700, None),
        (b"", -32700, None),
        (b"[]", -32600, None),
        (b'"a string"', -32600, None),
        (b'{"id":4,"method":"ping"}', -32600, 4),
        (b'{"jsonrpc":"1.0","id":"x","method":"ping"}', -32600, "x"),
        (b'{"jsonrpc":"2.0","id":5,"method":7}', -32600, 5),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":6,"method":"ping","params":3}', -32600, 6),
        (b'{"jsonrpc":"2.0","id":7}', -32600, 7),
    ],
)
def test_bad_messages(raw: bytes, code: int, request_id: object) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(raw)
    assert (caught.value.code, caught.value.request_id) == (code, request_id)


@pytest.mark.parametrize(
    ("method", "read"),
    [
        ("initialize", True), ("server/discover", True), ("ping", True), ("tools/list", True),
        ("resources/templates/list", True), ("resources/read", True), ("prompts/get", True),
        ("completion/complete", True), ("tools/call", False), ("subscriptions/listen", False),
        ("resources/subscribe", False), ("logging/setLevel", False),
    ],
)
def test_read_methods(method: str, read: bool) -> None:
    assert is_read_method(method) is read


def test_error_body_shape() -> None:
    assert error_body(3, -32051, "slow", {"reason": "upstream_timeout"}) == (
        b'{"jsonrpc":"2.0","id":3,"error":{"code":-32051,"message":"slow","data":{"reason":"upstream_timeout"}}}'
    )


# --- Issue 10: exact cache keys, bounded depth, names and batches ---------------------------------------------

def _call(arguments: str, meta: str = "") -> bytes:
    """A tools/call body with `arguments` spliced in as JSON text (numbers exactly as written)."""
    extra = f',"_meta":{meta}' if meta else ""
    params = f'{{"name":"t","arguments":{arguments}{extra}}}'
    return f'{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}'.encode()


def _key(arguments: str, meta: str = "") -> bytes:
    return parse_message(_call(arguments, meta)).canonical_arguments()


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("18446744073709551739", "18446744073709551740"),  # 2**64 + 123 and + 124: one float to orjson
        ("-9223372036854775809", "-9223372036854775810"),  # below the signed 64-bit range
        ("0.1", "0.10000000000000001"),  # one double, two numbers
        ("1e400", "2e400"),  # orjson refuses these at parse; kept here so that stays a refusal, not a merge
        ("1.0", "1"),
        ("12345678901234567890123456789", "12345678901234567890123456788"),
    ],
)
def test_distinct_numbers_give_distinct_keys(one: str, other: str) -> None:
    try:
        keys = {_key(f'{{"account":{one}}}'), _key(f'{{"account":{other}}}')}
    except MessageError as exc:
        assert exc.code == -32700  # beyond a double's range: not JSON orjson reads, refused whole
        return
    assert len(keys) == 2


def test_exact_key_keeps_the_number_as_written_and_the_rest_as_orjson_writes_it() -> None:
    key = _key('{"b":[18446744073709551739, 0.10000000000000001, -0, 7],"a":"é\\n"}')
    assert key == b'{"arguments":{"a":"\xc3\xa9\\n","b":[18446744073709551739,0.10000000000000001,0,7]},"name":"t"}'


@pytest.mark.parametrize(
    ("arguments", "reordered"),
    [
        ('{"n":1,"s":"x"}', '{"s":"x","n":1}'),  # the fast path
        ('{"n":1,"s":"a,1.5]"}', '{"s":"a,1.5]","n":1}'),  # a string that looks like a float to the fast check
        ('{"n":-0,"big":18446744073709551616}', '{"big":18446744073709551616,"n":0}'),  # read lossily by orjson
        ('{"n":1,"f":0.5,"o":{"b":1,"a":2}}', '{"o":{"a":2,"b":1},"f":0.5,"n":1}'),
    ],
)
def test_equal_arguments_give_equal_keys_whatever_the_key_order_and_meta(arguments: str, reordered: str) -> None:
    assert _key(arguments) == _key(reordered, meta='{"progressToken":0.25}') == _key(arguments, meta='"x"')


def test_key_of_a_float_free_request_is_orjsons_sorted_dump() -> None:
    body = _call('{"z":1,"a":[true,null,"s",{"y":2,"x":-3}]}', meta='{"progressToken":"p"}')
    expected = b'{"arguments":{"a":[true,null,"s",{"x":-3,"y":2}],"z":1},"name":"t"}'
    assert parse_message(body).canonical_arguments() == expected


def _nested(depth: int) -> str:
    """A value `depth` containers deep (alternating arrays and objects)."""
    text = "0"
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"k":{text}}}'
    return text


def _at_depth(depth: int) -> bytes:
    """A request whose whole body is `depth` containers deep (the message object is level 1)."""
    return f'{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{_nested(depth - 1)}}}'.encode()


def test_depth_bound_is_exact() -> None:
    assert MAX_JSON_DEPTH == 128
    message = parse_message(_at_depth(MAX_JSON_DEPTH))
    assert message.kind is Kind.REQUEST
    assert message.canonical_arguments().count(b"[") + message.canonical_arguments().count(b"{") == MAX_JSON_DEPTH - 1


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 256, 300, 1024])
def test_deeper_than_the_bound_is_an_invalid_request_with_the_id(depth: int) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(_at_depth(depth))
    assert (caught.value.code, caught.value.request_id) == (INVALID_REQUEST, 9)
    assert caught.value.message == f"Invalid Request: nested deeper than {MAX_JSON_DEPTH} levels"


def test_deeper_than_orjson_reads_is_a_parse_error() -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(_at_depth(1100))
    assert caught.value.code == -32700


def test_a_deep_batch_is_refused_without_an_id() -> None:
    body = f'[{{"jsonrpc":"2.0","id":3,"method":"x","params":{_nested(200)}}}]'.encode()
    with pytest.raises(MessageError) as caught:
        parse_message(body)
    assert (caught.value.code, caught.value.request_id) == (INVALID_REQUEST, None)


@pytest.mark.parametrize("depth", [250, 255, 256, 1000, 5000])
def test_canonical_arguments_never_raises_for_a_message_built_by_hand(depth: int) -> None:
    value: object = 1
    for _ in range(depth):
        value = [value]
    message = Message(Kind.REQUEST, {"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"a": value}}, 1, "x")
    key = message.canonical_arguments()
    assert key.count(b"[") == depth
    other = Message(Kind.REQUEST, {"params": {"a": value, "b": 2**70}}, 1, "x")
    assert other.canonical_arguments() != key


def test_canonical_arguments_of_odd_python_values_built_by_hand() -> None:
    odd: list[dict[Any, Any]] = [
        {"s": "\ud800"}, {"i": 2**70}, {"i": -(2**70)}, {"i": 10**5000}, {1: 2}, {"f": float("nan")}, {"o": object()}
    ]
    for params in odd:
        message = Message(Kind.REQUEST, {"jsonrpc": "2.0", "id": 1, "method": "x", "params": params}, 1, "x")
        assert isinstance(message.canonical_arguments(), bytes)
    assert Message(Kind.REQUEST, {"params": {"i": 2**70}}).canonical_arguments() != Message(
        Kind.REQUEST, {"params": {"i": 2**70 + 1}}
    ).canonical_arguments()


def test_method_length_bound() -> None:
    assert MAX_METHOD_CHARS == 128
    assert parse_message(b'{"jsonrpc":"2.0","id":1,"method":"%s"}' % (b"m" * MAX_METHOD_CHARS)).method == "m" * 128
    with pytest.raises(MessageError) as caught:
        parse_message(b'{"jsonrpc":"2.0","id":1,"method":"%s"}' % (b"m" * (1 << 20)))
    assert (caught.value.code, caught.value.request_id) == (INVALID_REQUEST, 1)
    assert caught.value.message == f'Invalid Request: "method" is 1048576 characters, more than {MAX_METHOD_CHARS}'
    with pytest.raises(MessageError) as caught:  # notifications too: their method is a label as well
        parse_message(b'{"jsonrpc":"2.0","method":"%s"}' % (b"n" * (MAX_METHOD_CHARS + 1)))
    assert caught.value.code == INVALID_REQUEST


def _named(method: str, name: object) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": "r", "method": method, "params": {"name": name, "arguments": {}}})


@pytest.mark.parametrize("method", ["tools/call", "prompts/get"])
@pytest.mark.parametrize(
    "name",
    ["get_weather", "admin.tools.list", "a/b:c", "résumé tool", "名前", "", "x" * MAX_NAME_CHARS, "\u0080\u2028"],
)
def test_plausible_names_pass(method: str, name: str) -> None:
    message = parse_message(_named(method, name))
    assert (message.kind, message.params["name"]) == (Kind.REQUEST, name)


@pytest.mark.parametrize("method", ["tools/call", "prompts/get"])
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("x" * (MAX_NAME_CHARS + 1), f"is {MAX_NAME_CHARS + 1} characters, more than {MAX_NAME_CHARS}"),
        ("y" * (1 << 20), f"is 1048576 characters, more than {MAX_NAME_CHARS}"),
        ("tool\n", "contains a control character"),
        ("\x00", "contains a control character"),
        ("a\x1fb", "contains a control character"),
        ("del\x7f", "contains a control character"),
    ],
)
def test_implausible_names_are_invalid_params(method: str, name: str, reason: str) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(_named(method, name))
    assert (caught.value.code, caught.value.request_id) == (INVALID_PARAMS, "r")
    assert caught.value.message == f'Invalid params: "name" {reason}'


@pytest.mark.parametrize("name", [None, 7, ["a"], {"n": "x" * 1000}])
def test_a_name_that_is_not_a_string_is_left_to_the_server(name: object) -> None:
    assert parse_message(_named("tools/call", name)).kind is Kind.REQUEST


def test_other_methods_names_are_not_tool_names() -> None:
    assert parse_message(_named("resources/read", "x" * 1000)).kind is Kind.REQUEST


def _batch(count: int) -> bytes:
    return b"[" + b",".join(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}' % i for i in range(count)) + b"]"


def test_batch_bound() -> None:
    assert MAX_BATCH_ITEMS == 100
    assert len(parse_message(_batch(MAX_BATCH_ITEMS)).items) == MAX_BATCH_ITEMS
    with pytest.raises(MessageError) as caught:
        parse_message(_batch(82_000), max_values=10**7)  # (the value bound, by default, refuses it first)
    assert (caught.value.code, caught.value.request_id) == (INVALID_REQUEST, None)
    assert caught.value.message == f"Invalid Request: batch of 82000 items exceeds {MAX_BATCH_ITEMS}"


def test_batch_carries_its_checked_items() -> None:
    body = (
        b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"n":18446744073709551617}}},'
        b'{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":"s","result":{}}]'
    )
    batch = parse_message(body)
    assert batch.kind is Kind.BATCH
    assert [(m.kind, m.id, m.method) for m in batch.items] == [
        (Kind.REQUEST, 1, "tools/call"),
        (Kind.NOTIFICATION, None, "notifications/x"),
        (Kind.RESPONSE, "s", None),
    ]
    assert batch.items[0].body is batch.body[0]  # the parsed item itself, not a copy
    assert batch.items[0].canonical_arguments() == b'{"arguments":{"n":18446744073709551617},"name":"t"}'
    assert parse_message(b'{"jsonrpc":"2.0","id":1,"method":"ping"}').items == ()


def test_a_batch_item_with_an_implausible_name_refuses_the_batch() -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(b"[" + _named("tools/call", "z" * 300) + b"]")
    assert caught.value.code == INVALID_PARAMS


# --- valid JSON orjson refuses, ids and methods as servers read them (adversarial review) ----------------

LONE = b'"\\ud800"'


@pytest.mark.parametrize(
    "raw",
    [
        b'{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":1e999}}',
        b'{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":-1e999,"y":1' + b"0" * 5000 + b"}}",
        b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":' + LONE + b"}}}",
        b'\xef\xbb\xbf{"jsonrpc":"2.0","id":4,"method":"ping"}',
    ],
    ids=["1e999", "-1e999 and 5000 digits", "lone surrogate", "BOM"],
)
def test_valid_json_orjson_refuses_is_read(raw: bytes) -> None:
    """Every server tested takes at least some of these (the module docstring): they are forwarded."""
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)  # what made them 400s before
    message = parse_message(raw)
    assert message.kind is Kind.REQUEST and message.source is not None and message.source.lenient
    assert message.canonical_arguments()  # never raises, and takes the exact path


UTF16_ARRAYS = (
    '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":"\\"","b":['
    + ",".join(["[]"] * 690_000)
    + '],"c":"\\""}}}'
)
"""The hostile-client review's body: its escaped quotes, in UTF-16, hide 690,000 arrays from the value count."""


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-16", "utf-32-le", "utf-32"])
def test_json_in_utf16_or_utf32_is_a_parse_error_and_never_parsed(
    encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's `json` reads UTF-16 and UTF-32 bytes, where the value count (which reads UTF-8) sees 8
    values in 4 MiB of arrays; no server tested reads them. Refused as -32700 (its NUL bytes), neither
    counted nor parsed."""
    for text, values in ((UTF16_ARRAYS, 690_010), ('{"jsonrpc":"2.0","id":1,"method":"ping"}', 4)):
        assert count_values(text.encode()) == values  # in UTF-8 the count sees them all
        raw = text.encode(encoding)
        assert not too_many_values(raw, MAX_BODY_VALUES)  # the hole: in UTF-16 it does not
        with monkeypatch.context() as patched:
            patched.setattr(jsonrpc, "too_many_values", _never_called)
            patched.setattr(jsonrpc, "orjson", SimpleNamespace(loads=_never_called))
            patched.setattr(jsonrpc.json, "loads", _never_called)
            with pytest.raises(MessageError) as caught:
                parse_message(raw)
        assert (caught.value.code, caught.value.request_id, caught.value.status) == (-32700, None, 400)
        assert caught.value.message == "Parse error: JSON must be UTF-8 (the body holds a NUL byte)"


def test_a_body_in_utf8_with_a_bom_is_still_read() -> None:
    message = parse_message(b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\xc3\xa9\\ud800"}}')
    assert message.source is not None and message.source.lenient and message.params == {"s": "\u00e9\ud800"}


def _never_called(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("counted or parsed")


def test_an_infinity_is_never_the_same_cache_key_as_null() -> None:
    """orjson writes an infinity as null: the exact path keeps the number as written."""
    keys = [parse_message(_call('{"x":%s}' % number)).canonical_arguments() for number in ("1e999", "null", "1e500")]
    assert keys == [b'{"arguments":{"x":%s},"name":"t"}' % number for number in (b"1e999", b"null", b"1e500")]
    surrogate = parse_message(_call('{"x":"\\ud800"}')).canonical_arguments()
    assert surrogate not in keys and surrogate == parse_message(_call('{ "x" : "\\ud800" }')).canonical_arguments()


@pytest.mark.parametrize(
    ("raw", "code", "request_id"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}', -32700, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":Infinity}}', -32700, None),
        (b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping"', -32700, None),
        (b'{"jsonrpc":"2.0","id":1,"method":' + LONE + b"}", -32600, 1),
        (b'{"jsonrpc":"2.0","id":' + LONE + b',"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":1e300,"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xed\xa0\x80"}}', -32700, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xff"}}', -32700, None),
    ],
    ids=["NaN", "Infinity", "BOM, then broken", "surrogate method", "surrogate id", "fractional id", "huge id",
         "surrogate in UTF-8 bytes", "not UTF-8"],  # fmt: skip
)
def test_what_stays_refused(raw: bytes, code: int, request_id: object) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(raw)
    assert (caught.value.code, caught.value.request_id, caught.value.status) == (code, request_id, 400)


def test_a_tool_name_with_a_lone_surrogate_is_invalid_params() -> None:
    raw = b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"a\\udc00"}}'
    with pytest.raises(MessageError) as caught:
        parse_message(raw)
    assert (caught.value.code, caught.value.request_id) == (INVALID_PARAMS, 9)


@pytest.mark.parametrize("written", [b"1.0", b"1e0", b"10E-1", b"1"])
def test_an_integral_number_id_is_the_integer_servers_echo(written: bytes) -> None:
    message = parse_message(b'{"jsonrpc":"2.0","id":' + written + b',"method":"ping"}')
    assert message.id == 1 and type(message.id) is int


@pytest.mark.parametrize(
    ("answer_id", "request_id", "same"),
    [
        (1.0, 1, True),
        (-0.0, 0, True),
        (100.0, 100, True),
        (9007199254740992, 9007199254740993, True),  # JSON.parse's double for 2^53+1
        (9007199254740992.0, 9007199254740993, True),
        (2**64, 2**64 + 1, True),
        (float("inf"), 10**400, True),  # past the largest double: Infinity to JSON.parse
        ("a", "a", True),
        (None, None, True),
        (2, 1, False),
        (1.5, 1, False),
        (9007199254740994, 9007199254740993, False),
        ("1", 1, True),  # the SDKs' coerce_request_id: "7" and 7 are one id
        (1, "1", True),
        ("07", "7", True),
        ("1.0", 1, False),  # not a decimal integer: text
        ("x1", 1, False),
        ("2", 1, False),
        (True, 1, False),
        (False, 0, False),
        (None, 1, False),
        (0, None, False),
        ([1], 1, False),
        ({"id": 1}, 1, False),
    ],
)
def test_ids_are_the_same_when_equal_as_json_rpc_values(answer_id: Any, request_id: Any, same: bool) -> None:
    """Numbers compare as IEEE doubles, as a server reading them into doubles echoes them; a string holding
    a decimal integer is that integer, as both SDKs correlate it; a boolean is no integer."""
    assert same_id(answer_id, request_id) is same


def test_an_empty_method_is_the_servers_to_answer() -> None:
    assert parse_message(b'{"jsonrpc":"2.0","id":5,"method":""}').kind is Kind.REQUEST
    assert parse_message(b'{"jsonrpc":"2.0","method":""}').kind is Kind.NOTIFICATION


def test_a_lenient_body_keeps_the_depth_bound() -> None:
    inner = b"1e999"
    for _ in range(MAX_JSON_DEPTH - 2):
        inner = b"[" + inner + b"]"
    assert parse_message(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + inner + b"}}").kind is Kind.REQUEST
    with pytest.raises(MessageError) as caught:
        parse_message(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":[' + inner + b"]}}")
    assert (caught.value.code, caught.value.request_id) == (INVALID_REQUEST, 1)
    deep = b"[" * 5000 + LONE + b"]" * 5000  # past what Python's json reads: refused, not a crash
    with pytest.raises(MessageError):
        parse_message(deep)


# --- the value bound ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("0", 1), ("[]", 1), ("[[],[]]", 3), ("[[[]]]", 3), ('{"a":[]}', 2), ("[1,2,3]", 4), ('{"a":1,"b":2}', 3),
        ('{"a":"x,[{","b":["]",{}]}', 5), ('[ [ ] , { } ,"\\",[" ]', 4), ('["\\\\",["\\\\\\""]]', 4),
    ],
)
def test_count_values_is_exact_for_valid_json(text: str, values: int) -> None:
    raw = text.encode()
    assert count_values(raw) == values
    assert too_many_values(raw, values - 1) and not too_many_values(raw, values)
    def walk(value: Any) -> int:
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        return 1 + sum(walk(child) for child in children)
    assert walk(orjson.loads(raw)) == values


def test_a_body_of_many_values_is_refused_before_it_is_parsed() -> None:
    """4 MiB of ``[],``: 1.4 million lists (85 MiB parsed) under the 4 MiB body limit."""
    raw = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{"a":[' + b"[]," * 1_398_000 + b"[]]}}}"
    assert len(raw) < 4 * 1024**2
    with pytest.raises(MessageError) as caught:
        parse_message(raw)
    error = caught.value
    assert (error.code, error.status, error.reason, error.request_id) == (INVALID_REQUEST, 413, "too_many_values", None)
    assert error.message == f"Invalid Request: the body holds more than {MAX_BODY_VALUES} JSON values (limits.max_body_values)"


def test_the_value_bound_is_exact_and_commas_in_strings_do_not_count() -> None:
    def body(values: int, text: str = "") -> bytes:  # the object, "2.0", id, method, params, "x" and "s": 7
        items = ",".join(["0"] * (values - 7))
        return b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":[%s],"s":"%s"}}' % (items.encode(), text.encode())
    assert count_values(body(MAX_BODY_VALUES)) == MAX_BODY_VALUES
    assert not too_many_values(body(MAX_BODY_VALUES), MAX_BODY_VALUES)
    assert too_many_values(body(MAX_BODY_VALUES + 1), MAX_BODY_VALUES)
    parse_message(body(MAX_BODY_VALUES - 1, "," * 200_000))  # 200,000 commas in a string: one value
    with pytest.raises(MessageError):
        parse_message(body(MAX_BODY_VALUES + 1))
    assert parse_message(body(MAX_BODY_VALUES + 1), max_values=MAX_BODY_VALUES + 1).kind is Kind.REQUEST


def test_the_configs_default_is_the_modules() -> None:
    from proxy.config.model import LimitsConfig

    assert LimitsConfig().max_body_values == MAX_BODY_VALUES

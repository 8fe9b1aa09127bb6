"""Properties of the JSON-RPC parser, which sees every client's bytes (Hypothesis).

Whatever arrives, `parse_message` returns a `Message` or raises `MessageError` (nothing else, and never
a message that echoes a long input); what it accepts is within its bounds and what it refuses beyond
them gets the bound's code. `canonical_arguments` never raises and is exact: two requests get one key
exactly when a server reading their numbers exactly would see the same arguments (numbers with a
fraction or an exponent compared as written, integers by value; key order and `_meta` never count).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.mcp.jsonrpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_BATCH_ITEMS,
    MAX_JSON_DEPTH,
    MAX_METHOD_CHARS,
    MAX_NAME_CHARS,
    PARSE_ERROR,
    Kind,
    Message,
    MessageError,
    parse_message,
)

CODES = {PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS}
LONGEST_ERROR = 160  # characters: an error message says how long a name was, never what it was


def outcome(raw: bytes) -> Message | MessageError:
    """What `parse_message` does with `raw`; any other exception fails the test that calls it."""
    try:
        message = parse_message(raw)
    except MessageError as exc:
        assert exc.code in CODES
        assert len(exc.message) <= LONGEST_ERROR
        return exc
    for one in (message, *message.items):
        assert isinstance(one.canonical_arguments(), bytes)
    return message


# --- Any bytes, any JSON ---------------------------------------------------------------------------------

FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.none() | st.booleans() | st.integers() | FLOATS | st.text(max_size=20)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
METHODS = st.sampled_from(["tools/call", "prompts/get", "ping", "tools/list"]) | st.text(max_size=140)
IDS = st.integers() | st.text(max_size=5) | st.none() | st.booleans() | st.floats(allow_nan=False)


@st.composite
def messages(draw: st.DrawFn) -> Any:
    """A JSON value shaped, more or less, like a JSON-RPC message (every member optional, any type)."""
    fields = {
        "jsonrpc": st.just("2.0") | VALUES,
        "id": IDS | VALUES,
        "method": METHODS | VALUES,
        "params": VALUES
        | st.fixed_dictionaries({}, optional={"name": st.text(max_size=300) | VALUES, "arguments": VALUES}),
        "result": VALUES,
        "error": VALUES,
    }
    present = draw(st.sets(st.sampled_from(sorted(fields))))
    return {name: draw(fields[name]) for name in sorted(present)}


def dump(value: Any) -> bytes:
    """`value` as JSON text (json, not orjson: it writes integers of any size)."""
    return json.dumps(value, ensure_ascii=False).encode()


@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_any_bytes_give_a_message_or_a_message_error(raw: bytes) -> None:
    outcome(raw)


@given(VALUES | messages() | st.lists(messages(), max_size=4))
def test_any_json_gives_a_message_or_a_message_error(value: Any) -> None:
    result = outcome(dump(value))
    if isinstance(result, Message):
        for one in result.items or (result,):
            assert one.method is None or len(one.method) <= MAX_METHOD_CHARS
            name = one.params.get("name")
            if one.method in ("tools/call", "prompts/get") and isinstance(name, str):
                assert len(name) <= MAX_NAME_CHARS
                assert not any(ord(char) < 0x20 or char == "\x7f" for char in name)


# --- Bounds -----------------------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=4 * MAX_METHOD_CHARS), st.booleans())
def test_method_bound(length: int, notification: bool) -> None:
    message = {"jsonrpc": "2.0", "method": "m" * length, **({} if notification else {"id": 1})}
    result = outcome(dump(message))
    if length <= MAX_METHOD_CHARS:
        assert isinstance(result, Message)
    else:
        assert isinstance(result, MessageError)
        assert (result.code, result.request_id) == (INVALID_REQUEST, None if notification else 1)


NAMES = st.text(max_size=MAX_NAME_CHARS + 20) | st.text(min_size=MAX_NAME_CHARS - 2, max_size=MAX_NAME_CHARS + 2)


@given(st.sampled_from(["tools/call", "prompts/get"]), NAMES)
def test_name_bound(method: str, name: str) -> None:
    result = outcome(dump({"jsonrpc": "2.0", "id": "n", "method": method, "params": {"name": name}}))
    plausible = len(name) <= MAX_NAME_CHARS and not any(ord(char) < 0x20 or char == "\x7f" for char in name)
    if plausible:
        assert isinstance(result, Message)
    else:
        assert isinstance(result, MessageError)
        assert (result.code, result.request_id) == (INVALID_PARAMS, "n")


@given(st.integers(min_value=1, max_value=3 * MAX_BATCH_ITEMS))
def test_batch_bound(count: int) -> None:
    result = outcome(dump([{"jsonrpc": "2.0", "id": index, "method": "ping"} for index in range(count)]))
    if count <= MAX_BATCH_ITEMS:
        assert isinstance(result, Message)
        assert [item.id for item in result.items] == list(range(count))
    else:
        assert isinstance(result, MessageError)
        assert result.code == INVALID_REQUEST


@given(st.integers(min_value=1, max_value=1100), st.lists(st.booleans(), min_size=1, max_size=8))
def test_depth_bound(depth: int, kinds: list[bool]) -> None:
    """A request whose body is `depth` levels deep (the message object is level 1): accepted up to the
    bound, -32600 with its id beyond it, -32700 beyond what orjson reads at all (1,024)."""
    text = "1"
    for level in range(depth - 1):
        text = f"[{text}]" if kinds[level % len(kinds)] else f'{{"k":{text}}}'
    params = b',"params":%s' % text.encode() if depth > 1 else b""
    result = outcome(b'{"jsonrpc":"2.0","id":5,"method":"x"%s}' % params)
    if depth <= MAX_JSON_DEPTH:
        assert isinstance(result, Message)
    elif depth <= 1024:
        assert isinstance(result, MessageError)
        assert (result.code, result.request_id) == (INVALID_REQUEST, 5)
    else:
        assert isinstance(result, MessageError)
        assert result.code == PARSE_ERROR


# --- canonical_arguments: total and exact -----------------------------------------------------------------


class Num:
    """A JSON number as written."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


FLOAT_TEXTS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),  # "0.1", "1e+16", "-0.0", "5e-324"
    st.decimals(allow_nan=False, allow_infinity=False).map(str).filter(lambda text: "E" in text or "." in text),
    st.sampled_from(["0.1", "0.10000000000000001", "1.0", "1.00", "1e2", "1E2", "100.0", "1e400", "2e-400"]),
)
INT_TEXTS = st.one_of(
    st.integers(min_value=-(2**130), max_value=2**130).map(str),
    st.integers(min_value=2**53).map(str),
    st.sampled_from(["18446744073709551615", "18446744073709551616", "18446744073709551739", "-9223372036854775809"]),
)
NUMBERS = (FLOAT_TEXTS | INT_TEXTS).map(Num)
LEAVES = st.none() | st.booleans() | st.text(max_size=6) | NUMBERS
TREES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4),
    max_leaves=12,
)


def write(value: Any, order: list[int]) -> str:
    """`value` as JSON text, numbers as written, each object's keys in an order drawn from `order`."""
    if isinstance(value, Num):
        return value.text
    if isinstance(value, list):
        return "[" + ",".join(write(item, order) for item in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: hash((key, order[len(key) % len(order)])))
        return "{" + ",".join(json.dumps(key) + ":" + write(value[key], order) for key in keys) + "}"
    return json.dumps(value)


def meaning(value: Any) -> Any:
    """What a key must tell apart: structure, strings, integers by value, other numbers as written."""
    if isinstance(value, Num):
        is_int = value.text.lstrip("-").isdigit()
        return ("int", int(value.text)) if is_int else ("number", value.text)
    if isinstance(value, list):
        return ("list", tuple(meaning(item) for item in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((key, meaning(item)) for key, item in value.items())))
    return (type(value).__name__, value)


def key(arguments: Any, order: list[int], meta: str | None) -> bytes:
    params = '{"name":"t","arguments":%s%s}' % (write(arguments, order), "" if meta is None else ',"_meta":' + meta)
    raw = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":%s}' % params).encode()
    try:
        message = parse_message(raw)
    except MessageError as exc:
        assert exc.code == PARSE_ERROR  # only a number beyond a double's range ("1e400"): orjson refuses it
        return b"refused:" + raw
    return message.canonical_arguments()


def respell(text: str) -> str:
    """Another spelling of the same number: one more digit, which a double may not hold."""
    if text.lstrip("-").isdigit():
        return text + ".0"
    mantissa, _, exponent = text.replace("E", "e").partition("e")
    return (mantissa + ("0" if "." in mantissa else ".0")) + ("e" + exponent if exponent else "")


@st.composite
def variants(draw: st.DrawFn) -> tuple[Any, Any]:
    """Two argument trees: the same one; one whose numbers are respelt, moved by one, or redrawn (the
    changes orjson alone cannot see: same double, or integers beyond 64 bits); or another tree."""
    first = draw(TREES)
    change = draw(st.sampled_from(["same", "numbers", "numbers", "numbers", "tree"]))
    if change == "same":
        return first, first
    if change == "tree":
        return first, draw(TREES)

    def vary(value: Any) -> Any:
        if isinstance(value, Num):
            how = draw(st.sampled_from(["keep", "respell", "next", "redraw"]))
            if how == "respell":
                return Num(respell(value.text))
            if how == "next" and value.text.lstrip("-").isdigit():
                return Num(str(int(value.text) + 1))
            return draw(NUMBERS) if how == "redraw" else value
        if isinstance(value, list):
            return [vary(item) for item in value]
        if isinstance(value, dict):
            return {name: vary(item) for name, item in value.items()}
        return value

    return first, vary(first)


META = st.none() | st.sampled_from(['{"progressToken":1}', '{"progressToken":0.5}', '"x"', "18446744073709551617"])


ORDERS = st.lists(st.integers(), min_size=1, max_size=3)


@given(variants(), ORDERS, ORDERS, META, META)
def test_keys_are_exact(
    pair: tuple[Any, Any], order: list[int], other_order: list[int], meta: str | None, other_meta: str | None
) -> None:
    first, second = pair
    one, other = key(first, order, meta), key(second, other_order, other_meta)
    assume(not one.startswith(b"refused:") and not other.startswith(b"refused:"))
    assert (one == other) == (meaning(first) == meaning(second))
    exact_one = json.loads(write(first, order), parse_float=Decimal)
    exact_other = json.loads(write(second, other_order), parse_float=Decimal)
    if exact_one != exact_other:  # the words: values that differ, read exactly, never share a key
        assert one != other


class _Raw(Num):
    """Arguments given as JSON text (`write` writes a `Num`'s text as it is)."""


@given(FLOATS, st.sampled_from(["[%s]", '{"k":%s}', "[%s,1]", '{"a":{"b":[%s]},"z":1}']))
def test_every_float_takes_the_exact_path(number: float, shape: str) -> None:
    """Two spellings of one double are two keys, wherever the float sits: the fast path's float check
    never misses one (orjson would write both the same)."""
    text = repr(number)
    if "e" in text:
        longer = text.replace("e", "0e" if "." in text else ".0e")
    else:
        longer = text + "0"
    assert float(longer) == number and longer != text
    assert key(_Raw(shape % text), [0], None) != key(_Raw(shape % longer), [0], None)


ODD = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.just("\ud800") | st.builds(object),
    lambda children: st.lists(children, max_size=3)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=3) | st.integers(), children, max_size=3),
    max_leaves=10,
)


@given(ODD, st.integers(min_value=0, max_value=3000))
def test_canonical_arguments_never_raises_for_a_message_built_by_hand(value: Any, depth: int) -> None:
    for _ in range(depth):
        value = [value]
    for body in ({"params": {"a": value}}, {"params": value}, value):
        assert isinstance(Message(Kind.REQUEST, body, 1, "x").canonical_arguments(), bytes)


def test_orjson_depths_the_bound_relies_on() -> None:
    """The depth check rests on orjson writing 254 levels and no more; an orjson that moves it fails here."""
    value: Any = 1
    for _ in range(254):
        value = [value]
    assert orjson.dumps(value).count(b"[") == 254
    try:
        orjson.dumps([value])
    except orjson.JSONEncodeError:
        return
    raise AssertionError("orjson now writes 255 levels: revisit _DEPTH_PROBE in proxy/mcp/jsonrpc.py")

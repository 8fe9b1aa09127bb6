"""Header forwarding rules and the Host/Origin allow-lists."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.config.model import LOOPBACK_NAMES
from proxy.mcp.headers import (
    REFUSALS_LOGGED,
    SHOWN_CHARS,
    VERDICTS_KEPT,
    HostPolicy,
    RefusalLog,
    client_headers,
    client_query,
    forwarded,
    upstream_headers,
)


def test_upstream_headers_keep_end_to_end_and_drop_hop_by_hop() -> None:
    incoming = CIMultiDict(
        [
            ("Host", "localhost:8080"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"), ("Content-Length", "10"),
            ("Accept-Encoding", "gzip"), ("Authorization", "Bearer s3cret"), ("Mcp-Session-Id", "abc"),
            ("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "lookup"),
            ("Mcp-Param-Region", "eu"), ("Mcp-Param-Something-New", "x"), ("Last-Event-ID", "5"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), ("Accept", "application/json, text/event-stream"),
        ]
    )
    out = upstream_headers(incoming.items())
    assert list(out.keys()) == [
        "Authorization", "Mcp-Session-Id", "MCP-Protocol-Version", "Mcp-Method", "Mcp-Name", "Mcp-Param-Region",
        "Mcp-Param-Something-New", "Last-Event-ID", "traceparent", "Accept",
    ]


def test_client_headers_keep_session_id_server_and_date_and_drop_framing() -> None:
    incoming = CIMultiDict(
        [("Content-Type", "text/event-stream"), ("Mcp-Session-Id", "s1"), ("Transfer-Encoding", "chunked"),
         ("Content-Length", "5"), ("Server", "upstream"), ("Date", "x"), ("Cache-Control", "no-cache")]
    )
    assert list(client_headers(incoming.items()).items()) == [
        ("Content-Type", "text/event-stream"), ("Mcp-Session-Id", "s1"), ("Server", "upstream"), ("Date", "x"),
        ("Cache-Control", "no-cache"),
    ]


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        ("token=x&foo=bar", "token=x&foo=bar"),
        ("a=%41%2f&b=%zz&c=\"<>{}|\\^`?=", "a=%41%2f&b=%zz&c=\"<>{}|\\^`?="),  # as sent, escapes and oddities kept
        ("e=\u00e9 x", "e=%C3%A9%20x"),  # what no request line may carry (aiohttp's Python parser lets it in)
        ("n=a\x00b\x7f", "n=a%00b%7F"),
    ],
)
def test_a_client_query_passes_as_sent_but_for_what_no_request_line_carries(raw: str, sent: str) -> None:
    assert client_query(raw) == sent


def test_client_headers_drop_what_the_upstream_connection_header_names() -> None:
    items = [("Connection", "keep-alive, X-Up-Hop"), ("X-Up-Hop", "1"), ("x-up-hop", "2"), ("X-Kept", "3")]
    assert list(client_headers(items).items()) == [("X-Kept", "3")]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost:8080", True), ("LOCALHOST", True), ("127.0.0.1:1", True), ("[::1]:8080", True),
        ("evil.example:8080", False), ("localhost.evil.example", False), (None, False), ("127.0.0.2", False),
    ],
)
def test_default_hosts(host: str | None, allowed: bool) -> None:
    assert HostPolicy(LOOPBACK_NAMES, LOOPBACK_NAMES).host_allowed(host) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True), ("http://localhost:3000", True), ("https://127.0.0.1", True), ("http://[::1]:9", True),
        ("http://evil.example", False), ("null", False), ("http://localhost.evil.example", False),
        ("https://app.example.com", True), ("http://app.example.com", False),
    ],
)
def test_origins(origin: str | None, allowed: bool) -> None:
    policy = HostPolicy(["localhost"], [*LOOPBACK_NAMES, "https://app.example.com"])
    assert policy.origin_allowed(origin) is allowed


def test_wildcards() -> None:
    policy = HostPolicy(["*"], ["*"])
    assert policy.host_allowed("anything:1") and policy.origin_allowed("http://evil.example")


def test_serves_only() -> None:
    assert HostPolicy(LOOPBACK_NAMES, ()).serves_only(LOOPBACK_NAMES)
    assert HostPolicy(["LOCALHOST:8080", "::1"], ()).serves_only(LOOPBACK_NAMES)
    assert not HostPolicy([*LOOPBACK_NAMES, "proxy.internal"], ()).serves_only(LOOPBACK_NAMES)
    assert not HostPolicy(["*"], ()).serves_only(LOOPBACK_NAMES)


def refusals(logs: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    return [(line["event"], line.get("host", line.get("origin")), line.get("fix")) for line in logs]


def test_a_refused_host_is_logged_once_per_name_with_the_fix() -> None:
    policy = HostPolicy(LOOPBACK_NAMES, LOOPBACK_NAMES)
    with structlog.testing.capture_logs() as logs:
        for host in ("evil.example:8080", "evil.example:8080", "EVIL.example", "[fe80::1]:80", "[FE80::1]"):
            policy.refused_host(host)
        for origin in ("http://evil.example", "http://EVIL.example/", "null", None):
            policy.refused_origin(origin)
    assert refusals(logs) == [
        ("host_refused", "evil.example:8080", "add evil.example to security.allowed_hosts or pass --allow-host evil.example"),
        ("host_refused", "[fe80::1]:80", "add [fe80::1] to security.allowed_hosts or pass --allow-host [fe80::1]"),
        ("origin_refused", "http://evil.example", "add http://evil.example to security.allowed_origins"),
        ("origin_refused", "null", "only '*' in security.allowed_origins accepts an Origin that is not http(s)://HOST"),
    ]
    assert {line["log_level"] for line in logs} == {"warning"}


def test_a_refused_host_is_echoed_as_a_bounded_printable_prefix() -> None:
    policy = HostPolicy(LOOPBACK_NAMES, LOOPBACK_NAMES)
    with structlog.testing.capture_logs() as logs:
        policy.refused_host("\x1b[31mred\x00\u00e9")
        policy.refused_host("a" * 5000)
        policy.refused_host("a" * 5000 + "b")  # the same first SHOWN_CHARS characters: the same entry
    assert [line["host"] for line in logs] == ["?[31mred??", "a" * SHOWN_CHARS + "..."]
    assert logs[1]["fix"] == f"add {'a' * SHOWN_CHARS}... to security.allowed_hosts or pass --allow-host {'a' * SHOWN_CHARS}..."


def test_refusals_remembered_are_capped_and_the_cap_is_said_once() -> None:
    refused = RefusalLog("host", "add {}".format, cap=3)
    with structlog.testing.capture_logs() as logs:
        for n in (1, 2, 3, 1, 4, 5, 2):
            refused(f"h{n}", f"h{n}:80")
    assert [(line["event"], line.get("host")) for line in logs] == [
        ("host_refused", "h1:80"), ("host_refused", "h2:80"), ("host_refused", "h3:80"), ("host_refusals_not_logged", None),
    ]
    assert len(refused) == 3


def test_random_hosts_grow_neither_memory_nor_the_log_past_the_cap() -> None:
    assert REFUSALS_LOGGED == 1000
    policy = HostPolicy(LOOPBACK_NAMES, LOOPBACK_NAMES)
    refused = RefusalLog("host", "add {}".format)
    with structlog.testing.capture_logs() as logs:
        for n in range(3 * REFUSALS_LOGGED):
            policy.refused_host(f"{n}.random.example")
            refused(f"{n}.random.example", f"{n}.random.example")
    events = [line["event"] for line in logs]
    assert events.count("host_refused") == 2 * REFUSALS_LOGGED
    assert events.count("host_refusals_not_logged") == 2
    assert len(refused) == REFUSALS_LOGGED


def test_remembered_host_verdicts_are_the_same_verdicts_and_bounded() -> None:
    """Each request's Host costs one lookup once seen; a client sending a new one every time is judged
    afresh each time, and what is remembered stays under the cap."""
    policy = HostPolicy(["localhost"], ())
    for _ in range(2):
        assert policy.host_allowed("localhost:8080") and policy.host_allowed("LOCALHOST")
        assert not policy.host_allowed("evil.example") and not policy.host_allowed("localhost.evil.example")
    for n in range(3 * VERDICTS_KEPT):
        assert not policy.host_allowed(f"{n}.random.example")
        assert policy.host_allowed(f"localhost:{n}")
    long_name = "a" * (SHOWN_CHARS + 1)
    assert not policy.host_allowed(long_name) and not policy.host_allowed(long_name)
    assert len(policy._verdicts) == VERDICTS_KEPT  # noqa: SLF001 - the bound is the point


# --- X-Forwarded-For / X-Forwarded-Proto / Forwarded (security.forwarded_headers) ----------------

CLAIMED = [
    ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "7.7.7.7, 8.8.8.8"), ("X-Forwarded-Proto", "https"),
    ("Forwarded", 'for=6.6.6.6;proto=https'), ("Authorization", "Bearer t"),
]


def forwarding_of(items: list[tuple[str, str]], peer: str | None, mode: str) -> list[tuple[str, str]]:
    headers: CIMultiDict[str] = CIMultiDict(items)
    forwarded(headers, peer, mode)
    return list(headers.items())


@pytest.mark.parametrize(
    ("mode", "peer", "expected"),
    [
        ("append", "127.0.0.1", [
            ("Authorization", "Bearer t"), ("X-Forwarded-For", "6.6.6.6, 7.7.7.7, 8.8.8.8, 127.0.0.1"),
            ("X-Forwarded-Proto", "https"), ("Forwarded", "for=6.6.6.6;proto=https, for=127.0.0.1;proto=http"),
        ]),
        ("append", "::1", [
            ("Authorization", "Bearer t"), ("X-Forwarded-For", "6.6.6.6, 7.7.7.7, 8.8.8.8, ::1"),
            ("X-Forwarded-Proto", "https"), ("Forwarded", 'for=6.6.6.6;proto=https, for="[::1]";proto=http'),
        ]),
        ("overwrite", "2001:db8::7", [
            ("Authorization", "Bearer t"), ("X-Forwarded-For", "2001:db8::7"), ("X-Forwarded-Proto", "http"),
            ("Forwarded", 'for="[2001:db8::7]";proto=http'),
        ]),
        ("overwrite", None, [
            ("Authorization", "Bearer t"), ("X-Forwarded-For", "unknown"), ("X-Forwarded-Proto", "http"),
            ("Forwarded", "for=unknown;proto=http"),
        ]),
        ("pass", "127.0.0.1", CLAIMED),
    ],
    ids=["append", "append ipv6", "overwrite ipv6", "overwrite no peer", "pass"],
)  # fmt: skip
def test_forwarding_headers_per_mode(mode: str, peer: str | None, expected: list[tuple[str, str]]) -> None:
    assert forwarding_of(CLAIMED, peer, mode) == expected


def test_append_creates_the_headers_a_client_did_not_send_and_skips_blank_ones() -> None:
    assert forwarding_of([("X-Forwarded-For", " "), ("Accept", "*/*")], "10.0.0.2", "append") == [
        ("Accept", "*/*"), ("X-Forwarded-For", "10.0.0.2"), ("X-Forwarded-Proto", "http"),
        ("Forwarded", "for=10.0.0.2;proto=http"),
    ]  # fmt: skip


_NAMES = st.sampled_from([
    "X-Forwarded-For", "x-forwarded-for", "X-Forwarded-Proto", "Forwarded", "Connection", "Keep-Alive", "Host",
    "Authorization", "Mcp-Session-Id", "X-Other", "Transfer-Encoding", "Te",
])  # fmt: skip
_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_PEERS = st.one_of(st.none(), st.ip_addresses().map(str))


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=30), _PEERS, st.sampled_from(["append", "overwrite", "pass"]))
def test_forwarding_headers_whatever_the_client_sent(items: list[tuple[str, str]], peer: str | None, mode: str) -> None:
    """No hop-by-hop header ever reaches the upstream; unless in pass mode, exactly one line of each
    forwarding header, ending with what the proxy saw (and only that when overwriting)."""
    headers = upstream_headers(items)
    forwarded(headers, peer, mode)
    assert not {name.lower() for name in headers} & {"connection", "keep-alive", "host", "transfer-encoding", "te"}
    if mode == "pass":
        return
    address = peer or "unknown"
    node = f'"[{address}]"' if ":" in address else address
    assert [len(headers.getall(name)) for name in ("X-Forwarded-For", "X-Forwarded-Proto", "Forwarded")] == [1, 1, 1]
    assert headers["X-Forwarded-For"].endswith(address)
    sent_proto = [value.strip() for name, value in items if name.lower() == "x-forwarded-proto" and value.strip()]
    # append keeps the first hop's scheme (a TLS ingress says https), else says its own
    expected_proto = sent_proto[0] if mode == "append" and sent_proto else "http"
    assert headers["X-Forwarded-Proto"] == expected_proto
    assert headers["Forwarded"].endswith(f"for={node};proto=http")
    if mode == "overwrite":
        assert (headers["X-Forwarded-For"], headers["Forwarded"]) == (address, f"for={node};proto=http")

"""Header forwarding rules and the Host/Origin allow-lists."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.config import LOOPBACK_NAMES
from proxy.headers import HostPolicy, client_headers, upstream_headers


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


def test_client_headers_keep_session_id_and_drop_framing() -> None:
    incoming = CIMultiDict(
        [("Content-Type", "text/event-stream"), ("Mcp-Session-Id", "s1"), ("Transfer-Encoding", "chunked"),
         ("Content-Length", "5"), ("Server", "upstream"), ("Date", "x"), ("Cache-Control", "no-cache")]
    )
    assert list(client_headers(incoming.items()).items()) == [
        ("Content-Type", "text/event-stream"), ("Mcp-Session-Id", "s1"), ("Cache-Control", "no-cache"),
    ]


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

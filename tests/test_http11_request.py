"""What the client writes: the request head (`proxy.upstream.http11.request.encode_head`), checked before sending.

Header names must be RFC 9110 tokens and values free of CR, LF and NUL; anything else is `InvalidHeader`
and nothing is written. Pure functions: no socket.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream.http11 import request
from proxy.upstream.http11.errors import InvalidHeader
from proxy.upstream.http11.request import Origin, encode_head

ORIGIN = Origin("http://127.0.0.1:8080/mcp")
TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def test_the_head_is_exact() -> None:
    head = encode_head(ORIGIN, "POST", [("Content-Type", "application/json"), ("X-Tab", "a\tb é")], b"{}")
    assert head == (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"X-Tab: a\tb \xc3\xa9\r\nContent-Length: 2\r\n\r\n"
    )
    assert encode_head(ORIGIN, "GET", [], None) == b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"


def test_a_client_query_follows_the_urls_own() -> None:
    assert encode_head(ORIGIN, "GET", [], None, query="t=1&u=%2F").startswith(b"GET /mcp?t=1&u=%2F HTTP/1.1\r\n")
    with_query = Origin("http://127.0.0.1:8080/mcp?key=a%20b")
    assert encode_head(with_query, "GET", [], None, query="t=1").startswith(b"GET /mcp?key=a%20b&t=1 HTTP/1.1\r\n")
    assert encode_head(with_query, "GET", [], None).startswith(b"GET /mcp?key=a%20b HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        ("tenant=attacker&key=x&other=1", "other=1"),
        ("other=1&tenant=attacker", "other=1"),
        ("t%65nant=a&k%65y&b=%74enant", "b=%74enant"),  # names compared decoded; values never matter
        ("tenant%3D=a&Tenant=b&tenant2=c&ten+ant=d", "tenant%3D=a&Tenant=b&tenant2=c&ten+ant=d"),
        ("tenant=a", ""),
        ("a=%E2%82%AC&&b", "a=%E2%82%AC&&b"),  # nothing dropped: byte for byte
    ],
)
def test_a_client_query_never_sets_a_parameter_the_urls_own_sets(query: str, sent: str) -> None:
    """The operator's parameters win, as the URL's credentials never yield to a client's."""
    origin = Origin("http://127.0.0.1:8080/mcp?tenant=operator&k%65y=ops+secret")
    target = b"/mcp?tenant=operator&k%65y=ops+secret" + (b"&" + sent.encode() if sent else b"")
    assert encode_head(origin, "GET", [], None, query=query).startswith(b"GET " + target + b" HTTP/1.1\r\n")
    spaced = Origin("http://127.0.0.1:8080/mcp?my+name=x")
    assert encode_head(spaced, "GET", [], None, query="my%20name=y&z=1").startswith(b"GET /mcp?my+name=x&z=1 HTTP")


@pytest.mark.parametrize(
    "name",
    ["", "X A", "X:A", "X\tA", "X\x00A", "X\x7fA", "Ümlaut", "X-A\r\nX-B", "(comment)", "a/b", "a@b", 'a"b', "{a}", "a\\b"],
)
def test_a_header_name_that_is_not_a_token_is_refused(name: str) -> None:
    with pytest.raises(InvalidHeader, match="is not a token"):
        encode_head(ORIGIN, "POST", [(name, "v")], b"{}")


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nX-Injected: 1", "a\x00b", "\n"])
def test_a_value_with_cr_lf_or_nul_is_refused_naming_the_header_but_not_the_value(value: str) -> None:
    with pytest.raises(InvalidHeader) as refused:
        encode_head(ORIGIN, "POST", [("Accept", "x"), ("X-Secret", value)], b"{}")
    assert str(refused.value) == "the value of header X-Secret contains a line break or NUL (CR, LF, NUL cannot be sent)"


@pytest.mark.parametrize("method", ["", "GET POST", "GET\r\n", "G:T"])
def test_a_method_that_is_not_a_token_is_refused(method: str) -> None:
    with pytest.raises(InvalidHeader, match="method"):
        encode_head(ORIGIN, method, [], None)


@given(st.text(alphabet=TCHARS, min_size=1, max_size=30))
def test_every_token_is_a_name(name: str) -> None:
    assert f"\r\n{name}: v\r\n".encode() in encode_head(ORIGIN, "POST", [(name, "v")], None)


@given(st.text(min_size=1, max_size=30).filter(lambda name: any(char not in TCHARS for char in name)))
def test_no_other_name_is(name: str) -> None:
    with pytest.raises(InvalidHeader):
        encode_head(ORIGIN, "POST", [(name, "v")], None)


@pytest.mark.parametrize(
    ("headers", "lend", "lent"),
    [
        ([], True, True),
        ([("authorization", "Bearer t")], True, False),
        ([("AUTHORIZATION", "Bearer t")], True, False),
        ([("aUtHoRiZaTiOn", "Bearer t")], True, False),
        ([], False, False),
    ],
)
def test_the_urls_credentials_are_lent_only_to_a_request_without_its_own(
    headers: list[tuple[str, str]], lend: bool, lent: bool
) -> None:
    origin = Origin("http://bot:s3cret@127.0.0.1/mcp")
    head = encode_head(origin, "POST", headers, b"{}", lend_credentials=lend)
    assert (b"Authorization: Basic Ym90OnMzY3JldA==\r\n" in head) is lent


def test_remembered_names_stay_bounded_and_unremembered_ones_are_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request, "_NAMES", {})
    monkeypatch.setattr(request, "_MAX_NAMES", 3)
    for index in range(10):
        encode_head(ORIGIN, "POST", [(f"X-{index}", "v")], None)
    assert list(request._NAMES) == ["X-0", "X-1", "X-2"]
    with pytest.raises(InvalidHeader):
        encode_head(ORIGIN, "POST", [("X 11", "v")], None)
    assert len(request._NAMES) == 3

"""The same scripted upstream exchanges through aiohttp's client and ours: the same answer, or both refuse.

A raw server on 127.0.0.1 answers each request on a connection with the next scripted bytes (then, if the
script says so, closes). Each script runs twice, on a fresh server: once through `aiohttp.ClientSession`,
once through our `ConnectionPool`; each side's outcome is reduced to the status, the reason, the raw header
lines and the body (or "refused"), plus how many connections the server accepted. Where the two clients
legitimately differ, the test says so explicitly: our deliberate bounds (a status outside 100-599, a 101,
obsolete line folding, more than 100 header lines or 10 interim heads), aiohttp's narrower one (8 KiB
per header line) and whitespace after a value (aiohttp strips it, llhttp and we pass it on).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import aiohttp
import pytest

from proxy.upstream.http11.client import ConnectionPool, Origin
from proxy.upstream.http11.errors import BadResponse, ConnectionBroken, ResponseTooLarge
from tests.test_http_client import read_request

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass(frozen=True)
class Script:
    """What the upstream sends: `answers[i]` to the i-th request on a connection, then a close if `close`."""

    answers: tuple[bytes, ...]
    close: bool = False
    method: str = "POST"


@dataclass(frozen=True)
class Outcome:
    answers: tuple[tuple[int, str, tuple[tuple[bytes, bytes], ...], bytes], ...]
    refused: bool
    connections: int


class ScriptedServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/mcp"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            for answer in self.script.answers:
                await read_request(reader)
                writer.write(answer)
                await writer.drain()
            if not self.script.close:
                await reader.read()  # keep the connection open until the client closes it
        writer.close()


async def through_aiohttp(script: Script) -> Outcome:
    server = ScriptedServer(script)
    answers = []
    refused = False
    async with server as url:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            try:
                for _ in script.answers:
                    async with session.request(script.method, url, data=b"{}") as response:
                        body = await response.read()
                        answers.append((response.status, response.reason or "", tuple(response.raw_headers), body))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                refused = True
    return Outcome(tuple(answers), refused, server.connections)


async def through_ours(script: Script) -> Outcome:
    server = ScriptedServer(script)
    answers = []
    refused = False
    async with server as url, ConnectionPool(Origin(url), 1, 30.0, 5.0) as pool:
        try:
            for _ in script.answers:
                async with await pool.request(script.method, [], b"{}") as response:
                    body = await response.read()
                    raw = tuple(
                        (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
                        for name, value in response.header_items
                    )
                    answers.append((response.status, response.reason, raw, body))
        except (BadResponse, ConnectionBroken, ResponseTooLarge):
            refused = True
    return Outcome(tuple(answers), refused, server.connections)


async def both(script: Script) -> tuple[Outcome, Outcome]:
    async with asyncio.timeout(10):
        return await through_aiohttp(script), await through_ours(script)


CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

SAME = {
    "content-length": Script((OK,)),
    "keep-alive reuse": Script((OK, OK.replace(b"{}", b"[]"), OK)),
    "chunked": Script((CHUNKED + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", OK)),
    "chunk extensions and trailers": Script(
        (CHUNKED + b"3;name=value;flag\r\nabc\r\n1;x=\"q\"\r\nd\r\n0\r\nX-Trailer: t\r\nX-Other: 2\r\n\r\n", OK)
    ),
    "hex chunk sizes": Script((CHUNKED + b"A\r\n0123456789\r\n0010\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", OK)),
    "close-delimited": Script((b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",), close=True),
    "http/1.0 close-delimited": Script((b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold",), close=True),
    "connection: close with a length": Script(
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",), close=True
    ),
    "100 continue": Script((b"HTTP/1.1 100 Continue\r\n\r\n" + OK, OK)),
    "103 early hints": Script((b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" + OK, OK)),
    "204 no content": Script((b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", OK)),
    "head with a length and no body": Script(
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n",), method="HEAD"
    ),
    "empty reason": Script((b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n{}", OK)),
    "no reason": Script((b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}", OK)),
    "repeated headers in order": Script((b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nx-a: 3\r\nContent-Length: 0\r\n\r\n",)),
    "obs-text value": Script((b"HTTP/1.1 200 OK\r\nX-Name: caf\xc3\xa9 \xff\r\nContent-Length: 0\r\n\r\n",)),
    "100 header lines": Script((b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 99 + b"Content-Length: 0\r\n\r\n",)),
    "10 interim heads": Script((b"HTTP/1.1 103 Early Hints\r\n\r\n" * 10 + OK,)),
}
"""Answers both clients read alike (status, reason, header lines, body, connections used)."""

REFUSED = {
    "malformed status line": Script((b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",)),
    "not http": Script((b"SSH-2.0-OpenSSH_9.6\r\n\r\n",)),
    "bad chunk size": Script((CHUNKED + b"zz\r\nab\r\n0\r\n\r\n",)),
    "chunk without its CRLF": Script((CHUNKED + b"3\r\nabcX0\r\n\r\n",)),
    "duplicate content-length": Script((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",)),
    "content-length that is not a number": Script((b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\n{}",)),
    "negative content-length": Script((b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}",)),
    "chunked and content-length": Script(
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",)
    ),
    "space before the colon": Script((b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n",)),
    "header name with a space": Script((b"HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 0\r\n\r\n",)),
    "NUL in a value": Script((b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",)),
    "body cut short by the close": Script((b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",), close=True),
    "chunked body cut short by the close": Script((CHUNKED + b"a\r\nabc",), close=True),
    "closed before any answer": Script((b"",), close=True),
    "head over 64 KiB": Script((b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (64 * 1024) + b"\r\nContent-Length: 0\r\n\r\n",)),
}
"""Answers both clients refuse (each with its own exception)."""


@pytest.mark.parametrize("name", SAME)
async def test_both_clients_read_the_same_answer(name: str) -> None:
    theirs, ours = await both(SAME[name])
    assert not theirs.refused, theirs
    assert ours == theirs


@pytest.mark.parametrize("name", REFUSED)
async def test_both_clients_refuse(name: str) -> None:
    theirs, ours = await both(REFUSED[name])
    assert theirs.refused and ours.refused
    assert ours.answers == theirs.answers == ()


# -- where the two differ, on purpose ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["304 with a length and no body", "error status with a body", "413"],
)
async def test_we_do_not_reuse_a_connection_after_a_non_2xx_answer_to_a_request_with_a_body(answer: bytes) -> None:
    """Both read the same answer, but only aiohttp reuses its connection: the server may have answered
    before reading the body, left in its socket, which the next request on the connection would follow
    (`proxy.upstream.http11.connection`). Ours opens a new one (where the script starts over)."""
    theirs, ours = await both(Script((answer, OK)))
    assert not theirs.refused and not ours.refused
    assert ours.answers[0] == theirs.answers[0] == ours.answers[1]
    assert (theirs.connections, ours.connections) == (1, 2)


@pytest.mark.parametrize(
    "script",
    [
        Script((b"HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\n{}",)),
        Script((b"HTTP/1.1 999 Beyond\r\nContent-Length: 2\r\n\r\n{}",)),
    ],
    ids=["600", "999"],
)
async def test_we_refuse_a_status_outside_100_to_599_that_aiohttp_passes_on(script: Script) -> None:
    """RFC 9110 §15 defines 100-599; a proxy passing 600-999 on would hand its client a status that means
    nothing. aiohttp, a general client, returns what llhttp parsed."""
    theirs, ours = await both(script)
    assert ours.refused and ours.answers == ()
    assert not theirs.refused and theirs.answers[0][0] in (600, 999)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
    ids=["upgrade", "bare"],
)
async def test_we_refuse_a_101_that_aiohttp_returns(answer: bytes) -> None:
    """MCP never asks to switch protocols, and after a 101 the connection is no longer HTTP: we refuse it
    (`BadResponse`) rather than hand a caller a response whose body is another protocol's bytes."""
    theirs, ours = await both(Script((answer,)))
    assert ours.refused and ours.answers == ()
    assert not theirs.refused and theirs.answers[0][0] == 101


async def test_we_refuse_obsolete_line_folding_that_aiohttp_unfolds() -> None:
    """llhttp in strict mode refuses a header continued on the next line (obs-fold, deprecated by RFC 9112
    §5.2 and a classic way to make two parsers disagree about a header); aiohttp's parser unfolds it."""
    theirs, ours = await both(Script((b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",)))
    assert ours.refused and ours.answers == ()
    assert not theirs.refused and theirs.answers[0][2][0] == (b"X-A", b"a b")


async def test_we_refuse_a_101st_header_line_that_aiohttp_accepts() -> None:
    """`MAX_RESPONSE_HEADERS` (Envoy's default): an MCP answer needs a handful; thousands of tiny header
    lines are only work and memory. aiohttp bounds the size of each line, not their number."""
    theirs, ours = await both(Script((b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 100 + b"Content-Length: 0\r\n\r\n",)))
    assert ours.refused and ours.answers == ()
    assert not theirs.refused and len(theirs.answers[0][2]) == 101


async def test_we_refuse_an_11th_interim_head_that_aiohttp_reads_past() -> None:
    """`MAX_INTERIM_RESPONSES`: an endless run of 1xx heads would hold a request on bytes that are never an
    answer; aiohttp reads interim heads without a bound."""
    theirs, ours = await both(Script((b"HTTP/1.1 103 Early Hints\r\n\r\n" * 11 + OK,)))
    assert ours.refused and ours.answers == ()
    assert not theirs.refused and theirs.answers[0][0] == 200


async def test_aiohttp_drops_whitespace_after_a_value_that_we_pass_on() -> None:
    """Whitespace after a value is not part of it (RFC 9110 §5.5), but a field line may carry it: llhttp
    keeps it and so do we (stripping every value would cost every call); aiohttp strips it. A recipient of
    the header as we pass it on reads the same value."""
    theirs, ours = await both(Script((b"HTTP/1.1 200 OK\r\nX-A: \t a b \t\r\nContent-Length: 0\r\n\r\n",)))
    assert theirs.answers[0][2][0] == (b"X-A", b"a b")
    assert ours.answers[0][2][0] == (b"X-A", b"a b \t")


async def test_aiohttp_refuses_a_header_line_over_8_kib_that_we_accept() -> None:
    """aiohttp bounds each header line at 8190 bytes; we bound the head as a whole (`MAX_HEAD_BYTES`,
    64 KiB): one long header (a large cookie, a token) is an upstream's right."""
    theirs, ours = await both(Script((b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",)))
    assert theirs.refused
    assert not ours.refused and ours.answers[0][2][0] == (b"X-Big", b"a" * 9000)

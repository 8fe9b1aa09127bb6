"""A call's SSE answer that breaks before its final response is carried on under the client's open stream.

Raw upstreams script each exchange byte for byte, so what the proxy sends (the resuming GET, its headers,
a second POST) and what the client receives are exact:

* with event ids and a legacy session, the proxy resumes the answer itself (GET, ``Last-Event-ID``, the
  session id): the client gets the whole answer on one stream and never sees the break;
* when the server cannot resume it (404: it restarted), an idempotent call none of whose content reached
  the client is sent again and its answer continues the stream; a call that is not idempotent, or whose
  content had started, ends with the JSON-RPC error event carrying its id.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from proxy.app import running_proxy
from tests.conftest import proxy_config
from tests.test_broken_server import CALL, END, FINAL, PROGRESS, SSE_HEAD, chunk, event, events_of
from tests.test_http_client import RawServer, read_request

SESSION = "sess-1"
HEADERS = {"Accept": "application/json, text/event-stream", "Mcp-Session-Id": SESSION, "MCP-Protocol-Version": "2025-11-25"}
PRIMING = b"id: 1\ndata: \n\n"
NOT_FOUND = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}'


def json_answer(status: int, body: bytes) -> bytes:
    reason = {200: b"OK", 404: b"Not Found"}[status]
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (status, reason, len(body))
    return head + body


class Script:
    """Answers each request by its method and counts them: POSTs of the call, GETs (and their heads)."""

    def __init__(self, *, get_answers: bool, repost: bytes | None = None, first: bytes = PRIMING, clean: bool = False) -> None:
        self.get_answers = get_answers
        self.repost = repost
        self.first = first
        self.clean = clean
        """End the first answer cleanly (its chunked end) instead of breaking the connection."""
        self.posts = 0
        self.gets: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            raw = await read_request(reader)
            if raw.startswith(b"GET"):
                self.gets.append(raw)
                if self.get_answers:
                    writer.write(SSE_HEAD + chunk(b"id: 3\n" + event(FINAL)) + END)
                else:
                    writer.write(json_answer(404, NOT_FOUND))
                await writer.drain()
                continue
            self.posts += 1
            if self.posts == 1:
                writer.write(SSE_HEAD + chunk(self.first) + (END if self.clean else b""))
                await writer.drain()
                if self.clean:
                    continue
                return  # the connection breaks
            assert self.repost is not None, "no second POST expected"
            writer.write(self.repost)
            await writer.drain()


async def call_through(script: Script, config: dict[str, Any] | None = None) -> tuple[int, bytes, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=config or {})) as proxy:
        proxy.bus.listeners.append(events.append)
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/mcp", json=CALL, headers=HEADERS) as response:
                return response.status, await response.read(), events


async def test_an_answer_with_event_ids_is_resumed_on_its_session_and_the_client_never_sees_the_break() -> None:
    script = Script(get_answers=True, first=PRIMING + b"id: 2\n" + event(PROGRESS))
    status, body, events = await call_through(script)
    assert status == 200
    assert [e.data for e in events_of(body) if e.data] == [PROGRESS.decode(), FINAL.decode()]
    (get,) = script.gets
    assert b"\r\nlast-event-id: 2\r\n" in get.lower() and f"\r\nmcp-session-id: {SESSION}\r\n".encode() in get.lower()
    assert script.posts == 1
    (resumed,) = [e for e in events if e["type"] == "stream_resumed"]
    assert (resumed["stream"], resumed["from_event_id"]) == ("answer", True)
    assert not [e for e in events if e["type"] == "call_failed"]


async def test_a_server_that_cannot_resume_it_gets_an_idempotent_call_again_before_any_content() -> None:
    script = Script(get_answers=False, repost=json_answer(200, FINAL))
    idempotent = {"rules": [{"match": {"tool": "x"}, "idempotent": True}]}
    status, body, _ = await call_through(script, idempotent)
    assert status == 200
    assert [e.data for e in events_of(body) if e.data] == [FINAL.decode()]
    assert (len(script.gets), script.posts) == (1, 2)


async def test_a_call_that_is_not_idempotent_ends_with_the_error_event_and_is_sent_once() -> None:
    script = Script(get_answers=False)
    status, body, events = await call_through(script)
    assert status == 200
    (last,) = [e for e in events_of(body) if e.data]
    assert '"id":9' in last.data and '"upstream_stream_broken"' in last.data
    assert (len(script.gets), script.posts) == (1, 1)
    assert [e["type"] for e in events if e["type"] == "call_failed"] == ["call_failed"]


async def test_an_idempotent_call_whose_content_reached_the_client_is_not_sent_again() -> None:
    script = Script(get_answers=False, first=PRIMING + b"id: 2\n" + event(PROGRESS))
    idempotent = {"rules": [{"match": {"tool": "x"}, "idempotent": True}]}
    status, body, _ = await call_through(script, idempotent)
    assert status == 200
    datas = [e.data for e in events_of(body) if e.data]
    assert datas[0] == PROGRESS.decode() and '"upstream_stream_broken"' in datas[1] and len(datas) == 2
    assert (len(script.gets), script.posts) == (1, 1)


async def test_a_stream_the_server_ends_cleanly_after_event_ids_is_left_to_the_client_to_poll() -> None:
    """2025-11-25 polling: the server closes the stream on purpose after an event id and expects the client
    to reconnect with Last-Event-ID (the conformance suite's server-sse-disconnect-resume): the proxy ends
    the client's stream cleanly, adds nothing, and does not reconnect in its place."""
    script = Script(get_answers=True, first=PRIMING + b"id: 2\n" + event(PROGRESS), clean=True)
    status, body, events = await call_through(script)
    assert status == 200
    assert [e.data for e in events_of(body) if e.data] == [PROGRESS.decode()]
    assert (script.gets, script.posts) == ([], 1)
    assert not [e for e in events if e["type"] in ("stream_resumed", "call_failed")]

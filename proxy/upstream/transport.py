"""The only module that speaks to upstreams, and the boundary where HTTP client errors become ours.

One `proxy.upstream.http11.client.ConnectionPool` per upstream is its keep-alive pool (why not aiohttp's client:
that module's docstring). A JSON answer is read whole (bounded), so the pipeline can classify it before
anything reaches the client; an SSE answer is handed back as a stream right after its headers, to be
passed through chunk by chunk. Errors map to `proxy.errors` in one place, `upstream_errors`, each raised
``from`` the client's own (so a traceback still shows what the socket said):

- connect refused, DNS failure, connect timeout: `NeverSent`, the request provably did not leave, so
  any call may be retried (a per-try timeout that ends before the request was written becomes
  `NeverSent` too, in the timeout stage, from `Attempt.written`);
- no free pooled connection in time (every connection busy), or this machine out of file descriptors,
  buffers or local ports: `ProxyOverloaded`, the proxy's own condition, which says nothing about the
  upstream (`Attempt.queued` tells the timeout stage the same);
- an answer over `limits.max_response_bytes`: `AnswerTooLarge` (our limit, not a broken server);
- a header the client sent that cannot be written (a line break in it): `UnsendableRequest`;
- the per-try timeout after the request was written: `UpstreamTimeout` (the upstream may be executing);
- a connection that broke after sending: `UpstreamUnavailable`;
- a status line and headers that are not valid HTTP: `UpstreamProtocolError`;
- an answer that is another request's (`AnswerTo`; in an SSE answer, the watcher's `Seen.stray`):
  `UpstreamProtocolError`, its connection closed;
- an SSE stream that breaks or turns invalid: `StreamBroken` (`UpstreamUnavailable` for a read being
  buffered, which can still be retried); silent past `stream_idle`: `StreamSilent` (for a read being
  buffered, `UpstreamTimeout`, excused like a silent stream: retried as a timeout, counted against nothing).

A 204 or 304 is read as what it is, an answer without a body, whatever its Content-Type; an SSE answer in a
content coding is never read (`encoded`): it passes on as the server sent it, unwatched.

Every request carries its downstream client connection (`Call.owner`), and an upstream connection serves
one owner only (`proxy.upstream.http11.client`, connection affinity): an upstream's stray answer (a late
duplicate, an answer to a request hidden in an earlier body) can then only reach the client whose exchange
it garbled. Every JSON answer to a JSON-RPC request is also checked to be *its* answer (`AnswerTo`), as the
SSE path does with its watcher (`proxy.mcp.sse.SSEWatcher`), so a client does not get (and the cache does
not store) an answer with another id; the connection it came on is closed. The check cannot tell two
requests with the same id apart, nor read what does not parse: affinity is what keeps clients apart, the
check what keeps one client's exchanges in step.

What is parsed is bounded: a client's answer with more than `MAX_PARSED_CONTAINERS` objects and arrays is
passed on unparsed, and a health probe reads at most `PROBE_MAX_RESPONSE_BYTES`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NamedTuple

import orjson
import structlog

from proxy.config.model import LimitsConfig, UpstreamConfig
from proxy.deadlines import DeadlineClock
from proxy.errors import (
    AnswerTooLarge,
    NeverSent,
    ProxyOverloaded,
    StreamBroken,
    StreamEndedEarly,
    StreamSilent,
    UnsendableRequest,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.errors import ProxyError
from proxy.mcp.headers import client_headers
from proxy.mcp.jsonrpc import LONG_LIVED_METHODS, MAX_PARSED_CONTAINERS, Kind, Message, answers, too_many_containers
from proxy.mcp.sse import Seen, SSEWatcher
from proxy.policies.base import Attempt, Reply
from proxy.upstream.http11.client import (
    BadResponse,
    ConnectFailed,
    ConnectionBroken,
    ConnectionPool,
    InvalidHeader,
    LocalExhaustion,
    Origin,
    Response,
    ResponseTooLarge,
)

__all__ = ["AnswerTo", "HttpUpstream", "ReadAhead", "SSEBody", "encoded", "lf_of_crlf", "upstream_errors"]

log = structlog.get_logger("proxy")

_EVENT_STREAM = "text/event-stream"
_NO_BODY = frozenset({204, 304})
"""Statuses whose answer has no body whatever its headers say (RFC 9110 §15.3.5, §15.4.5): never a stream."""

PROBE_MAX_RESPONSE_BYTES = 1024 * 1024
"""The most a health probe reads of an answer (ping, server/discover, initialize answers are small). A
probe parses with no client waiting and no timeout able to interrupt a parse: a larger answer is a failed
probe (`upstream_bad_response`), not memory."""
PROBE_CONNECTIONS = 2
"""Connections the health probes of one upstream may use: their own, never the clients'."""


class _Boundary:
    """Where the HTTP client's exceptions, asyncio's timeouts and the OS's errors become the proxy's own.

    ``with upstream_errors(...) as boundary:`` around one exchange, or one stream's reading: an exception
    leaving the block abandons the answer being read (`boundary.response`, set once there is one: its
    connection is closed, never reused half-read) and, when it is a foreign one, leaves as the most specific
    `proxy.errors` class, raised ``from`` the original (the table in the module docstring; httpx's
    `map_httpcore_exceptions` is the model). The proxy's own errors, cancellation and anything unforeseen
    pass unchanged. `streaming`: the answer's head was passed on already, so a failure is the stream's
    (`StreamBroken`, `StreamSilent` past `timeout`), no longer the exchange's."""

    __slots__ = ("_streaming", "_timeout", "_too_large", "_upstream", "response")

    def __init__(
        self,
        upstream: str,
        timeout: float | None,
        *,
        streaming: bool = False,
        too_large: Callable[[], ProxyError] | None = None,
    ) -> None:
        self._upstream = upstream
        self._timeout = timeout
        self._streaming = streaming
        self._too_large = too_large
        self.response: Response | None = None

    def __enter__(self) -> _Boundary:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: object) -> None:
        if exc is None:
            return
        if self.response is not None:
            self.response.close()
        if isinstance(exc, ProxyError):
            return
        error = self._ours(exc)
        if error is not None:
            raise error from exc

    def _ours(self, exc: BaseException) -> ProxyError | None:
        """The proxy's error for foreign `exc`, most specific first (TimeoutError is an OSError), or None."""
        upstream = self._upstream
        if self._streaming:
            if isinstance(exc, TimeoutError):
                return StreamSilent(f"upstream stream silent for more than {self._timeout:g}s", upstream=upstream)
            if isinstance(exc, ConnectionBroken | BadResponse | OSError):
                return StreamBroken(f"upstream stream broke: {_describe(exc)}", upstream=upstream)
            return None
        if isinstance(exc, LocalExhaustion):
            return ProxyOverloaded(f"the proxy is out of resources: {exc}; the request was not sent", upstream=upstream)
        if isinstance(exc, ConnectFailed):
            return NeverSent(f"cannot connect to upstream: {exc}", upstream=upstream)
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"upstream did not answer within {self._timeout:g}s", upstream=upstream)
        if isinstance(exc, ResponseTooLarge) and self._too_large is not None:
            return self._too_large()
        if isinstance(exc, BadResponse):
            return UpstreamProtocolError(f"upstream answer is not valid HTTP: {exc}", upstream=upstream)
        if isinstance(exc, InvalidHeader):
            return UnsendableRequest(f"request not sent: {exc}", upstream=upstream)
        if isinstance(exc, ConnectionBroken | OSError):
            return UpstreamUnavailable(f"upstream connection failed: {_describe(exc)}", upstream=upstream)
        return None


upstream_errors = _Boundary
"""The error-mapping boundary (`_Boundary`): every call into the HTTP client runs inside one."""


class SSEBody:
    """An upstream SSE body, passed on chunk by chunk; silence longer than `idle` breaks it (`StreamSilent`).

    It is its own iterator, for the body's whole life: a reader that stops early (buffering a read that
    turns out to ask the client something) hands the *same* iterator on. A dropped body (never closed) is
    no cycle: its response is freed, and the connection with it."""

    __slots__ = ("_boundary", "_clock", "_idle", "_response", "_silent")

    def __init__(self, response: Response, idle: float | None, upstream: str, clock: DeadlineClock) -> None:
        self._response = response
        self._idle = idle
        self._clock = clock
        self._silent = False
        self._boundary = upstream_errors(upstream, idle, streaming=True)
        self._boundary.response = response

    def __aiter__(self) -> SSEBody:
        return self

    async def __anext__(self) -> bytes:
        """The body that arrived since the last chunk, waiting (at most `idle`) for some; the end stops."""
        with self._boundary:
            if self._idle is None:
                chunk = await self._response.next_chunk()
            else:
                clock = self._clock
                clock.waiting(self, clock.now() + self._idle)
                try:
                    chunk = await self._response.next_chunk()
                finally:
                    clock.done(self)
                if self._silent:
                    raise TimeoutError  # the boundary says StreamSilent
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def expire(self) -> None:
        """Silent past `idle` (`proxy.deadlines.DeadlineClock`): the connection is closed, which ends the waiting read."""
        self._silent = True
        self._response.close()

    def discard_rest(self) -> None:
        """Done reading (the final response is in): the stream's end is drained in the background and
        the connection reused, rather than reset under a server that is about to close it cleanly."""
        self._response.discard_rest()

    async def close(self) -> None:
        """Abandon the stream: the connection is closed, not returned half-read to the pool."""
        self._response.close()


class ReadAhead:
    """An SSE answer a buffered read began, then handed on: `read`, the bytes it read, then `rest`.

    A read is handed on when the server asks the client something on the way (it waits for that answer),
    sends a progress notification (a client may reset its timeout on one: the TypeScript SDK's
    ``resetTimeoutOnProgress``; held until the read ended, it timed out through the proxy, and `per_try`
    cut a read visibly progressing and retried it, the server doing the work twice), or sends an event
    too large, or impossible, to read. Handed on, the read is committed: not retried, not cached. `watcher` has seen `read` already, and `early`
    holds what it saw there that the relay must still act on: the kinds of list announced changed, the
    event that handed the stream on, and whatever came after it in the same chunk (the final response
    among them: a server may ask and answer in one write; `read` then ends with that response's event).
    The relay passes `read` on, acts on `early`, and goes on watching `rest` with the same watcher, so no
    event is parsed twice. Iterating it gives `read`, then `rest`.
    """

    __slots__ = ("early", "read", "rest", "watcher")

    def __init__(self, read: bytes, rest: SSEBody, watcher: SSEWatcher, early: tuple[Seen, ...]) -> None:
        self.read = read
        self.rest = rest
        self.watcher = watcher
        self.early = early

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        yield self.read
        async for chunk in self.rest:
            yield chunk

    async def close(self) -> None:
        await self.rest.close()


class AnswerTo(NamedTuple):
    """What a JSON answer must answer: a request's id, or a batch's request ids (`batch`).

    A JSON-RPC response in the answer (an object with ``"jsonrpc": "2.0"`` and a result or an error) that
    carries any other id is a stray: `upstream_bad_response`, and the connection is not reused. Ids are
    compared as JSON-RPC values (`proxy.mcp.jsonrpc.same_id`, as the SSE watcher does): numbers as doubles,
    so ``1.0`` echoed for ``1``, or a JavaScript server's rounding of an id past 2^53, is the answer. Not a
    stray, and so delivered:

    - an *error* with id null (or none): JSON-RPC's own way to answer what the server could not
      attribute (a -32700 or -32600 to a request it failed to read). To our well-formed request that is
      still the server's answer to it, and nothing in it belongs to another client;
    - an *error* on a status other than 2xx: the HTTP layer's refusal of this request (no session, a
      wrong Accept), where servers fill the id as they please: null, none, the request's, or
      ``"server-error"`` (the Python SDK before 2.0). A stray application answer comes as a 2xx;
    - JSON that is not a JSON-RPC response at all (an OAuth ``{"error": "invalid_token"}``, a proxy's
      page): it is no other client's answer either.

    A batch answer (an array) to a request that is not a batch is a stray; an answer to a message that
    asks for none (a notification, a client's response) may carry no id but null. (A named tuple: one is
    made per attempt.)
    """

    ids: frozenset[str | int]
    batch: bool = False

    @classmethod
    def of(cls, message: Message) -> AnswerTo:
        """The answer `message` is owed: its id, a batch's request ids, or (notifications) none."""
        if message.kind is Kind.BATCH:
            return cls(frozenset(i.id for i in message.items if i.kind is Kind.REQUEST and i.id is not None), batch=True)
        if message.kind is Kind.REQUEST and message.id is not None:
            return cls(frozenset((message.id,)))
        return cls(frozenset())

    def stray(self, answer: Any, status: int) -> bool:
        """True when the parsed JSON `answer` (arriving with HTTP `status`) answers some other request."""
        if isinstance(answer, list):
            return any(_is_response(item) and (not self.batch or not self._answers(item, status)) for item in answer)
        return _is_response(answer) and not self._answers(answer, status)

    def _answers(self, response: dict[str, Any], status: int) -> bool:
        return answers(response, self.ids, not 200 <= status < 300)


def _is_response(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and item.get("jsonrpc") == "2.0"
        and "method" not in item
        and ("result" in item or "error" in item)
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class HttpUpstream:
    """One upstream MCP endpoint behind one keep-alive pool."""

    def __init__(self, config: UpstreamConfig, limits: LimitsConfig, *, url: str | None = None) -> None:
        self.config = config
        """The upstream's config; a reload that keeps the connection settings updates it in place."""
        self.name = config.name
        self._url = url or config.url or ""
        """Where the pool connects: the config's URL (`url`: a stdio child's gateway, `proxy.upstream.stdio`)."""
        self._origin = Origin(self._url)  # parsed once, not on every request
        self._max_response = limits.max_response_bytes
        self._pool: ConnectionPool | None = None
        self._probe_pool: ConnectionPool | None = None
        self._retired = False
        self._idle_clock = DeadlineClock()

    async def start(self) -> None:
        """Open the pools. Called from the app's cleanup context, inside the running loop.

        Health probes get a pool of their own (`PROBE_CONNECTIONS`): a probe measures the upstream, so it
        must never queue behind client calls that fill the main pool (a full pool would read as a dead
        upstream and pull /readyz)."""
        pool = self.config.pool
        connect = self.config.timeouts.connect
        self._pool = ConnectionPool(self._origin, pool.max_connections, pool.keepalive_timeout, connect)
        self._probe_pool = ConnectionPool(self._origin, PROBE_CONNECTIONS, pool.keepalive_timeout, connect)

    def same_connection(self, config: UpstreamConfig, limits: LimitsConfig) -> bool:
        """True when `config` needs exactly this pool (same URL, pool and connect settings, same limits)."""
        return (
            (config.url or "") == (self.config.url or "")
            and config.pool == self.config.pool
            and config.timeouts.connect == self.config.timeouts.connect
            and limits.max_response_bytes == self._max_response
        )

    def retiring(self) -> None:
        """A reload replaced this upstream; it closes once the calls begun on it had their drain time. An
        HTTP pool has nothing to do meanwhile (a stdio upstream moves its streams: `StdioUpstream`)."""

    async def close(self) -> None:
        self._retired = True
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._probe_pool is not None:
            await self._probe_pool.close()
            self._probe_pool = None

    def _pool_for(self, probe: bool) -> ConnectionPool:
        if probe and self._probe_pool is not None:
            return self._probe_pool
        return self.pool

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            if self._retired:  # closed by a reload (or shutdown) while a call still retries on it
                raise NeverSent("the upstream's connection pool is closed", upstream=self.name)
            raise RuntimeError(f"upstream {self.name} is not started")
        return self._pool

    async def send(self, attempt: Attempt) -> Reply:
        """One attempt of a JSON-RPC request. Its time limit is the timeout stage's (`policies/timeout.py`),
        to which it reports on `attempt` whether the request was written and whether it queued.

        For `call.buffered` calls (read methods) an SSE answer is read whole, up to its final response,
        so it can still be retried or cached: nothing has reached the client yet.
        """
        call = attempt.call
        timeouts = call.policy.timeouts
        idle = None if call.method in LONG_LIVED_METHODS else timeouts.stream_idle

        def written() -> None:
            attempt.written = True

        def queued(waiting: bool) -> None:
            attempt.queued = waiting
            attempt.waited = attempt.waited or waiting

        reply = await self.exchange(
            "POST", call.headers, call.body, None, idle, written, queued,
            answer_to=AnswerTo.of(call.message), lend_credentials=call.lend_credentials, owner=call.owner,
            query=call.query,
        )  # fmt: skip
        if call.buffered and reply.stream is not None:
            return await self._buffer_stream(reply, call.message.id)
        return reply

    async def request(
        self, headers: Mapping[str, str], body: bytes, request_id: str | int | None, timeout: float, *, probe: bool = True
    ) -> Reply:
        """One standalone JSON-RPC exchange (health probes, on their own pool; a session's rebuild, on the
        main one: `proxy.sessions.keeper`): the answer read whole, JSON or SSE, within `timeout`."""
        with upstream_errors(self.name, timeout):
            async with asyncio.timeout(timeout):
                answer_to = AnswerTo(frozenset(() if request_id is None else (request_id,)))
                reply = await self.exchange("POST", headers, body, None, None, probe=probe, answer_to=answer_to)
                if reply.stream is not None:
                    reply = await self._buffer_stream(reply, request_id, probe=probe)
                    if reply.stream is not None:  # the server asked a question nobody here can answer
                        await reply.stream.close()
                        raise UpstreamProtocolError(
                            "upstream asked the client a question during a standalone request", upstream=self.name
                        )
                return reply

    async def _buffer_stream(self, reply: Reply, request_id: str | int | None, probe: bool = False) -> Reply:
        """Read an SSE answer up to the final response to `request_id`; return it as a buffered reply.

        The body ends with the final response's event (what a server sends after it is drained, not
        delivered, as the relay does for a streamed answer), including the LF of a CRLF that came cut after
        its CR. If the stream ends first but gave event ids, the bytes so far are returned as they are: the
        client resumes with Last-Event-ID (2025-11-25 polling). Without ids it is a lost connection, or,
        silent past `stream_idle`, a timeout excused from counting (`UpstreamTimeout`, as the failure
        table says of a silent stream). Another request's answer in it (a stray) is dropped, never read
        into the body, and the read goes on to its own response (a warning logged once per stream), as an
        SDK client ignores an unknown id; if none comes, the stream ended unanswered.

        If the server sends the client a request on the way (sampling, elicitation, roots), buffering
        stops at once: the server waits for that answer, so the stream is handed on (`ReadAhead`: what
        was read, then the rest) and the call is committed, as any streamed answer is. So it is at a
        progress notification (not for a probe): a client that resets its timeout on progress must see it
        as it comes. So it is, unread,
        when an event that may be the response cannot be read (`Seen.unparsed`; a probe's answer then
        fails), or is too large, and an answer in a content coding is handed on as it is, unread (the
        proxy cannot see its events).

        The watcher is bounded by `limits.max_response_bytes` as the relay's is: the read itself stops
        there, and a stream handed on keeps the same watcher for the rest.
        """
        stream = reply.stream
        assert isinstance(stream, SSEBody)
        if encoded(reply.headers):
            if not probe:
                return reply  # unwatched: the relay passes it on as it is
            await stream.close()
            raise UpstreamProtocolError("the health probe's SSE answer is content-encoded", upstream=self.name)
        watcher = SSEWatcher(request_id, self._max_response, reply.status)
        watcher.progress = not probe
        read = bytearray()  # one buffer, however finely the stream was cut
        limit = self._limit(probe)
        final: Any = None
        handed_on = False
        changed: set[str] = set()  # kinds of list announced changed in what was read (a handed-on stream's)
        event_start = 0  # where in `read` the event under way began (a stray's is cut from there)
        hand_on_at: int | None = None  # the sighting that hands the stream on
        warned = after_stray_cr = False
        try:
            async for chunk in stream:
                if len(read) + len(chunk) > limit:
                    raise self._too_large(probe)
                sightings = watcher.feed(chunk)
                # `chunk[at:end]` is still to be read into the body (not the LF of a dropped stray's last CRLF)
                at, end = 1 if after_stray_cr and chunk[:1] == b"\n" else 0, len(chunk)
                after_stray_cr = False
                for index, seen in enumerate(sightings):
                    if seen.stray:  # dropped: never part of the body, whatever comes next
                        if watcher.began_before(index):
                            del read[event_start:]
                        else:
                            read += chunk[at : watcher.start_of(chunk, index)]
                        at = watcher.end_of(chunk, index)
                        after_stray_cr = at == len(chunk) and chunk.endswith(b"\r")
                        if not warned:
                            warned = True
                            log.warning("stray_answer_dropped", upstream=self.name)
                        continue
                    if seen.unparsed and probe:
                        raise UpstreamProtocolError(
                            "the health probe's answer has an event the proxy cannot read (more than "
                            f"{MAX_PARSED_CONTAINERS} objects and arrays, or JSON it cannot parse)",
                            upstream=self.name,
                        )
                    if seen.final is not None:
                        final = seen.final
                        end = watcher.end_of(chunk, index)
                        break
                    if hand_on_at is None and (seen.asks or seen.unparsed or seen.oversized or seen.progress):
                        hand_on_at = index  # what follows in the chunk is read on (a final ends it), then handed on
                    elif hand_on_at is None and seen.list_changed is not None:
                        changed.add(seen.list_changed)
                read += chunk[at:end]
                if hand_on_at is not None:
                    handed_on = True
                    watcher.progress = False  # the relay has no use for them
                    final = None  # asked and answered in one write: the read ends there, and the relay ends it
                    early = (*(Seen(list_changed=kind) for kind in sorted(changed)), *sightings[hand_on_at:])
                    ahead = ReadAhead(bytes(read), stream, watcher, early)
                    return Reply(reply.status, reply.headers, stream=ahead, reason=reply.reason)
                if watcher.between_events:
                    event_start = len(read)
                elif watcher.blank_lines:
                    event_start = len(read) - (len(chunk) - watcher.last_end(chunk))
                if final is not None:
                    if end == len(chunk) and chunk.endswith(b"\r"):
                        read += await lf_of_crlf(stream)
                    break
        except StreamSilent as exc:
            raise UpstreamTimeout(exc.message, upstream=self.name, excused=True) from exc
        except StreamBroken as exc:
            raise UpstreamUnavailable(exc.message, upstream=self.name) from exc
        finally:
            if final is not None:
                stream.discard_rest()  # the server closes the stream next: keep the connection
            elif not handed_on:
                await stream.close()
        if final is None and watcher.last_event_id is None:
            raise StreamEndedEarly("upstream ended the stream before the response", upstream=self.name)
        return Reply(reply.status, reply.headers, body=bytes(read), message=final, reason=reply.reason)

    def _limit(self, probe: bool) -> int:
        """The most of an answer read: `limits.max_response_bytes`, and for a probe `PROBE_MAX_RESPONSE_BYTES`."""
        return min(self._max_response, PROBE_MAX_RESPONSE_BYTES) if probe else self._max_response

    def _too_large(self, probe: bool, size: int | None = None) -> UpstreamProtocolError | AnswerTooLarge:
        """The error for an answer over `_limit`: a client's call is over the proxy's limit (`AnswerTooLarge`);
        a probe's answer is not what a health check answers (`upstream_bad_response`)."""
        of = "" if size is None else f" of {size} bytes"
        if probe:
            return UpstreamProtocolError(
                f"the health probe's answer{of} exceeds {self._limit(True)} bytes", upstream=self.name
            )
        return AnswerTooLarge(f"upstream answer{of} exceeds limits.max_response_bytes", upstream=self.name)

    async def exchange(
        self,
        method: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float | None,
        stream_idle: float | None,
        on_write: Callable[[], None] | None = None,
        on_queue: Callable[[bool], None] | None = None,
        *,
        probe: bool = False,
        answer_to: AnswerTo | None = None,
        lend_credentials: bool = True,
        owner: int | None = None,
        query: str = "",
    ) -> Reply:
        """Send one HTTP request upstream; return its answer with the body read or streamed.

        `on_write` and `on_queue` are `ConnectionPool.request`'s: the request is about to reach a socket;
        it queues for (or leaves the queue for) a pooled connection. `probe`: on the health probes' pool.
        `answer_to`: what a JSON answer must answer (`AnswerTo`); None for a request that is not JSON-RPC
        (a GET, a DELETE). `lend_credentials`: False when the client's own Authorization was removed on
        the way, so the URL's credentials are not sent in its place (`ConnectionPool.head`). `owner`: the
        downstream client connection the request came on (`Call.owner`): only its own upstream connections
        carry it (`proxy.upstream.http11.client`, affinity); None for requests of nobody's (they share their own).
        `query`: the client's query string, after the upstream URL's own (`Call.query`)."""
        with upstream_errors(self.name, timeout, too_large=lambda: self._too_large(probe)) as boundary:
            async with asyncio.timeout(timeout) if timeout is not None else contextlib.nullcontext():
                pool = self._pool_for(probe)
                response = boundary.response = await pool.request(
                    method, headers.items(), body, on_write, on_queue, lend_credentials=lend_credentials, owner=owner,
                    query=query,
                )  # fmt: skip
                out_headers = client_headers(response.header_items)
                if response.content_type == _EVENT_STREAM and response.status not in _NO_BODY:
                    stream = SSEBody(response, stream_idle, self.name, self._idle_clock)
                    return Reply(response.status, out_headers, stream=stream, reason=response.reason or None)
                raw = await self._read_bounded(response, probe, hold=answer_to is not None)
                message = _parse_json(response.content_type, raw)
                if answer_to is not None:
                    if answer_to.stray(message, response.status):
                        # The connection is out of step with its requests: never reused (the boundary closes it).
                        raise UpstreamProtocolError(
                            "upstream answered with another request's id (a stray answer); its connection is closed",
                            upstream=self.name,
                        )
                    response.release()
        return Reply(response.status, out_headers, body=raw, message=message, reason=response.reason or None)

    async def _read_bounded(self, response: Response, probe: bool, hold: bool = False) -> bytes:
        length = response.content_length
        limit = self._limit(probe)
        if length is not None and length > limit:
            response.close()
            raise self._too_large(probe, length)
        return await response.read(limit, hold=hold)


def encoded(headers: Mapping[str, str]) -> bool:
    """The answer is in a content coding (gzip, br, ...): its bytes are not the events, so nothing can be
    read from it or added to it. The proxy never asks for one (it does not forward Accept-Encoding); a
    server that encodes anyway is passed on unread."""
    coding = headers.get("Content-Encoding")
    return coding is not None and coding.strip().lower() not in ("", "identity")


async def lf_of_crlf(stream: SSEBody) -> bytes:
    """After an event that ended a chunk with a CR: ``b"\\n"`` when the stream's next bytes begin with the LF
    of that CRLF, else ``b""`` (another byte, the stream's end, or its break: the CR stood alone)."""
    try:
        chunk = await anext(stream)
    except (StopAsyncIteration, StreamBroken):
        return b""
    return b"\n" if chunk.startswith(b"\n") else b""


def _parse_json(content_type: str, raw: bytes) -> Any:
    """The parsed JSON answer, or None: not JSON, not parseable, or too many containers to parse
    (`MAX_PARSED_CONTAINERS`: it is delivered as opaque bytes)."""
    if content_type != "application/json" or not raw or too_many_containers(raw):
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


"""The MCP listener: from an HTTP request to a classified call, through the pipeline, back to the client.

What the client gets (from the proxy itself never an HTML page, and never a dropped connection without an
answer, but for a connection over the cap and one that sent nothing within the header timeout):

========================================  ======  ===========================================
situation                                 status  body
========================================  ======  ===========================================
request head over max_request_head_bytes  431     JSON-RPC error -32600, data.reason
or max_request_headers, a line over 8190          headers_too_large (an unfinished head: then
bytes (``limits``)                                the connection closes)
head not complete within header_timeout   408     JSON-RPC error -32600, data.reason header_timeout;
                                                  the connection closes (nothing sent if no byte came)
over ``limits.max_connections``           none    the longest-idle kept-alive connection is closed
                                                  to make room; with none idle, the new one is
                                                  closed unanswered
no Host, or an empty one                  400     JSON-RPC error -32600, data.reason missing_host
Host or Origin not allowed                403     JSON-RPC error -32600, data.reason forbidden_*
not POST/GET/DELETE/OPTIONS               405     JSON-RPC error -32600, ``Allow`` header
POST without application/json             415     JSON-RPC error -32600
body over ``limits.max_body_bytes``       413     JSON-RPC error -32600 (a declared length: before any
                                                  ``100 Continue``, the connection then closes)
more JSON values than                     413     JSON-RPC error -32600, data.reason too_many_values
``limits.max_body_values``                        (counted before parsing)
body not within ``limits.body_timeout``   408     JSON-RPC error -32600; the connection closes
malformed JSON                            400     JSON-RPC error -32700, id null
JSON but not JSON-RPC, or over a bound    400     JSON-RPC error -32600 (-32602 for a tool or
of ``proxy.mcp.jsonrpc`` (depth, names, batch)        prompt name), the id if readable
the upstream answered (any status)        its own the upstream's body and headers, unchanged
proxy verdict on a request (timeout, …)   502/503 JSON-RPC error with the request's id, data.reason
                                          504/429 (status per `proxy.errors`)
this client's open requests at its cap    429     JSON-RPC error -32059, data.reason client_overloaded
rate limit on a notification, batch, GET  429     JSON-RPC error, id null, data.reason rate_limited
proxy verdict on GET/DELETE/notification  502/504 JSON-RPC error, id null, data.reason
upstream SSE stream breaks before its     (sent)  a final SSE event with the JSON-RPC error
final response (no resume possible)
========================================  ======  ===========================================

Every message relayed spends rate-limit tokens as a request does (`_spend_tokens`): notifications, a
client's responses, every entry of a batch, GET (a legacy stream: one token when it opens), DELETE and
OPTIONS. What answers or ends the server's own work (a client's response, `notifications/cancelled`,
`notifications/initialized`, DELETE) takes a free token but is never refused (`_never_refused`).
Every refusal of the proxy's own carries ``data.reason`` and an ``X-Mcp-Proxy-Error`` header. Who is calling (rate-limit keys, fairness slots) is read from the headers the upstream will
receive, never from ones the proxy drops (`proxy.server.classify.client_of`).

The forwarding headers (`X-Forwarded-For`, `X-Forwarded-Proto`, `Forwarded`) are set for the TCP peer
per ``security.forwarded_headers`` (`proxy.mcp.headers.forwarded`) before anything reads the headers.

Every error body the proxy makes is a JSON-RPC error: the official SDK clients raise exactly that error
(code, data with `reason` and `retryAfter`) whatever the HTTP status. What the upstream answered is never
replaced by a proxy-made error: the client that asked hears the server, whatever it said.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
import itertools
import time
from typing import Any

import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict

from proxy.errors import ProxyError, StreamBroken, StreamEndedEarly
from proxy.mcp.headers import client_query, forwarded, upstream_headers
from proxy.mcp.jsonrpc import INVALID_REQUEST, Kind, Message, MessageError, error_body, parse_message, response_error
from proxy.policies.base import Attempt, Call, Reply, last_attempt
from proxy.policies.fairness import NO_CAP
from proxy.policies.failures import Failure, classify_error, verdict_of
from proxy.runtime import Route, Runtime, RuntimeRef
from proxy.server.classify import CallRoute, ClientRequest, classify, client_of, lends_credentials, token_call
from proxy.server.relay import SESSION_DELETED, Relay, headers_for, learn_annotations, relayed
from proxy.server.session_messages import in_session
from proxy.server.session_stream import SessionStreams
from proxy.sessions.keeper import SESSION_HEADER, as_client_knows
from proxy.sessions.table import LegacySession
from proxy.upstream.transport import AnswerTo

__all__ = ["McpHandler"]

log = structlog.get_logger("proxy")

_JSON = "application/json"
_ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"


def _json_error(
    status: int,
    code: int,
    message: str,
    request_id: str | int | None = None,
    data: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON-RPC error the proxy itself answers. With a `data.reason` it carries ``X-Mcp-Proxy-Error``
    too, the mark no answer of the upstream's ever has: a client can tell the proxy refused."""
    if data is not None and "reason" in data:
        headers = {"X-Mcp-Proxy-Error": str(data["reason"]), **(headers or {})}
    return web.Response(
        status=status, body=error_body(request_id, code, message, data), content_type=_JSON, headers=headers
    )


def _error_response(error: ProxyError, request_id: str | int | None) -> web.Response:
    """A proxy verdict as the client hears it: its status, the JSON-RPC error, and the verdict headers."""
    return _json_error(error.status(), error.code, error.message, request_id, error.error_data(), _verdict_headers(error))


def _verdict_headers(error: ProxyError) -> dict[str, str]:
    headers = {"X-Mcp-Proxy-Error": error.reason}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return headers


def _outcome(reply: Reply) -> str:
    if reply.status == 429:
        return "http_429"  # the upstream's backpressure, apart from the other 4xx
    if reply.status >= 400:
        return f"http_{reply.status // 100}xx"
    return "jsonrpc_error" if response_error(reply.message) is not None else "ok"


class McpHandler:
    """aiohttp handler for every MCP endpoint path; reads the current `Runtime` once per request."""

    def __init__(self, runtime: RuntimeRef) -> None:
        self._runtime = runtime
        self._relay = Relay(current=self._runtime)
        self._streams = SessionStreams(current=self._runtime)
        self._classifying: tuple[Runtime | None, dict[str, CallRoute]] = (None, {})
        """(a runtime, each of its paths' `CallRoute`): made once per runtime, not per call."""

    async def end_streams(self) -> None:
        """Drain: end every long-lived stream (legacy GET stream, subscriptions/listen) cleanly, now."""
        await self._streams.end()
        await self._relay.end_streams()

    def handle(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        """Answer one request. A plain function handing back the coroutine: a request without ``Expect``
        (nearly all) costs no coroutine frame of its own here (measured: the wrapper was ~1.5% of a call)."""
        if hdrs.EXPECT not in request.headers:
            return self._handle(request)
        return self._handle_expecting(request)

    async def _handle_expecting(self, request: web.BaseRequest) -> web.StreamResponse:
        response = await self._handle(request)
        if _awaits_continue(request) and not request.content.is_eof():
            # Refused before the body was asked for: the client may send it now or never, so nothing
            # after this answer can be read as a request.
            response.force_close()
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        runtime = self._runtime.current
        limits = runtime.config.limits
        if len(request.raw_headers) > limits.max_request_headers or _head_size(request) > limits.max_request_head_bytes:
            runtime.metrics.reject("headers_too_large")
            return _json_error(
                431, INVALID_REQUEST, f"Request Header Fields Too Large: more than {limits.max_request_headers} headers "
                f"or {limits.max_request_head_bytes} bytes (limits.max_request_headers, limits.max_request_head_bytes)",
                data={"reason": "headers_too_large"},
            )  # fmt: skip
        route = runtime.routes.get(request.path)
        if route is None:
            return _json_error(404, INVALID_REQUEST, f"No MCP endpoint at {request.path}", data={"reason": "no_endpoint"})
        if not request.headers.get("Host", "").strip():  # aiohttp would make one up (the machine's name)
            runtime.metrics.reject("missing_host")
            return _json_error(400, INVALID_REQUEST, "Bad Request: no Host header", data={"reason": "missing_host"})
        hosts = runtime.hosts
        # Both the Host header and, for an absolute-form request line, its authority (which aiohttp's
        # `request.host` prefers) must be allowed: either could be what the upstream's checks read.
        header, authority = request.headers["Host"], request.host
        for host in (header,) if authority == header else (header, authority):
            if not hosts.host_allowed(host):
                runtime.metrics.reject("forbidden_host")
                hosts.refused_host(host)
                return _json_error(403, INVALID_REQUEST, "Forbidden: Host header not allowed", data={"reason": "forbidden_host"})
        origins = request.headers.getall("Origin", [])
        if len(origins) > 1 or not hosts.origin_allowed(origins[0] if origins else None):
            runtime.metrics.reject("forbidden_origin")  # two Origin headers: no browser sends them
            hosts.refused_origin(", ".join(origins))
            return _json_error(403, INVALID_REQUEST, "Forbidden: Origin not allowed", data={"reason": "forbidden_origin"})
        if request.method == "POST":
            return await self._post(request, runtime, route)
        if request.method in ("GET", "DELETE", "OPTIONS"):  # OPTIONS: CORS preflights are the server's to answer
            return await self._passthrough(request, runtime, route)
        runtime.metrics.reject("method_not_allowed")
        return _json_error(
            405, INVALID_REQUEST, f"Method {request.method} not allowed", data={"reason": "method_not_allowed"},
            headers={"Allow": _ALLOWED_METHODS},
        )

    async def _read_body(self, request: web.BaseRequest, limit: int, length: int | None) -> bytes | None:
        """The whole body, or None when it is larger than `limit` (checked while reading). `length` is the
        declared Content-Length, already checked against `limit` by the caller (before any 100 Continue)."""
        if request.content.is_eof():  # the whole body is here already (the usual case): take it, no wait
            body = request.content.read_nowait()
            return body if len(body) <= limit else None
        if length is not None:
            # The parser never delivers more than Content-Length: one read, no size loop.
            return await request.content.read()
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _post(self, request: web.BaseRequest, runtime: Runtime, route: Route) -> web.StreamResponse:
        # Exactly "application/json" (what clients send) needs no parsing; anything else is parsed to be sure.
        if request.headers.get("Content-Type") != _JSON and request.content_type != _JSON:
            runtime.metrics.reject("unsupported_media_type")
            return _json_error(
                415, INVALID_REQUEST, f"Unsupported Media Type: POST needs Content-Type: {_JSON}",
                data={"reason": "unsupported_media_type"},
            )
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() != "identity":
            # Read as JSON-RPC, the body must be plain: a compressed one is refused before a byte of it is
            # read (the listener never inflates it: see proxy.app), so it can cost nothing and pass nowhere.
            runtime.metrics.reject("unsupported_media_type")
            return _json_error(
                415, INVALID_REQUEST, "Unsupported Media Type: a POST body must not be Content-Encoded",
                data={"reason": "unsupported_media_type"},
            )
        limit = runtime.config.limits.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:  # refused unread, before any 100 Continue
            runtime.metrics.reject("too_large")
            return _json_error(413, INVALID_REQUEST, f"Request body larger than {limit} bytes", data={"reason": "too_large"})
        if _awaits_continue(request):
            await _continue(request)
        try:
            if request.content.is_eof():  # the whole body is here already (the usual case): no wait, no timer
                body = await self._read_body(request, limit, length)
            else:
                async with asyncio.timeout(runtime.config.limits.body_timeout):
                    body = await self._read_body(request, limit, length)
        except TimeoutError:
            runtime.metrics.reject("body_timeout")
            timed_out = _json_error(
                408, INVALID_REQUEST, "Request Timeout: the request body did not arrive in time", data={"reason": "body_timeout"}
            )
            timed_out.force_close()  # the rest of the body may still come: never read it as the next request
            return timed_out
        if body is None:
            runtime.metrics.reject("too_large")
            return _json_error(413, INVALID_REQUEST, f"Request body larger than {limit} bytes", data={"reason": "too_large"})
        try:
            message = parse_message(body, runtime.config.limits.max_body_values)
        except MessageError as exc:
            reason = exc.reason or _REJECTED_AS.get(exc.code, "not_jsonrpc")
            runtime.metrics.reject(reason)
            return _json_error(exc.status, exc.code, exc.message, exc.request_id, data={"reason": reason})
        headers = self._upstream_headers(request, runtime)
        if message.kind is Kind.BATCH:
            refusal = await self._batch_refusal(request, runtime, route, message, headers)
            if refusal is not None:
                return refusal
            return await self._forward(request, runtime, route, "POST", headers, body, message, tokens=False)
        if message.kind is not Kind.REQUEST:
            return await self._forward(request, runtime, route, "POST", headers, body, message=message)
        made_for, call_routes = self._classifying
        if made_for is not runtime:
            call_routes = self._call_routes(runtime)
        owner, started = _owner_of(request), time.perf_counter()
        sent = ClientRequest(message, body, request.headers, headers, request.remote, owner, started, _query_of(request))
        return await self._call(request, runtime, route, classify(sent, call_routes[request.path]))

    def _call_routes(self, runtime: Runtime) -> dict[str, CallRoute]:
        """What classifying needs of each of `runtime`'s routes, made once per runtime (a reload makes a
        new one: its policies, catalog views and identity header may differ)."""
        identity = runtime.config.client_identity.header
        call_routes = {
            path: CallRoute(route.upstream.name, route.resolver, route.annotations, identity)
            for path, route in runtime.routes.items()
        }
        self._classifying = (runtime, call_routes)
        return call_routes

    async def _batch_refusal(
        self, request: web.BaseRequest, runtime: Runtime, route: Route, message: Message, headers: CIMultiDict[str]
    ) -> web.Response | None:
        """A batch is relayed whole (so it cannot be retried or cached), but it never skips the limits.

        MCP removed batching in 2025-06-18: from that version on it is refused. For older clients each
        entry spends its own rate-limit token, as the same messages sent one by one would. The entries
        were parsed and checked with the batch: nothing is serialized or parsed again, who is calling is
        read once, and each distinct (method, tool) of the batch resolves its policy once.
        """
        version = request.headers.get("MCP-Protocol-Version", "")
        if version >= BATCHING_REMOVED_IN:
            runtime.metrics.reject("batch")
            return _json_error(400, INVALID_REQUEST, f"JSON-RPC batches are not part of MCP {version}", data={"reason": "batch"})
        counts: dict[tuple[str, str | None], int] = {}
        for item in message.items:  # checked at parse (at most MAX_BATCH_ITEMS, names bounded)
            method = item.method or ""
            name = item.params.get("name") if method == "tools/call" else None
            key = (method, name if isinstance(name, str) else None)
            counts[key] = counts.get(key, 0) + 1
        return await self._spend_tokens(request, runtime, route, headers, counts, message)

    async def _spend_tokens(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        route: Route,
        headers: CIMultiDict[str],
        counts: dict[tuple[str, str | None], int],
        message: Message | None = None,
        refuse: bool = True,
    ) -> web.Response | None:
        """Spend `counts[(method, tool)]` rate-limit tokens of each policy, as that many requests would; the
        first refusal is the answer (tokens already taken stay spent, as for requests sent one by one).

        A message with no method (a client's response, GET, DELETE) counts as method ``""``: the upstream's
        own limit and any rule matching every method apply to it. Each is one pass of the rate-limit stage
        with a `Call` built without the pipeline (see `proxy.server.classify.token_call`). Without `refuse`, tokens free now are
        taken and the message passes whatever is left (`RateLimitStage.spend`)."""
        calls = []
        who: tuple[str, str] | None = None  # read once, for the first policy with a limit
        for (method, tool), count in counts.items():
            policy = route.resolver.resolve(method, tool)
            if policy.rate_limit is None:
                continue
            if who is None:
                # A token call has no credential scope: only a cache reads it.
                who = (client_of(headers, request.remote, runtime.config.client_identity.header), "")
            calls.append((token_call(route.upstream.name, policy, method, tool, headers, who, message), count))
        limiter = runtime.shared.rate_limit
        for call, count in calls:
            for _ in range(count):
                if not refuse:
                    await limiter.spend(call)
                    continue
                try:
                    await limiter(call, _admitted)
                except ProxyError as exc:
                    return _error_response(exc, None)
        return None

    async def _call(self, request: web.BaseRequest, runtime: Runtime, route: Route, call: Call) -> web.StreamResponse:
        metrics = runtime.metrics
        metrics.enter(call.upstream)
        started = call.started
        outcome = "cancelled"
        last: Attempt | None = None  # the try the outcome came from (events name it; None: the call's first)
        slots = route.state.clients
        held = False
        try:
            try:
                slots.acquire(call.client, route.config.pool.client_share)
                held = True
                reply = await route.pipeline(call)
            except ProxyError as exc:
                last = last_attempt(call, exc)
                if isinstance(exc, StreamEndedEarly | StreamBroken) and self._relay.ended_by_client(call):
                    outcome = SESSION_DELETED  # a read whose session its client deleted: no upstream failure
                    return _error_response(exc, call.message.id)
                outcome = exc.reason
                self._failed(runtime, call, last, exc)
                return _error_response(exc, call.message.id)
            last = reply.attempt
            if reply.stream is None:
                # The upstream's own answer, whatever its status and body, reaches the client as it was.
                outcome = _outcome(reply)
                if outcome == "ok":
                    learn_annotations(route, call, reply.message)
                else:
                    self._answered_with_failure(runtime, call, reply, outcome)
                return relayed(reply.status, reply.reason, reply.body, headers_for(reply))

            pinned = None
            if reply.status >= 400:
                # An error status streamed as SSE: reported, and its outcome kept, as the JSON path does.
                outcome = pinned = _outcome(reply)
                self._answered_with_failure(runtime, call, reply, pinned)

            def settle(value: str) -> None:
                nonlocal outcome
                if pinned is None:
                    outcome = value

            def failed(error: ProxyError) -> None:
                if pinned is None:  # an error status was reported at its head: one report per call
                    self._failed(runtime, call, last, error, streamed=True)

            return await self._relay.answer(request, runtime, route, call, reply, settle, failed)
        finally:
            if held:
                slots.release(call.client)
            metrics.leave(call.upstream)
            elapsed = time.perf_counter() - started
            metrics.observe(call.upstream, call.method, call.tool, outcome, elapsed)
            runtime.events.call_finished(last or call, outcome, elapsed * 1000)
            if runtime.config.logging.access_log:
                log.info(
                    "access",
                    upstream=call.upstream,
                    method=call.method,
                    tool=call.tool,
                    outcome=outcome,
                    latency_ms=round(elapsed * 1000, 3),
                )

    async def _forward(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        route: Route,
        method: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        message: Message | None = None,
        tokens: bool = True,
    ) -> web.StreamResponse:
        """Relay a message that is not a request (notification, client response, batch, GET, DELETE).

        It spends a rate-limit token first (unless `tokens` is off: a batch spent its entries' already),
        then holds one of the client's slots (`proxy.policies.fairness`) until its answer is complete: a legacy GET
        stream holds one for its whole life. Who the client is comes from the forwarded `headers`."""
        if tokens:
            kind = (message.method or "") if message is not None else ""
            refuse = not _never_refused(method, message)
            refusal = await self._spend_tokens(request, runtime, route, headers, {(kind, None): 1}, message, refuse)
            if refusal is not None:
                return refusal
        client = client_of(headers, request.remote, runtime.config.client_identity.header)
        slots = route.state.clients
        # What answers or ends the server's own work (a client's answer to its sampling or elicitation
        # request, a cancellation, `initialized`, a DELETE) is counted but never refused, as by the rate
        # limit: refused, the server's tool call hangs, or its session leaks.
        cap = NO_CAP if _never_refused(method, message) else route.config.pool.client_share
        try:
            slots.acquire(client, cap)
        except ProxyError as exc:
            runtime.metrics.reject(exc.reason)
            return _error_response(exc, None)
        try:
            return await self._relay_message(request, runtime, route, method, headers, body, message)
        finally:
            slots.release(client)

    async def _relay_message(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        route: Route,
        method: str,
        headers: Any,
        body: bytes | None,
        message: Message | None,
    ) -> web.StreamResponse:
        """Send a relayed message and pass its answer on. A POSTed message's JSON answer is checked to be
        its own (`AnswerTo`: a batch's ids, or none for a notification); a GET or DELETE has no ids."""
        upstream = route.upstream
        session: LegacySession | None = None
        try:
            if headers.get(SESSION_HEADER) is None:
                reply = await self._exchange(request, route, method, headers, body, message)
            else:
                exchange = functools.partial(self._exchange, request, route, method, headers, body, message)
                answered = await in_session(
                    request, runtime, route, self._streams, method, headers, message, exchange,
                    _owner_of(request), _query_of(request),
                )  # fmt: skip
                if isinstance(answered, web.StreamResponse):
                    return answered
                session, reply = answered
        except ProxyError as exc:
            runtime.metrics.upstream_error(upstream.name, exc.reason)
            log.warning("relay_failed", upstream=upstream.name, http_method=method, reason=exc.reason, error=exc.message)
            return _error_response(exc, None)
        if session is not None:
            as_client_knows(session, reply)
        if reply.stream is None:
            return relayed(reply.status, reply.reason, reply.body, reply.headers)
        return await self._relay.pass_on(request, runtime, upstream.name, reply)

    @staticmethod
    async def _exchange(
        request: web.BaseRequest, route: Route, method: str, headers: Any, body: bytes | None, message: Message | None
    ) -> Reply:
        return await route.upstream.exchange(
            method, headers, body, route.upstream.config.timeouts.per_try, None,
            lend_credentials=lends_credentials(request.headers, headers),
            answer_to=None if message is None else AnswerTo.of(message),
            owner=_owner_of(request), query=_query_of(request),
        )  # fmt: skip

    async def _passthrough(self, request: web.BaseRequest, runtime: Runtime, route: Route) -> web.StreamResponse:
        headers = self._upstream_headers(request, runtime)
        session = headers.get("Mcp-Session-Id") if request.method == "DELETE" else None
        if session is None:
            return await self._forward(request, runtime, route, request.method, headers, None)
        # The client ends its session: the streams the server then ends are its doing (`Relay.session_ending`).
        upstream = route.upstream.name
        self._relay.session_ending(upstream, session)
        response = await self._forward(request, runtime, route, request.method, headers, None)
        if not 200 <= response.status < 300:
            self._relay.session_kept(upstream, session)
        return response

    @staticmethod
    def _upstream_headers(request: web.BaseRequest, runtime: Runtime) -> CIMultiDict[str]:
        """What the upstream receives: the end-to-end headers, with the forwarding headers for this peer."""
        headers = upstream_headers(request.headers.items())
        forwarded(headers, request.remote, runtime.config.security.forwarded_headers)
        return headers

    def _failed(self, runtime: Runtime, call: Call, last: Attempt | None, error: ProxyError, streamed: bool = False) -> None:
        """A call ends in a proxy verdict or a broken stream: count it, and say it once (event or log line).
        `last`: the try it ended on, as the retry stage marked it (None: the call's first). `streamed`: the
        answer was being relayed already (the event says so: no retry or fallback could have acted)."""
        runtime.metrics.upstream_error(call.upstream, error.reason)
        verdict = classify_error(error)
        kind = error.reason if verdict.kind is Failure.CLIENT_ERROR else verdict.kind.value
        detail = {"kind": kind, "http_status": None, "jsonrpc_code": error.code, "message": error.message}
        self._report(runtime, call, last, detail, error.reason, error.status(), streamed)

    def _report(
        self, runtime: Runtime, call: Call, last: Attempt | None, error: dict[str, Any], reason: str, http_status: int,
        streamed: bool = False,
    ) -> None:
        latency_ms = round((time.perf_counter() - call.started) * 1000, 3)
        events = runtime.events
        extra = {"streamed": True} if streamed else {}
        events.call_failed(
            last or call, error, latency_ms, reason=reason, http_status=http_status, client=call.client, **extra
        )

    def _answered_with_failure(self, runtime: Runtime, call: Call, reply: Reply, reason: str) -> None:
        """The upstream's own failing answer reaches the client: report it like any failure a client heard."""
        verdict = verdict_of(reply, call.session_id is not None)
        if verdict.upstream_failed:  # a lost session is the session stage's to report (`proxy.sessions.stage`)
            self._report(runtime, call, reply.attempt, verdict.as_error(), reason, reply.status)


BATCHING_REMOVED_IN = "2025-06-18"


async def _admitted(call: Call) -> Reply:
    """The end of a rate-limit check that sends nothing (a token for a message relayed outside the pipeline)."""
    return Reply(202, CIMultiDict())


NEVER_REFUSED_NOTIFICATIONS = frozenset({"notifications/cancelled", "notifications/initialized"})
"""Notifications a rate limit never refuses: a refused cancellation leaves the server working for nobody,
and a refused `initialized` leaves a session half open."""


def _never_refused(http_method: str, message: Message | None) -> bool:
    """Messages that a rate limit counts but never refuses, because refusing them harms more than it saves:
    a client's answer to the server's own request (sampling, elicitation, roots: the server's tool call
    hangs without it, and no error can reach anyone), a cancellation, `initialized`, and a DELETE (a
    refused one leaks the session upstream)."""
    if http_method == "DELETE":
        return True
    if message is None:
        return False
    return message.kind is Kind.RESPONSE or message.method in NEVER_REFUSED_NOTIFICATIONS


_OWNERS = itertools.count(1)


def _owner_of(request: web.BaseRequest) -> int:
    """The number of the client connection `request` came on, given on its first request: the key of
    upstream connection affinity (`Call.owner`). A number, not the object: a new connection may get a
    closed one's memory, and so its `id()`, while that one's upstream connections are still idle."""
    protocol = request.protocol
    owner: int | None = getattr(protocol, "mcp_owner", None)
    if owner is None:
        owner = next(_OWNERS)
        try:
            setattr(protocol, "mcp_owner", owner)  # noqa: B010 - an attribute of ours on aiohttp's object
        except AttributeError:  # a protocol without a __dict__ (not the proxy's listener): no affinity
            return owner
    return owner


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CONTINUED = web.RequestKey("mcp_continued", bool)
"""Set on a request once its ``100 Continue`` went out."""


def _awaits_continue(request: web.BaseRequest) -> bool:
    """The client holds its body back until it hears ``100 Continue`` (``Expect: 100-continue``: curl
    sends it for a body over 1 KiB, then waits a second), and none was sent yet. Not for HTTP/1.0, which
    has no 100 (RFC 9110 §10.1.1), nor once the body is here anyway (the 100 may then be left out)."""
    return (
        not request.content.is_eof()  # first: the usual POST's body is here, and nothing else is asked
        and request.headers.get(hdrs.EXPECT, "").strip().lower() == "100-continue"
        and request.version >= (1, 1)
        and not request.get(_CONTINUED, False)
    )


async def _continue(request: web.BaseRequest) -> None:
    """Tell the client to send its body: what aiohttp's router does (its expect handler), which the low-level
    server the listener is does not. Sent only once the request passed every check that needs no body
    (path, Host, Origin, method, content type, declared length); a refusal before it is the final answer."""
    await request.writer.write(_CONTINUE)
    request.writer.output_size = 0  # the answer itself has not started (aiohttp's expect handler does the same)
    request[_CONTINUED] = True


def _query_of(request: web.BaseRequest) -> str:
    """The query string the client sent, as it sent it (`client_query`), for the upstream's request line."""
    raw = request.rel_url.raw_query_string
    return client_query(raw) if raw else ""


_REJECTED_AS: dict[int, str] = {-32700: "bad_json", -32602: "bad_name"}
"""The reject reason (metric label) of a body `parse_message` refused, by its JSON-RPC code."""


def _head_size(request: web.BaseRequest) -> int:
    """The request head's size as parsed: request line and every ``name: value`` line with its CRLF, and
    the blank line (what `limits.max_request_head_bytes` bounds)."""
    line = len(request.method) + len(request.raw_path) + 12  # "M PATH HTTP/1.1\r\n"
    raw = request.raw_headers
    return line + sum(map(len, itertools.chain.from_iterable(raw))) + 4 * len(raw) + 2

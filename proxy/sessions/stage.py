"""The session stage of the pipeline: routes a legacy session's requests, and replays the one that met a loss.

It sits inside the fallback and the rate limit, outside the retry (`proxy.pipeline`): the replay is the
same client call (one rate-limit token, and a cached fallback still answers if the rebuild fails), and
each pass gets the whole retry policy (a try that meets the loss because the upstream restarted between
tries ends its pass with the loss, which the stage turns into a rebuild and a replay).

For each request:

- no session id: passed on (a 2026-07-28 request, or a legacy one before initialize); an ``initialize``
  answered with a session opens one (`UpstreamSessions.opened`);
- a session the proxy keeps: its id is routed to the upstream's current one (`Call.headers`: the one
  field of a `Call` changed after classification), and what a successful request set in it is recorded;
  a loss is rebuilt and the request replayed once (`UpstreamSessions.rebuild`), so its client hears the
  replay's answer; a loss the rebuild cannot mend is answered 404, JSON-RPC -32600 with ``data.reason``
  ``session_lost`` (a session lost for good answers so at once from then on);
- a session the proxy does not keep (made before it started, forgotten at `max_sessions`): passed on
  as it is; a loss reaches its client as the upstream said it. Unless a kept session of another client
  now routes to that very id (a restarted server gave it again): then the request is answered as a lost
  session, 404, and never reaches the other client's session.

Every loss is a `session_lost` event saying what became of it; every replay a `session_recovered` one.
The rebuild and the replay fit in what is left of the call's `timeouts.total` (from when its request was
read): past it the call ends in ``upstream_timeout``, as any other call past its deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Final

import orjson
from multidict import CIMultiDict

from proxy.errors import UpstreamTimeout, UpstreamUnavailable
from proxy.mcp.jsonrpc import INVALID_REQUEST, error_body
from proxy.policies.base import Attempt, Call, CallHandler, Observer, Reply
from proxy.policies.failures import session_lost_answer
from proxy.sessions.keeper import SESSION_HEADER, SessionUpstream, UpstreamSessions, as_client_knows
from proxy.sessions.table import LegacySession

__all__ = ["SESSION_LOST", "SessionStage", "lost_reply"]

SESSION_LOST: Final = "session_lost"
"""The ``data.reason`` of the proxy's answer for a session that cannot be recovered."""


def lost_reply(request_id: str | int | None, upstream: str, why: str) -> Reply:
    """The proxy's answer for a lost session: what a server answers for a session it does not know (404,
    -32600), with the reason, so a client initializes again (the spec's rule for a 404)."""
    body = error_body(
        request_id, INVALID_REQUEST, f"Session not found: the upstream lost it and it cannot be recovered ({why}); "
        "initialize a new session", {"reason": SESSION_LOST, "upstream": upstream, "cause": why},
    )  # fmt: skip
    headers = CIMultiDict({"Content-Type": "application/json", "X-Mcp-Proxy-Error": SESSION_LOST})
    return Reply(404, headers, body=body, message=orjson.loads(body))


class SessionStage:
    """The `session` position of the pipeline for one upstream (see the module docstring)."""

    __slots__ = ("_observer", "_sessions", "_transport")

    def __init__(self, sessions: UpstreamSessions, transport: SessionUpstream, observer: Observer) -> None:
        self._sessions = sessions
        self._transport = transport
        self._observer = observer

    def __call__(self, call: Call, next: CallHandler) -> Awaitable[Reply]:
        """A plain function handing back the coroutine: a call with no session costs no frame of its own."""
        client_id = call.session_id
        if client_id is None:
            if call.method == "initialize":
                return self._initialize(call, next)
            return next(call)
        table = self._sessions.table
        session = table.get(client_id)
        if session is None:
            if table.routed_elsewhere(client_id):  # the id a restarted server gave again to another client
                return _at_once(lost_reply(call.message.id, call.upstream, "ended"))
            return self._unknown(call, next)
        return self._within(call, next, session)

    async def _initialize(self, call: Call, next: CallHandler) -> Reply:
        reply = await next(call)
        if reply.stream is None:
            self._sessions.opened(call.body, reply, self._transport, call.headers)
        return reply

    async def _unknown(self, call: Call, next: CallHandler) -> Reply:
        reply = await next(call)
        if reply.stream is None and session_lost_answer(reply.status, reply.message):
            self._sessions.table.note_outage()
            recovery = self._sessions.unknown_loss(call.session_id)
            self._observer.policy_event("session_lost", _about(call, reply), recovery=recovery, why=None)
        return reply

    async def _within(self, call: Call, next: CallHandler, session: LegacySession) -> Reply:
        if session.lost is not None:
            return lost_reply(call.message.id, call.upstream, session.lost)
        seen = session.generation
        call.headers[SESSION_HEADER] = session.upstream_id
        reply = await next(call)
        if reply.stream is not None or not session_lost_answer(reply.status, reply.message):
            self._sessions.table.worked(session)
            self._sessions.record(session, call.method, call.message, call.body, reply)
            return as_client_knows(session, reply)
        failure = await self._sessions.recover(
            session, seen, call.headers, self._transport, self._observer, _about(call, reply), _time_left(call)
        )
        if failure is not None:
            if failure.permanent:
                return lost_reply(call.message.id, call.upstream, failure.reason)
            if failure.refused:
                return reply  # the server's own answer: its client initializes again
            if failure.reason == "deadline":
                raise UpstreamTimeout(
                    "the call's deadline (timeouts.total) passed while its lost session was rebuilt", upstream=call.upstream
                )
            raise failure.error or UpstreamUnavailable(
                f"the upstream lost the session and did not rebuild it: {failure.detail}", upstream=call.upstream
            )
        call.headers[SESSION_HEADER] = session.upstream_id
        try:
            async with asyncio.timeout(_time_left(call)):
                replayed = await next(call)
        except TimeoutError:
            raise UpstreamTimeout(
                "the call's deadline (timeouts.total) passed before the replay on its rebuilt session was answered",
                upstream=call.upstream,
            ) from None
        if replayed.stream is None and session_lost_answer(replayed.status, replayed.message):
            self._observer.policy_event("session_lost", _about(call, replayed), recovery="failed", why="lost_again")
        else:
            self._sessions.record(session, call.method, call.message, call.body, replayed)
        return as_client_knows(session, replayed)


async def _at_once(reply: Reply) -> Reply:
    return reply


def _time_left(call: Call) -> float:
    """What is left of the call's deadline (`timeouts.total`, from when its request was read): the rebuild
    and the replay fit in it, so a call that met a loss ends within the same deadline as any other."""
    return max(0.0, call.policy.timeouts.total - (time.perf_counter() - call.started))


def _about(call: Call, reply: Reply) -> Call | Attempt:
    return reply.attempt if reply.attempt is not None else call

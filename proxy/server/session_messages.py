"""A relayed message of a legacy session (a notification, a client's answer, a batch, GET, DELETE) and the
session the proxy keeps for it (`proxy.sessions`): routed, and what a loss of it means for each kind.

Requests go through the pipeline's session stage (`proxy.sessions.stage`); these messages do not, so the
listener's handler hands them here when they carry a session id:

- a session the proxy keeps: its id is routed to the upstream's current one; a session lost for good is
  answered 404 at once (a DELETE of it forgets it); its GET stream is served by `SessionStreams` (it
  outlives the upstream's); a DELETE marks it `deleting` while it goes upstream (nothing rebuilds it
  meanwhile) and forgets it once done;
- after a loss: a DELETE ended it anyway; a client's answer to a request of the lost session answers
  nothing any more (202, dropped); a notification is sent again on the rebuilt session; a batch passes
  as the server answered it (never replayed);
- a session the proxy does not keep: passed on; its loss is a `session_lost` event (``forgotten`` or
  ``unknown_session``); an id a restarted server has since given to another client's kept session is
  answered 404, never routed there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from proxy.mcp.jsonrpc import Kind, Message
from proxy.policies.base import Call, Reply
from proxy.policies.failures import session_lost_answer
from proxy.runtime import Route, Runtime
from proxy.server.classify import client_of, token_call
from proxy.server.relay import relayed
from proxy.server.session_stream import SessionStreams
from proxy.sessions.keeper import SESSION_HEADER
from proxy.sessions.stage import lost_reply
from proxy.sessions.table import LegacySession

__all__ = ["in_session"]

Exchange = Callable[[], Awaitable[Reply]]
"""Send the message upstream as its headers now say (the handler's exchange, bound to the message)."""


async def in_session(
    request: web.BaseRequest,
    runtime: Runtime,
    route: Route,
    streams: SessionStreams,
    method: str,
    headers: CIMultiDict[str],
    message: Message | None,
    exchange: Exchange,
    owner: int,
    query: str,
) -> web.StreamResponse | tuple[LegacySession | None, Reply]:
    """Relay a message that carries a session id (see the module docstring): the client's whole answer
    (a refusal, the GET stream), or (the kept session, if any; the upstream's reply) for the handler to
    pass on. Raises the `ProxyError` of a failed exchange."""
    client_id = headers[SESSION_HEADER]
    sessions = route.state.sessions
    session = sessions.table.get(client_id)
    if session is None:
        if sessions.table.routed_elsewhere(client_id):
            return _lost(route, "ended")  # another client's session goes by that id now
        reply = await exchange()
        if reply.stream is None and session_lost_answer(reply.status, reply.message):  # a session never kept
            about = _about(request, runtime, route, _kind_of(method, message), headers, message)
            runtime.observer.policy_event("session_lost", about, recovery=sessions.unknown_loss(client_id), why=None)
        return None, reply
    if session.lost is not None:
        if method == "DELETE":  # the client ends a session lost for good: nothing left to keep
            sessions.forget(session.client_id)
        return _lost(route, session.lost)
    if method == "GET":
        about = _about(request, runtime, route, "GET", headers, None)
        return await streams.serve(request, runtime, route, session, headers, owner, query, about)
    seen = session.generation
    headers[SESSION_HEADER] = session.upstream_id
    if method == "DELETE":
        session.deleting = True  # nothing rebuilds it meanwhile (`proxy.sessions.keeper`)
    try:
        reply = await exchange()
    finally:
        if method == "DELETE":
            session.deleting = False  # kept if the DELETE failed; forgotten below if it was done
    if reply.stream is None:
        if session_lost_answer(reply.status, reply.message):
            reply = await _after_loss(request, runtime, route, session, seen, method, headers, message, reply, exchange)
        elif method == "DELETE" and 200 <= reply.status < 300:
            sessions.forget(session.client_id)
            session.rebuilt.set()  # its GET stream, waiting to reopen, sees it ended now
    return session, reply


async def _after_loss(
    request: web.BaseRequest,
    runtime: Runtime,
    route: Route,
    session: LegacySession,
    seen: int,
    method: str,
    headers: CIMultiDict[str],
    message: Message | None,
    reply: Reply,
    exchange: Exchange,
) -> Reply:
    """A relayed message met its session's loss upstream (see the module docstring for each kind)."""
    keeper = route.state.sessions
    about = _about(request, runtime, route, _kind_of(method, message), headers, message)
    events = runtime.observer
    if method == "DELETE":
        keeper.forget(session.client_id)
        return reply
    if message is not None and message.kind is Kind.RESPONSE and keeper.may_rebuild(session) is None:
        events.policy_event("session_lost", about, recovery="failed", why="answers_a_lost_request")
        return Reply(202, CIMultiDict())
    if (message is None or message.kind is not Kind.NOTIFICATION) and keeper.may_rebuild(session) is None:
        events.policy_event("session_lost", about, recovery="failed", why="not_replayable")
        return reply
    failure = await keeper.recover(session, seen, headers, route.upstream, events, about)
    if failure is not None:
        return lost_reply(None, route.upstream.name, failure.reason) if failure.permanent else reply
    headers[SESSION_HEADER] = session.upstream_id
    return await exchange()


def _lost(route: Route, why: str) -> web.Response:
    lost = lost_reply(None, route.upstream.name, why)
    return relayed(lost.status, None, lost.body, lost.headers)


def _about(
    request: web.BaseRequest, runtime: Runtime, route: Route, method: str, headers: CIMultiDict[str], message: Message | None
) -> Call:
    """The `Call` the session events of a relayed message name (a GET, a notification, a client's answer)."""
    who = (client_of(headers, request.remote, runtime.config.client_identity.header), "")
    return token_call(route.upstream.name, route.resolver.resolve(method, None), method, None, headers, who, message)


def _kind_of(http_method: str, message: Message | None) -> str:
    """What a relayed message's events name as its method: its JSON-RPC method, else the HTTP one."""
    return message.method if message is not None and message.method else http_method

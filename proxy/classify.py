"""Stage 0 of the pipeline: decide once what a request is, so no later stage has to look again.

Classification reads the parsed body, which is authoritative: the modern era's routing headers
(`Mcp-Method`, `Mcp-Name`) are only a client's claim, cross-checked by the upstream (-32020), so they
are fine for routing but never for cache keys or idempotency.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping

from multidict import CIMultiDict

from proxy.annotations import ToolAnnotations
from proxy.jsonrpc import Message, is_read_method
from proxy.policies.base import Call, Era
from proxy.policies.resolve import PolicyResolver

__all__ = [
    "LEGACY_VERSION",
    "MODERN_VERSION",
    "classify",
    "client_identity",
    "era_for",
    "identity_hash",
    "is_idempotent",
    "protocol_of",
]

_CALL_IDS = itertools.count(1)

MODERN_VERSION = "2026-07-28"
"""The first stateless protocol version; versions are dates, so later ones compare greater."""
LEGACY_VERSION = "2025-11-25"
"""The newest version of the legacy (session) era: what the proxy speaks when it initializes a session itself."""
_META_VERSION = "io.modelcontextprotocol/protocolVersion"


def protocol_of(headers: Mapping[str, str], message: Message | None) -> str:
    """The protocol version a request speaks: MCP-Protocol-Version, else the modern `_meta` one, else ''."""
    version = headers.get("MCP-Protocol-Version")
    if version is None and message is not None:
        meta = message.params.get("_meta")
        if isinstance(meta, dict):
            version = meta.get(_META_VERSION)
    return version if isinstance(version, str) else ""


def era_for(protocol: str) -> Era:
    """The wire era of a protocol version: modern from 2026-07-28 on (versions are dates), else legacy."""
    return Era.MODERN if protocol >= MODERN_VERSION else Era.LEGACY


def identity_hash(secret: str) -> str:
    """A short, stable, non-reversible name for a credential: safe in logs, metrics and cache keys."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def client_identity(headers: Mapping[str, str], peer: str | None, identity_header: str | None) -> tuple[str, str]:
    """(who is calling, the Authorization scope): the configured identity header, else a hash of
    Authorization, else the peer address. The scope is that hash ('' without Authorization)."""
    authorization = headers.get("Authorization")
    auth_scope = identity_hash(authorization) if authorization else ""
    named = headers.get(identity_header) if identity_header else None
    client = f"id:{identity_hash(named)}" if named else (f"auth:{auth_scope}" if auth_scope else f"addr:{peer or 'unknown'}")
    return client, auth_scope


def is_idempotent(method: str, tool: str | None, declared: bool | None, annotations: ToolAnnotations | None) -> bool:
    """Safe to send twice? The policy's word first, then the method, then trusted tool annotations."""
    if declared is not None:
        return declared
    if is_read_method(method):
        return True
    return method == "tools/call" and tool is not None and annotations is not None and annotations.safe_to_retry(tool)


def classify(
    upstream: str,
    message: Message,
    body: bytes,
    headers: Mapping[str, str],
    forward_headers: CIMultiDict[str],
    peer: str | None,
    identity_header: str | None,
    resolver: PolicyResolver,
    annotations: ToolAnnotations | None = None,
) -> Call:
    """Build the `Call` for one JSON-RPC request. `annotations` only for upstreams trusted to give them."""
    method = message.method or ""
    params = message.params
    name = params.get("name") if method == "tools/call" else None
    tool = name if isinstance(name, str) else None
    policy = resolver.resolve(method, tool)
    client, auth_scope = client_identity(headers, peer, identity_header)
    protocol = protocol_of(headers, message)
    return Call(
        upstream=upstream,
        era=era_for(protocol),
        method=method,
        tool=tool,
        idempotent=is_idempotent(method, tool, policy.idempotent, annotations),
        client=client,
        auth_scope=auth_scope,
        session_id=headers.get("Mcp-Session-Id"),
        protocol=protocol,
        message=message,
        body=body,
        headers=forward_headers,
        policy=policy,
        call_id=next(_CALL_IDS),
        buffered=is_read_method(method),
    )

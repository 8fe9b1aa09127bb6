"""Regression fixtures: failing exchanges saved (redacted) so they can be replayed against an upstream.

When `events.fixtures.dir` is set, each call that fails (a `call_failed` event) is written as one JSON
file: the request's MCP headers and JSON-RPC body, and the failure it met, all passed through
`proxy.redact.redact` (the redaction every writer uses) without clipping, so the call replays as it
was sent minus its credentials: params under credential-like keys, an ``Mcp-Param-*`` header whose
param name is credential-like (``Mcp-Param-Password``, like the ``password`` param it mirrors, so the
two still agree on replay), and credentials quoted inside any string. At most `per_signature` files
are kept per failure signature, so an outage writes a handful of files, not one per call, and at most
`MAX_SIGNATURES` signatures are kept at all: a client inventing a new tool name per call while the
upstream fails cannot fill the disk (the signatures past the cap are not saved, and that is logged once).
`Authorization`, cookies and session ids are never saved.

``mcp-resilience-proxy replay DIR --upstream URL`` sends each fixture again (legacy-era fixtures on a
fresh session of their own, since the recorded one is long gone) and reports which still fail,
classified by the same failure classifier the proxy uses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from proxy.mcp.eras import LEGACY_VERSION
from proxy.config.model import LimitsConfig, UpstreamConfig
from proxy.errors import ProxyError
from proxy.policies.failures import Verdict, classify_error, classify_reply
from proxy.redact import MAX_FIXTURE_DEPTH, Budget, redact
from proxy.policies.base import Call
from proxy.upstream.transport import HttpUpstream

__all__ = ["FixtureWriter", "ReplayResult", "replay_directory"]

log = structlog.get_logger("proxy.ops.fixtures")

FIXTURE_VERSION: Final = 1
MAX_SIGNATURES: Final = 1000
"""Distinct failure signatures a fixture directory holds; files already there count."""
_KEPT_HEADERS: Final = ("content-type", "accept", "mcp-protocol-version", "mcp-method", "mcp-name")


class FixtureWriter:
    """Writes one fixture per failing call, up to `per_signature` per failure signature."""

    def __init__(self, directory: str, per_signature: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._per_signature = per_signature
        self._counts: dict[str, int] = {}
        self._full_logged = False
        for existing in self.directory.glob("*.json"):
            signature = existing.name.split("-", 1)[0]
            self._counts[signature] = self._counts.get(signature, 0) + 1

    def on_failure(self, call: Call, event: dict[str, Any]) -> None:
        """`EventRecorder` failure listener."""
        self.save(call, str(event["signature"]), event["error"])

    def save(self, call: Call, signature: str, error: dict[str, Any]) -> Path | None:
        """Save `call` as a fixture unless its signature already has enough; return the file written."""
        if self._counts.get(signature, 0) >= self._per_signature:
            return None
        if signature not in self._counts and len(self._counts) >= MAX_SIGNATURES:
            if not self._full_logged:
                self._full_logged = True
                log.warning("fixtures_full", directory=str(self.directory), signatures=len(self._counts))
            return None
        self._counts[signature] = self._counts.get(signature, 0) + 1
        headers = {
            str(k): v for k, v in call.headers.items() if k.lower() in _KEPT_HEADERS or k.lower().startswith("mcp-param-")
        }
        fixture = {
            "v": FIXTURE_VERSION,
            "recorded_at": round(time.time(), 3),
            "upstream": call.upstream,
            "method": call.method,
            "tool": call.tool,
            "signature": signature,
            "legacy_session": call.session_id is not None,
            "request": {"headers": headers, "body": call.message.body},
            "failure": error,
        }
        fixture = redact(fixture, max_chars=None, max_depth=MAX_FIXTURE_DEPTH, budget=Budget(chars=None, items=None))
        path = self.directory / f"{signature}-{call.call_id}.json"
        path.write_bytes(orjson.dumps(fixture, option=orjson.OPT_INDENT_2))
        return path


@dataclass(frozen=True)
class ReplayResult:
    """One fixture sent again: did it fail again, and how."""

    fixture: str
    method: str
    tool: str | None
    recorded: str
    verdict: Verdict

    @property
    def still_fails(self) -> bool:
        return self.verdict.server_failure or self.verdict.kind.value in ("http_429", "session_expired")


async def _legacy_session(upstream: HttpUpstream, timeout: float) -> dict[str, str]:
    """Open a session of the replay's own: initialize + notifications/initialized."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": "replay-init",
        "method": "initialize",
        "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "mcp-resilience-proxy-replay", "version": "1"}},
    }
    reply = await upstream.request(headers, orjson.dumps(init), "replay-init", timeout)
    session = reply.headers.get("Mcp-Session-Id")
    result = reply.message.get("result", {}) if isinstance(reply.message, dict) else {}
    version = result.get("protocolVersion", LEGACY_VERSION) if isinstance(result, dict) else LEGACY_VERSION
    headers = {**headers, "MCP-Protocol-Version": str(version)}
    if session:
        headers["Mcp-Session-Id"] = session
    await upstream.exchange("POST", headers, orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), timeout, None)
    return headers


async def replay_directory(directory: Path, url: str, timeout: float = 10.0) -> list[ReplayResult]:
    """Send every fixture in `directory` to the MCP endpoint `url`; return how each one fared."""
    config = UpstreamConfig.model_validate({"name": "replay", "url": url})
    upstream = HttpUpstream(config, LimitsConfig.model_validate({}))
    await upstream.start()
    results: list[ReplayResult] = []
    session: dict[str, str] | None = None
    try:
        for path in sorted(directory.glob("*.json")):
            fixture = json.loads(path.read_text())
            headers = dict(fixture["request"]["headers"])
            body = fixture["request"]["body"]
            if fixture.get("legacy_session"):
                session = session or await _legacy_session(upstream, timeout)
                headers.update(session)
            try:
                reply = await upstream.request(headers, orjson.dumps(body), body.get("id"), timeout)
                verdict = classify_reply(reply, bool(fixture.get("legacy_session")))
            except ProxyError as exc:
                verdict = classify_error(exc)
            recorded = str(fixture.get("failure", {}).get("kind", ""))
            results.append(ReplayResult(path.name, fixture["method"], fixture.get("tool"), recorded, verdict))
    finally:
        await upstream.close()
    return results

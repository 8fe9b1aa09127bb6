"""Which headers cross the proxy, in each direction, and the Host/Origin allow-lists.

End-to-end headers pass unchanged: MCP's own (`Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method`,
`Mcp-Name`, every `Mcp-Param-*` whether known or not), `Last-Event-ID`, `Authorization` (to the
upstream only, never logged), `traceparent`/`tracestate`. Hop-by-hop headers (RFC 9110 §7.6.1, plus
any named in `Connection`) stop here. `Host` is set for the upstream by the HTTP client.
`Accept-Encoding` is dropped so the upstream answers uncompressed: the proxy must read SSE events as
they pass, and a same-host sidecar gains nothing from compression. `Expect` is answered by the proxy
(``100 Continue``) and never forwarded: the proxy has the whole body before it sends anything upstream.

The upstream's own ``Server`` and ``Date`` reach the client unchanged (and no ``Server`` when it sent
none: `proxy.server.relay.relayed`); only the proxy's own answers carry aiohttp's.

The request target's query (``/mcp?token=…``) passes too, as the client sent it (`client_query`), after
the one the upstream URL carries: some servers read a credential or a tenant there. A parameter the URL's
query sets is the operator's: the client's of the same name is dropped on the way out
(`proxy.upstream.http11.request.encode_head`).

`X-Forwarded-For`, `X-Forwarded-Proto` and RFC 7239 `Forwarded` are the one exception to "unchanged": a
client could otherwise claim any address, and an upstream that trusts them from a loopback peer (uvicorn's
``--forwarded-allow-ips`` default is 127.0.0.1, exactly where a sidecar connects from) would believe it.
`forwarded` appends the TCP peer (the default, as Envoy does), overwrites them, or passes them unchanged
(`security.forwarded_headers`).

A refused Host or Origin is logged once per distinct value, with the fix (`RefusalLog`): a proxy
bound to 0.0.0.0 behind the default loopback allow-list otherwise answers 403 with no clue why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import quote, urlsplit

import structlog
from multidict import CIMultiDict

from proxy.redact import REDACTED

__all__ = [
    "REFUSALS_LOGGED",
    "SHOWN_CHARS",
    "VERDICTS_KEPT",
    "HostPolicy",
    "RefusalLog",
    "client_headers",
    "client_query",
    "forwarded",
    "upstream_headers",
]

log = structlog.get_logger("proxy")

REFUSALS_LOGGED: Final = 1000
"""Distinct refused values an allow-list logs per header; past that they are only counted in metrics."""
SHOWN_CHARS: Final = 100
"""The most of a refused header value a log line echoes (a DNS name is at most 253 characters)."""
VERDICTS_KEPT: Final = 64
"""Distinct Host values whose verdict `HostPolicy` remembers (a proxy is reached by a handful of names)."""

HOP_BY_HOP: frozenset[str] = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
_NOT_TO_UPSTREAM: frozenset[str] = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "expect"}
_NOT_TO_CLIENT: frozenset[str] = HOP_BY_HOP | {"content-length"}


def _filtered(items: Iterable[tuple[str, str]], drop: frozenset[str]) -> CIMultiDict[str]:
    """`items` without the `drop` names, nor any name listed in a `Connection` header (one pass)."""
    out: CIMultiDict[str] = CIMultiDict()
    connection: list[str] = []
    for name, value in items:
        key = name.lower()
        if key in drop:
            if key == "connection":
                connection.append(value)
            continue
        out.add(name, value)
    for value in connection:
        for token in value.split(","):
            if token := token.strip():
                out.popall(token, None)
    return out


def upstream_headers(items: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Headers to send upstream: everything end-to-end from the client's request."""
    return _filtered(items, _NOT_TO_UPSTREAM)


_FORWARDING: Final = ("X-Forwarded-For", "X-Forwarded-Proto", "Forwarded")


def _forwarded_node(peer: str) -> str:
    """`peer` as an RFC 7239 node: IPv6 bracketed and quoted (``"[::1]"``), a name or IPv4 as it is."""
    return f'"[{peer}]"' if ":" in peer else peer


def _values(headers: CIMultiDict[str], name: str) -> list[str]:
    """Every non-blank line of header `name`, stripped: an empty one would add an empty list element."""
    return [value.strip() for value in headers.getall(name, []) if value.strip()]


def forwarded(headers: CIMultiDict[str], peer: str | None, mode: str, proto: str = "http") -> None:
    """Set the forwarding headers of `headers` (already filtered for the upstream) in place.

    - ``append``: ``X-Forwarded-For`` gets the TCP `peer` appended to what the client sent (every line
      of it, joined with ``", "``), ``Forwarded`` gets ``for=PEER;proto=PROTO`` appended, and
      ``X-Forwarded-Proto`` is `proto` (the scheme of the hop the proxy saw) unless the client sent one:
      it names the scheme of the first hop (a TLS ingress in front says ``https``), and replacing it
      would tell the server a request that came over TLS did not;
    - ``overwrite``: all three say only what the proxy saw;
    - ``pass``: unchanged, for a trusted edge in front that sets them itself.

    An unknown peer (no TCP address: a UNIX socket) is ``unknown``, as RFC 7239 spells it.
    """
    if mode == "pass":
        return
    address = peer or "unknown"
    element = f"for={_forwarded_node(address)};proto={proto}"
    if not any(name in headers for name in _FORWARDING):  # nothing claimed (the usual case): say what we saw
        headers["X-Forwarded-For"] = address
        headers["X-Forwarded-Proto"] = proto
        headers["Forwarded"] = element
        return
    sent_for = _values(headers, "X-Forwarded-For") if mode == "append" else []
    sent_forwarded = _values(headers, "Forwarded") if mode == "append" else []
    sent_proto = _values(headers, "X-Forwarded-Proto")[:1] if mode == "append" else []
    for name in _FORWARDING:
        headers.popall(name, None)
    headers["X-Forwarded-For"] = ", ".join([*sent_for, address])
    headers["X-Forwarded-Proto"] = sent_proto[0] if sent_proto else proto
    headers["Forwarded"] = ", ".join([*sent_forwarded, element])


_QUERY_AS_IS: Final = frozenset(chr(code) for code in range(0x21, 0x7F)) - {"#"}
"""What a query passes on as sent: visible ASCII (a fragment never reaches the upstream)."""


def client_query(raw: str) -> str:
    """The query a client sent (`raw`: as it came, percent escapes and all), fit for the upstream's request
    line: unchanged, but for a character no request line may carry (a space, a control character,
    non-ASCII: aiohttp's C parser refuses them, its Python one does not), which is percent-encoded as
    UTF-8. A query may hold a credential (``?token=``): it is never logged."""
    if _QUERY_AS_IS.issuperset(raw):
        return raw
    return "".join(c if c in _QUERY_AS_IS else quote(c.encode("utf-8", "surrogateescape"), safe="") for c in raw)


def client_headers(items: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Headers to send back to the client: everything end-to-end from the upstream's answer."""
    return _filtered(items, _NOT_TO_CLIENT)


def _hostname(value: str) -> str:
    """The host part of a Host header value: ``[::1]:8080`` -> ``[::1]``, ``a.b:80`` -> ``a.b``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end != -1 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _host_names(entries: Iterable[str]) -> set[str]:
    """Configured names as `_hostname` yields them: ports dropped, bare IPv6 bracketed."""
    names = set()
    for entry in entries:
        name = _hostname(entry)
        names.add(f"[{name}]" if name.count(":") > 1 else name)
    return names


def _shown(value: str) -> str:
    """`value` fit for a log line: its first `SHOWN_CHARS` characters, each not printable ASCII as ``?``, and
    any user information before an ``@`` (``user:password@host``, in a Host or an Origin) hidden."""
    if "@" in value:
        value = f"{REDACTED}@" + value.rpartition("@")[2]
    shown = "".join(c if " " <= c <= "~" else "?" for c in value[:SHOWN_CHARS])
    return shown + "..." if len(value) > SHOWN_CHARS else shown


class RefusalLog:
    """Logs the first refusal of each distinct value of one header, with what to change to allow it.

    At most `cap` values are remembered, each cut to `SHOWN_CHARS`: a client sending a new Host on
    every request grows neither memory nor the log past that, and the line saying so is logged once.
    """

    __slots__ = ("_cap", "_event", "_fix", "_full", "_header", "_seen")

    def __init__(self, header: str, fix: Callable[[str], str], cap: int = REFUSALS_LOGGED) -> None:
        """`fix` says, for a refused name (as the log shows it), what to change to allow it."""
        self._header = header
        self._event = f"{header}_refused"
        self._fix = fix
        self._cap = cap
        self._seen: set[str] = set()
        self._full = False

    def __len__(self) -> int:
        """How many distinct values are remembered: never more than the cap."""
        return len(self._seen)

    def __call__(self, key: str, value: str) -> None:
        """Note one refusal of header `value`; `key` is what makes two values the same (the name in it)."""
        name = _shown(key)
        if name in self._seen or self._full:
            return
        if len(self._seen) >= self._cap:
            self._full = True
            log.warning(
                f"{self._header}_refusals_not_logged",
                logged=self._cap,
                note=f"{self._cap} distinct refused {self._header} values were logged; further ones are only "
                f"counted (mcp_proxy_rejected_requests_total, reason forbidden_{self._header})",
            )
            return
        self._seen.add(name)
        shown = {self._header: _shown(value)}
        log.warning(self._event, **shown, status=403, fix=self._fix(name), note=f"logged once per {self._header}")


def _host_fix(name: str) -> str:
    return f"add {name} to security.allowed_hosts or pass --allow-host {name}"


def _origin_fix(name: str) -> str:
    if urlsplit(name).scheme in ("http", "https"):
        return f"add {name} to security.allowed_origins"
    return "only '*' in security.allowed_origins accepts an Origin that is not http(s)://HOST"


class HostPolicy:
    """DNS-rebinding protection: is this request's `Host` and `Origin` one we serve?

    Hosts match by name, any port. Origins match a full origin exactly (``https://app.example.com``)
    or, for a bare name, any scheme and port on that host. A request with no `Origin` (every
    non-browser client) passes; a browser on a foreign page always sends one.

    The predicates have no side effects; the handler reports each refusal through `refused_host` /
    `refused_origin`, which log it once per name for as long as this allow-list is in force (a
    reload builds a new one, which logs afresh).
    """

    __slots__ = ("_any_host", "_any_origin", "_hosts", "_origin_hosts", "_origins", "_refused_hosts", "_refused_origins",
                 "_verdicts")  # fmt: skip

    def __init__(self, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]) -> None:
        hosts = {h.strip().lower() for h in allowed_hosts}
        self._any_host = "*" in hosts
        self._hosts = _host_names(hosts)
        origins = {o.strip().lower().rstrip("/") for o in allowed_origins}
        self._any_origin = "*" in origins
        self._origins = {o for o in origins if "://" in o}
        self._origin_hosts = _host_names(o for o in origins if "://" not in o)
        self._refused_hosts = RefusalLog("host", _host_fix)
        self._refused_origins = RefusalLog("origin", _origin_fix)
        self._verdicts: dict[str, bool] = {}
        """`host_allowed` of Host values seen, so a client's every request costs one lookup (at most
        `VERDICTS_KEPT` values, each at most `SHOWN_CHARS` long: a client sending a new Host on every
        request grows nothing, it is only judged afresh)."""

    def serves_only(self, names: Iterable[str]) -> bool:
        """True when every Host allowed is one of `names` (any port): no other name reaches this proxy."""
        return not self._any_host and self._hosts <= _host_names(names)

    def refused_host(self, host: str) -> None:
        """Log the first refusal of each Host name (ports aside) with the fix; see `RefusalLog`."""
        self._refused_hosts(_hostname(host), host)

    def refused_origin(self, origin: str | None) -> None:
        """Log the first refusal of each Origin with the fix; see `RefusalLog`. No Origin is never refused."""
        if origin is not None:
            self._refused_origins(origin.strip().lower().rstrip("/"), origin)

    def host_allowed(self, host: str | None) -> bool:
        """True when the Host header names this proxy."""
        if self._any_host:
            return True
        if host is None:
            return False
        allowed = self._verdicts.get(host)
        if allowed is None:
            allowed = _hostname(host) in self._hosts
            if len(self._verdicts) < VERDICTS_KEPT and len(host) <= SHOWN_CHARS:
                self._verdicts[host] = allowed
        return allowed

    def origin_allowed(self, origin: str | None) -> bool:
        """True when there is no Origin, or it is one of ours."""
        if origin is None or self._any_origin:
            return True
        origin = origin.strip().lower().rstrip("/")
        if origin in self._origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        return _hostname(parts.netloc) in self._origin_hosts

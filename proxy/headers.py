"""Which headers cross the proxy, in each direction, and the Host/Origin allow-lists.

End-to-end headers pass unchanged: MCP's own (`Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method`,
`Mcp-Name`, every `Mcp-Param-*` whether known or not), `Last-Event-ID`, `Authorization` (to the
upstream only, never logged), `traceparent`/`tracestate`. Hop-by-hop headers (RFC 9110 §7.6.1, plus
any named in `Connection`) stop here. `Host` is set for the upstream by the HTTP client.
`Accept-Encoding` is dropped so the upstream answers uncompressed: the proxy must read SSE events as
they pass, and a same-host sidecar gains nothing from compression.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from multidict import CIMultiDict

__all__ = [
    "HostPolicy",
    "client_headers",
    "upstream_headers",
]

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
_NOT_TO_UPSTREAM: frozenset[str] = HOP_BY_HOP | {"host", "content-length", "accept-encoding"}
_NOT_TO_CLIENT: frozenset[str] = HOP_BY_HOP | {"content-length", "date", "server"}


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


class HostPolicy:
    """DNS-rebinding protection: is this request's `Host` and `Origin` one we serve?

    Hosts match by name, any port. Origins match a full origin exactly (``https://app.example.com``)
    or, for a bare name, any scheme and port on that host. A request with no `Origin` (every
    non-browser client) passes; a browser on a foreign page always sends one.
    """

    __slots__ = ("_any_host", "_any_origin", "_hosts", "_origin_hosts", "_origins")

    def __init__(self, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]) -> None:
        hosts = {h.strip().lower() for h in allowed_hosts}
        self._any_host = "*" in hosts
        self._hosts = _host_names(hosts)
        origins = {o.strip().lower().rstrip("/") for o in allowed_origins}
        self._any_origin = "*" in origins
        self._origins = {o for o in origins if "://" in o}
        self._origin_hosts = _host_names(o for o in origins if "://" not in o)

    def host_allowed(self, host: str | None) -> bool:
        """True when the Host header names this proxy."""
        if self._any_host:
            return True
        return host is not None and _hostname(host) in self._hosts

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

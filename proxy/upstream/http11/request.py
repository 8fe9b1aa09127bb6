"""What goes out: where a pool connects (`Origin`, parsed once) and each request's head (`encode_head`).

A request head we write must parse as exactly the request we meant, on the upstream and on everything
between. Header names are RFC 9110 tokens (``field-name = token``): a space, a colon or a control character
in a name is refused, not sent; values may not hold CR, LF or NUL (a line break would end the header, and
could start a second request on our connection). Both refusals are `InvalidHeader`, before anything is
written. The headers came from a request aiohttp parsed or from the config, so a refusal is rare; the
checks must cost the hot path next to nothing: a name is checked once per process (`_NAMES` remembers the
good ones), and values are checked with two counts and one search over the whole head, in C.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Iterable
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from proxy.upstream.http11.errors import InvalidHeader

__all__ = ["Origin", "encode_head"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""RFC 9110 §5.6.2: ``token = 1*tchar``, what a field name (and a method) must be."""
_NAMES: dict[str, bool] = {"Content-Type": False, "Accept": False, "Authorization": True, "authorization": True}
"""Header names already found to be tokens, each with whether it is Authorization: one lookup per header
does both jobs (a name is not lower-cased per request). Bounded by `_MAX_NAMES`; past it, names not yet
seen are checked each time (correct, only slower)."""
_MAX_NAMES = 1024
_METHODS = frozenset({"GET", "POST", "DELETE", "HEAD", "PUT", "PATCH", "OPTIONS"})

_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


class Origin:
    """Where a pool connects and what every request carries: parsed once from the upstream URL."""

    __slots__ = ("authorization", "host", "host_header", "port", "query", "query_names", "ssl", "target", "unix_socket")

    def __init__(self, url: str, unix_socket: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL (scheme {parts.scheme!r})")  # the URL itself may hold a password
        secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if secure else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if secure else None
        default_port = parts.port is None or parts.port == (443 if secure else 80)
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = name if default_port else f"{name}:{self.port}"
        # What a config may spell raw (a space, non-ASCII) goes out percent-encoded; escapes already there stay.
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        self.query = bool(parts.query)
        """The URL has a query of its own: a client's is joined on with ``&``."""
        self.query_names = frozenset(_parameter_name(part) for part in parts.query.split("&") if part)
        """The names the URL's query sets (decoded): a client's parameter of the same name is dropped."""
        self.target = path + (f"?{quote(parts.query, safe=_QUERY_SAFE)}" if parts.query else "")
        self.authorization: str | None = None
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")
        self.unix_socket = unix_socket
        """Connect to this Unix socket instead of host and port (a stdio child's gateway, which nothing but
        the proxy may reach); the URL then names only the Host header and the path."""




def encode_head(
    origin: Origin,
    method: str,
    headers: Iterable[tuple[str, str]],
    body: bytes | None,
    lend_credentials: bool = True,
    query: str = "",
) -> bytes:
    """The request line and headers, with Host and (for a body) Content-Length set here.

    The URL's credentials (`Origin.authorization`) go on a request without an Authorization of its
    own only when `lend_credentials`: a caller says False when its client did send one that was
    removed on the way (a ``Connection: Authorization``), as the proxy must not speak for a client
    in its own name. `query` (the client's, as `proxy.mcp.headers.client_query` passed it) follows the
    URL's own query, joined with ``&``, less any parameter the URL's query sets itself (`_unset_by`). A
    name that is not a token, or a value with CR, LF or NUL: `InvalidHeader`."""
    if method not in _METHODS and _TOKEN.fullmatch(method) is None:
        raise InvalidHeader(f"the method {method[:40]!r} is not a token")
    target = origin.target
    if query and origin.query_names:
        query = _unset_by(origin.query_names, query)
    if query:
        target = f"{target}{'&' if origin.query else '?'}{query}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {origin.host_header}"]
    names = _NAMES
    has_auth = False
    for name, value in headers:
        is_auth = names.get(name)
        if is_auth is None:
            is_auth = _check_name(name)
        has_auth = has_auth or is_auth
        lines.append(f"{name}: {value}")
    if origin.authorization is not None and not has_auth and lend_credentials:
        lines.append(f"Authorization: {origin.authorization}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        raise _unsendable_value(lines[2:])
    return (text + "\r\n\r\n").encode("utf-8", "surrogateescape")


def _parameter_name(part: str) -> str:
    """The name of one ``name=value`` part of a query, as a server reads it: percent-decoded, ``+`` a space
    (what Starlette's and aiohttp's query parsers do)."""
    return unquote_plus(part.split("=", 1)[0])


def _unset_by(names: frozenset[str], query: str) -> str:
    """The client's `query` less each parameter whose name (decoded) is in `names`, the upstream URL's own;
    the rest unchanged, byte for byte, in order.

    The operator's parameters win, as the URL's credentials never yield to a client's: servers read the
    last of repeated parameters (Starlette) or the first (others), so with both sent a client's
    ``?tenant=attacker`` after the URL's ``?tenant=operator`` would win on many servers."""
    parts = query.split("&")
    kept = [part for part in parts if _parameter_name(part) not in names]
    return query if len(kept) == len(parts) else "&".join(kept)


def _check_name(name: str) -> bool:
    """Whether `name` is Authorization, once it is known to be a token (remembered in `_NAMES`)."""
    if _TOKEN.fullmatch(name) is None:
        # The name is not repeated whole: it may be anything a client or a config sent.
        raise InvalidHeader(f"the header name {name[:40]!r} is not a token (RFC 9110: letters, digits, !#$%&'*+-.^_`|~)")
    is_auth = name.lower() == "authorization"
    if len(_NAMES) < _MAX_NAMES:
        _NAMES[name] = is_auth
    return is_auth


def _unsendable_value(lines: list[str]) -> InvalidHeader:
    """The error for a head whose values hold CR, LF or NUL, naming the first such header (not its value)."""
    for line in lines:
        if "\r" in line or "\n" in line or "\0" in line:
            name = line.split(":", 1)[0]
            return InvalidHeader(f"the value of header {name} contains a line break or NUL (CR, LF, NUL cannot be sent)")
    return InvalidHeader("a header value contains a line break or NUL")

"""Where a pool connects and what every request carries (`Origin`), parsed once from the upstream URL."""

from __future__ import annotations

import base64
import ssl
from urllib.parse import quote, unquote, urlsplit

__all__ = ["Origin"]

_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


class Origin:
    """Where a pool connects and what every request carries: parsed once from the upstream URL."""

    __slots__ = ("authorization", "host", "host_header", "port", "ssl", "target")

    def __init__(self, url: str) -> None:
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
        self.target = path + (f"?{quote(parts.query, safe=_QUERY_SAFE)}" if parts.query else "")
        self.authorization: str | None = None
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")



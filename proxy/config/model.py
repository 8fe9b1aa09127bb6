"""Typed configuration: one YAML file, validated once, every error named by its YAML path.

The model is a tree of frozen pydantic models (`extra="forbid"`), so an unknown key is an error that
names where it is (``upstreams[0].timeouts.per_tri: unknown key``) and the JSON Schema in
``config/proxy.schema.json`` comes from the same source as the validation. `load_config()` collects
*all* errors before it raises, so an operator fixes a file in one pass.

Strings may carry ``${VAR}`` or ``${VAR:-default}``; interpolation happens on parsed scalar values (never
on raw text), so an environment value can never change the structure of the file. ``$${`` is a literal ``${``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from proxy.config.units import ByteSize, ConfigModel, Duration, parse_duration
from proxy.config.operations import (
    ActiveHealthConfig,
    AnalyzerConfig,
    AutoApplyConfig,
    BoundConfig,
    EventFileConfig,
    EventsConfig,
    FixturesConfig,
    HealthConfig,
    PassiveHealthConfig,
    ReadinessConfig,
    ReloadConfig,
)
from proxy.config.policies import AppBreakerConfig, BreakerConfig, CacheConfig, RateLimitConfig, RetryConfig, RuleConfig, TimeoutsConfig
from proxy.config.stdio import (
    Isolation,
    MAX_ARG_CHARS,
    MAX_ARGS,
    MAX_ENV_ENTRIES,
    MAX_ENV_VALUE_CHARS,
    ChildConfig,
    RestartBackoffConfig,
    argv_problems,
    env_problems,
    start_problems,
)

__all__ = [
    "ActiveHealthConfig",
    "AdminConfig",
    "AnalyzerConfig",
    "AutoApplyConfig",
    "BoundConfig",
    "ChildConfig",
    "ClientIdentityConfig",
    "ConfigError",
    "default_connection_cap",
    "Duration",
    "EventFileConfig",
    "EventsConfig",
    "FixturesConfig",
    "HealthConfig",
    "LimitsConfig",
    "ListenConfig",
    "LoggingConfig",
    "PassiveHealthConfig",
    "PoolConfig",
    "SessionsConfig",
    "ProxyConfig",
    "ReadinessConfig",
    "ReloadConfig",
    "RestartBackoffConfig",
    "SecurityConfig",
    "TimeoutsConfig",
    "UpstreamConfig",
    "allowing_hosts",
    "load_config",
    "load_config_file",
    "parse_duration",
    "quickstart_config",
    "quickstart_stdio_config",
    "safe_url",
]

LOOPBACK_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]", "::1")

_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
"""``${VAR}``, ``${VAR:-default}``, or the escape ``$${``, which stands for a literal ``${``."""


ADDRESS_CLASH = "must not be the same address as listen"
"""The error of an admin listener on the listen address: `serve` reports it as the bind error it would be."""


class ConfigError(Exception):
    """A configuration that cannot be used; `errors` holds one ``path: message`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class ListenConfig(ConfigModel):
    """Where the MCP listener accepts clients."""

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 in a pod.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one.")


class AdminConfig(ConfigModel):
    """Where the admin endpoints (/healthz, /readyz, /metrics) listen. Loopback by default: they are not for clients."""

    host: str = Field("127.0.0.1", description="Address to bind the admin listener.")
    port: int = Field(9901, ge=0, le=65535, description="TCP port of the admin listener; 0 picks a free one.")


class SecurityConfig(ConfigModel):
    """DNS-rebinding protection. The proxy rewrites `Host` for the upstream, so it must check the original."""

    allowed_hosts: tuple[str, ...] = Field(
        LOOPBACK_NAMES,
        description="Host header names accepted (port ignored); '*' accepts any. Add the Service name in Kubernetes.",
    )
    allowed_origins: tuple[str, ...] = Field(
        LOOPBACK_NAMES,
        description="Origin values accepted when a client sends one: a host name (any scheme and port), "
        "a full origin such as https://app.example.com, or '*'. Requests without Origin are accepted.",
    )
    forwarded_headers: Literal["append", "overwrite", "pass"] = Field(
        "append",
        description="X-Forwarded-For, X-Forwarded-Proto and Forwarded on the way upstream. append: add the client's "
        "TCP address to X-Forwarded-For and Forwarded (for=...;proto=http) and set X-Forwarded-Proto: http (what a "
        "client claimed stays, before the address the proxy saw); overwrite: only the proxy's own view; pass: "
        "unchanged (only behind a trusted edge proxy that sets them itself).",
    )


FD_RESERVE = 128
"""File descriptors the default connection cap leaves for everything but client connections and upstream
pools: the listening sockets, the admin listener's connections, health probes, log and event files, DNS."""
MIN_CONNECTIONS = 16
"""The default connection cap never goes below this, however low the fd limit (the proxy must serve someone)."""
MAX_DEFAULT_CONNECTIONS = 10_000
"""The default connection cap never goes above this, however high the fd limit: a sidecar serving more clients
at once than this is configured on purpose (each open connection costs memory, not only a descriptor)."""



class LimitsConfig(ConfigModel):
    """Caps on what a client may send, and on how long and how many client connections the MCP listener
    holds (`proxy.server.listener`). A reload applies them to the connections and requests that follow."""

    max_body_bytes: ByteSize = Field(4 * 1024**2, description="Largest request body accepted; larger gets 413.")
    max_body_values: int = Field(
        100_000,  # proxy.mcp.jsonrpc.MAX_BODY_VALUES (tests hold them equal; config imports nothing of mcp)
        ge=1000,
        description="Most JSON values (objects, arrays, strings, numbers, literals) one request body may hold; more "
        "gets 413 with a JSON-RPC error, before the body is parsed. Parsed, each value costs 8 to 130 bytes of "
        "memory for as long as the call runs (a 4 MiB body of empty arrays took 85 MiB); real MCP requests "
        "hold far fewer (a tool call with a hundred 768-number embeddings: 77,000).",
    )
    max_response_bytes: ByteSize = Field(
        64 * 1024**2,
        description="Largest non-streamed (JSON) upstream answer the proxy buffers, and the largest single event "
        "of a streamed one it reads (a bigger event is passed through unread).",
    )
    body_timeout: Duration = Field(
        30.0, gt=0, description="A request body must arrive within this long (a stalled client gets 408)."
    )
    header_timeout: Duration = Field(
        10.0,
        gt=0,
        description="A request's whole head (request line and headers) must arrive within this long: from the accept "
        "on a new connection, from its first byte on a kept-alive one (at the earliest from the end of the previous "
        "response). Past it: 408 with a JSON-RPC error when part of a head came, else the connection is just closed.",
    )
    idle_timeout: Duration = Field(
        75.0,
        gt=0,
        description="A kept-alive client connection with no request in progress is closed after this long without "
        "a new one (nginx's keepalive_timeout). A request or stream in progress is never idle.",
    )
    send_timeout: Duration = Field(
        60.0,
        gt=0,
        description="A client that takes none of the bytes the proxy has waiting for it (an answer, an SSE or legacy "
        "GET stream, an answer's tail as the connection closes) for a whole send_timeout is cut (within twice that): "
        "the connection is aborted, counted (mcp_proxy_rejected_requests_total{reason=\"send_timeout\"}), and a "
        "stream's upstream connection released (nginx's send_timeout). Any byte taken restarts the clock: a slow "
        "reader that keeps reading is never cut. Bytes the kernel accepts count as taken (it holds at most 128 KiB "
        "unsent per connection, TCP_NOTSENT_LOWAT).",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="Client connections open on the MCP listener at once; past it a new connection is closed at once "
        "(counted: mcp_proxy_rejected_requests_total{reason=\"connection_limit\"}). The admin listener has its own. "
        "null: derived from the file-descriptor limit (RLIMIT_NOFILE soft): that limit, less twice every upstream's "
        f"pool.max_connections (old and new pools overlap during a reload), less {FD_RESERVE} for everything else; at "
        f"least {MIN_CONNECTIONS}, at most {MAX_DEFAULT_CONNECTIONS}.",
    )
    max_request_head_bytes: ByteSize = Field(
        60 * 1024,
        ge=1024,
        description="Largest request head (request line and every header line together) accepted; larger gets 431 "
        "with a JSON-RPC error. Each single line is also capped at 8190 bytes (aiohttp's limit).",
    )
    max_request_headers: int = Field(
        100, ge=1, le=10_000, description="Most header fields one request may carry; more gets 431 with a JSON-RPC error."
    )

    def connection_cap(self, pools: Sequence[int], nofile: int | None = None) -> int:
        """`max_connections`, or the default derived from the fd limit (`nofile`, read when None) and the
        upstream pools' sizes `pools`; see `default_connection_cap`."""
        if self.max_connections is not None:
            return self.max_connections
        return default_connection_cap(pools, nofile)


def default_connection_cap(pools: Sequence[int], nofile: int | None = None) -> int:
    """``clamp(nofile - 2 * sum(pools) - FD_RESERVE, MIN_CONNECTIONS, MAX_DEFAULT_CONNECTIONS)``.

    Each client connection may hold an upstream connection, but those come from the pools, whose sizes
    are known; a reload keeps the replaced pools open for `drain_timeout`, hence twice. `nofile` is the
    soft RLIMIT_NOFILE (read when None; unlimited counts as the maximum)."""
    if nofile is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = MAX_DEFAULT_CONNECTIONS * 4 if soft == resource.RLIM_INFINITY else soft
    return max(MIN_CONNECTIONS, min(MAX_DEFAULT_CONNECTIONS, nofile - 2 * sum(pools) - FD_RESERVE))


class LoggingConfig(ConfigModel):
    """Structured logs (JSON lines on stderr)."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Minimum level logged.")
    format: Literal["json", "console"] = Field("json", description="json for machines, console for people.")
    access_log: bool = Field(False, description="One line per request (off: one line per failure only).")


CLIENT_SHARE_DIVISOR: Final = 4
"""The default per-client cap is the pool's size over this. With half the pool each, two busy clients
filled it and a third waited for a 503; with a quarter, two leave half the pool to everybody else and it
takes four clients stuck at their cap to fill it, while one client alone still has 64 of the default 256
(direct MCP clients seldom have more than a few calls open; behind a gateway that hides the clients, set
`client_identity.header`, or they share one cap)."""


class PoolConfig(ConfigModel):
    """The keep-alive connection pool to one upstream (HTTP/1.1; the oldest idle connections close first)."""

    max_connections: int = Field(256, ge=1, description="Concurrent connections to the upstream.")
    keepalive_timeout: Duration = Field(
        4.0,
        gt=0,
        description="How long an idle pooled connection is kept. Keep it below the upstream server's own keep-alive "
        "timeout (uvicorn and Node.js default to 5s), or a call can race the server closing the connection.",
    )
    max_per_client: int | None = Field(
        None,
        ge=1,
        description="Requests and streams one client may have open to this upstream at once (default: a quarter "
        "of max_connections, at least 1), so a few clients' stuck calls or long-lived streams never starve the rest.",
    )

    @property
    def client_share(self) -> int:
        """The per-client cap in force: by default a quarter of the pool (`CLIENT_SHARE_DIVISOR`)."""
        if self.max_per_client is not None:
            return self.max_per_client
        return max(1, self.max_connections // CLIENT_SHARE_DIVISOR)


class SessionsConfig(ConfigModel):
    """Legacy-era sessions (MCP 2024-11-05 to 2025-11-25) the proxy keeps so that an upstream restart is
    invisible to their clients (`proxy.sessions`): it re-initializes the lost session upstream, restores
    what the client set, and replays the request that met the loss."""

    recovery: bool = Field(
        True,
        description="Recover a legacy session the upstream lost (a restart): re-initialize it, restore its "
        "log level and subscriptions, and replay the request. Off: the client hears the server's 404 and must "
        "initialize again itself.",
    )
    max_sessions: int = Field(
        10_000,
        ge=1,
        description="Sessions remembered for recovery; past it the least recently used is forgotten (its client "
        "keeps its session, without recovery; a session already recovered is ended upstream).",
    )
    idle_timeout: Duration = Field(
        1800.0,
        gt=0,
        description="A session unused this long is forgotten when room is needed (as at max_sessions).",
    )
    recovery_timeout: Duration = Field(
        10.0, gt=0, description="Time for one recovery: initialize, initialized and the restored state."
    )


class UpstreamConfig(ConfigModel):
    """One MCP server behind the proxy, and where clients reach it: over HTTP at `url`, or as a child
    process the proxy runs and speaks to over its stdin and stdout (`command`, with the keys that only a
    child has: `env`, `cwd`, `stderr`, `isolation`, `child`)."""

    # Editors learn the either-or too (the validator below says it with a path).
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["url"]}, {"required": ["command"]}]})

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Label in metrics, logs and events.")
    url: str | None = Field(
        None, description="Full URL of the MCP endpoint, e.g. http://127.0.0.1:3000/mcp. Either url or command."
    )
    command: tuple[str, ...] | None = Field(
        None,
        min_length=1,
        max_length=MAX_ARGS,
        description="A stdio server: the program and its arguments (no shell), e.g. [npx, -y, "
        "@modelcontextprotocol/server-everything]; the program is looked up on PATH when the config is loaded. "
        f"Either url or command. At most {MAX_ARGS} items of at most {MAX_ARG_CHARS} characters.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_ENV_ENTRIES,
        description="With command: environment variables for the child. It gets only these over a safe minimal set "
        "of the proxy's own, as with the official MCP SDK: HOME, LOGNAME, PATH, SHELL, TERM, USER, LANG, LC_*, "
        "TMPDIR; nothing else of the proxy's environment reaches it. Names match ^[A-Za-z_][A-Za-z0-9_]*$; "
        f"at most {MAX_ENV_ENTRIES} of them, each value at most {MAX_ENV_VALUE_CHARS} characters.",
    )
    cwd: str | None = Field(
        None, description="With command: the child's working directory (must exist); unset: the proxy's."
    )
    stderr: Literal["log", "inherit", "discard"] = Field(
        "log",
        description="With command: what the child writes to stderr. log: each line logged by the proxy with the "
        "upstream's name; inherit: straight to the proxy's own stderr; discard: dropped.",
    )
    isolation: Isolation = Field(
        "shared",
        description="With command: shared: one child serves every client; per_session: one child per legacy "
        "session (MCP 2024-11-05 to 2025-11-25), for servers that keep state per client.",
    )
    child: ChildConfig = Field(default_factory=ChildConfig)  # type: ignore[arg-type]
    path: str = Field("/mcp", description="Path on the proxy listener where clients reach this upstream.")
    pool: PoolConfig = Field(default_factory=PoolConfig)  # type: ignore[arg-type]
    health: HealthConfig = Field(default_factory=HealthConfig)
    trust_annotations: bool = Field(
        False, description="Believe this server's tool annotations (readOnlyHint/idempotentHint) for retry decisions."
    )
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)  # type: ignore[arg-type]
    retry: RetryConfig = Field(default_factory=RetryConfig)  # type: ignore[arg-type]
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)  # type: ignore[arg-type]
    app_breaker: AppBreakerConfig | None = Field(
        None, description="Off unless set: a per-tool breaker on the application errors it names."
    )
    rate_limit: RateLimitConfig | None = Field(None, description="Off unless set.")
    cache: CacheConfig | None = Field(None, description="Off unless set.")
    rules: tuple[RuleConfig, ...] = Field((), description="Overrides per method/tool; the most specific match wins.")
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)  # type: ignore[arg-type]

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # never echo a password
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a URL: need http:// or https:// and a host (got {shown!r})")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked
        except ValueError:
            raise ValueError(f"not a URL: the port must be a number from 0 to 65535 (got {shown!r})") from None
        try:
            parts.hostname.encode("idna")
        except UnicodeError:
            raise ValueError(f"not a URL: the host name is not a valid DNS name (got {shown!r})") from None
        return value

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must start with / (got {value!r})")
        return value

    @field_validator("command", mode="before")
    @classmethod
    def _argv_list(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError(
                "must be a list: the program, then each argument, e.g. [npx, -y, server] (no shell splits a string)"
            )
        return value

    @field_validator("command")
    @classmethod
    def _argv(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            _raise_problems(cls.__name__, argv_problems(value))
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_entries(cls, value: object) -> object:
        if isinstance(value, dict):
            _raise_problems(cls.__name__, env_problems(value))
        return value

    @model_validator(mode="after")
    def _url_or_command(self) -> UpstreamConfig:
        """Exactly one of url and command; the child's keys only with a command; a command that can start."""
        problems: list[tuple[tuple[int | str, ...], str]] = []
        if self.command is None:
            if self.url is None:
                problems.append(((), "needs either url or command"))
            for key in CHILD_KEYS:
                if getattr(self, key) != _DEFAULTS[key]:
                    problems.append(((key,), "only with command (this upstream is a url)"))
        elif self.url is not None:
            problems.append(((), "needs either url or command, not both"))
        else:
            problems += start_problems(self.command, self.env, self.cwd)
        _raise_problems(type(self).__name__, problems)
        return self

    @property
    def is_stdio(self) -> bool:
        """Whether this upstream is a child process (`command`) rather than a URL."""
        return self.command is not None


CHILD_KEYS: Final = ("env", "cwd", "stderr", "isolation", "child")
"""The keys of `UpstreamConfig` that only a `command` upstream has: set to anything but their default beside
a `url`, they are an error (silently ignored, a typo'd intent would look applied)."""
_DEFAULTS: Final = {key: UpstreamConfig.model_fields[key].get_default(call_default_factory=True) for key in CHILD_KEYS}


class ClientIdentityConfig(ConfigModel):
    """How the proxy tells clients apart (rate-limit keys, cache scopes, metrics)."""

    header: str | None = Field(
        None,
        description="Header that names the client (e.g. X-Client-Id), trusted as sent: set it only behind a front "
        "that sets it. Else a hash of the forwarded credential headers (Authorization, Cookie, X-Api-Key, ...), "
        "else the remote address.",
    )


class ProxyConfig(ConfigModel):
    """The whole file. Every key has a default except the upstreams."""

    listen: ListenConfig = Field(default_factory=ListenConfig)  # type: ignore[arg-type]
    admin: AdminConfig = Field(default_factory=AdminConfig)  # type: ignore[arg-type]
    security: SecurityConfig = Field(default_factory=SecurityConfig)  # type: ignore[arg-type]
    limits: LimitsConfig = Field(default_factory=LimitsConfig)  # type: ignore[arg-type]
    logging: LoggingConfig = Field(default_factory=LoggingConfig)  # type: ignore[arg-type]
    client_identity: ClientIdentityConfig = Field(default_factory=ClientIdentityConfig)  # type: ignore[arg-type]
    drain_timeout: Duration = Field(20.0, ge=0, description="On SIGTERM, how long in-flight calls may finish.")
    sessions_file: str | None = Field(
        None,
        description="Where a stopping proxy saves the legacy sessions it keeps and the next one reads them back, so a "
        "proxy restarted in its pod (a liveness failure, an in-place update) carries them over, recovery included. Put "
        "it on a volume that outlives the container (an emptyDir). Unset: on SIGTERM the sessions only the proxy can "
        "route (rebuilt ones) are ended upstream, so their clients initialize again.",
    )
    readiness: ReadinessConfig = Field(default_factory=ReadinessConfig)  # type: ignore[arg-type]
    reload: ReloadConfig = Field(default_factory=ReloadConfig)  # type: ignore[arg-type]
    events: EventsConfig = Field(default_factory=EventsConfig)  # type: ignore[arg-type]
    analyzer: AnalyzerConfig = Field(default_factory=AnalyzerConfig)  # type: ignore[arg-type]
    upstreams: tuple[UpstreamConfig, ...] = Field(..., min_length=1, description="The MCP servers behind the proxy.")

    @model_validator(mode="after")
    def _cross_checks(self) -> ProxyConfig:
        """What no single field can check, each error at the entry at fault (in file order): the two
        listeners on one socket, an upstream name or path used twice, a rule's `rate_limit` without a
        `rate` under an upstream that has none to give it."""
        problems: list[tuple[tuple[int | str, ...], str]] = []
        overlap = _listener_overlap((self.listen.host, self.listen.port), (self.admin.host, self.admin.port))
        if overlap is not None:
            problems.append((("admin",), f"{ADDRESS_CLASH} ({overlap})"))
        first: dict[tuple[str, str], int] = {}
        for index, upstream in enumerate(self.upstreams):
            for label, value in (("name", upstream.name), ("path", upstream.path)):
                seen = first.setdefault((label, value), index)
                if seen != index:
                    problems.append((("upstreams", index, label), f"duplicate {label} {value!r} (also upstreams[{seen}])"))
            if upstream.rate_limit is None:
                for number, rule in enumerate(upstream.rules):
                    if rule.rate_limit is not None and rule.rate_limit.rate is None:
                        where = ("upstreams", index, "rules", number, "rate_limit", "rate")
                        problems.append((where, "required: the upstream has no rate_limit to take it from"))
        _raise_problems(type(self).__name__, problems)
        return self

    def upstream(self, name: str) -> UpstreamConfig:
        """The upstream called `name` (KeyError if there is none)."""
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)


_CROSS_CHECK = "cross_check"  # the error type of `_raise_problems`: its message says it all


def _raise_problems(title: str, problems: Sequence[tuple[tuple[int | str, ...], str]]) -> None:
    """Raise what a validator found, each problem at its own location (relative to the model validated,
    pydantic prefixes the rest of the path); nothing when there are none."""
    if problems:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(type=PydanticCustomError(_CROSS_CHECK, "{message}", {"message": message}), loc=loc, input=None)
                for loc, message in problems
            ],
        )


def _display(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"


def _binds(host: str) -> set[tuple[int, str]]:
    """What binding `host` takes, found without DNS: (IP version, address), with "*" for every address
    of that version. ``localhost`` is both loopbacks; any other name is itself, as version 0."""
    host = host.strip("[]").lower()
    if host == "":  # asyncio binds every interface of both versions
        return {(4, "*"), (6, "*")}
    if host == "localhost":
        return {(4, "127.0.0.1"), (6, "::1")}
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return {(0, host)}
    return {(ip.version, "*" if ip.is_unspecified else ip.compressed)}


def _collide(a: tuple[int, str], b: tuple[int, str]) -> bool:
    (version_a, address_a), (version_b, address_b) = a, b
    if version_a and version_b and version_a != version_b:
        return False
    # A name resolves to one of this machine's addresses: only a wildcard or the same name is known to take it.
    return address_a == address_b or "*" in (address_a, address_b)


def _listener_overlap(listen: tuple[str, int], admin: tuple[str, int]) -> str | None:
    """Why the two listeners cannot both bind, or None. Port 0 never collides (each gets a free port).

    A wildcard (0.0.0.0, ::) takes its port on every address of its IP version, so ``0.0.0.0:8080``
    and ``127.0.0.1:8080`` collide. asyncio binds IPv6 sockets v6-only: ``0.0.0.0`` and ``::`` do not.
    """
    (listen_host, port), (admin_host, admin_port) = listen, admin
    if port == 0 or port != admin_port:
        return None
    taken, wanted = _binds(listen_host), _binds(admin_host)
    if taken == wanted:
        return _display(listen_host, port)
    if any(_collide(a, b) for a in taken for b in wanted):
        return f"admin {_display(admin_host, port)} overlaps listen {_display(listen_host, port)}"
    return None


def _format_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "(top level)"


_BOUNDS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "string_pattern_mismatch": "must match {pattern}",
    "too_short": "must have at least {min_length} item(s)",
    "literal_error": "must be {expected}",
    "too_long": "must have at most {max_length} item(s)",
}
_UNQUOTED = ("too_short", "too_long")  # the value is the whole list


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    template = _BOUNDS.get(kind)
    if template is not None:
        message = template.format(**error.get("ctx", {}))
        return message if kind in _UNQUOTED else f"{message} (got {error['input']!r})"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if "input" in error and kind not in ("value_error", "model_type", "dict_type", _CROSS_CHECK):
        message += f" (got {error['input']!r})"
    return message


def _error_lines(exc: ValidationError) -> list[str]:
    """One ``path: message`` line per error; a list's "too short" is dropped when its items failed."""
    errors = exc.errors()
    item_failed = {e["loc"][:i] for e in errors for i in range(1, len(e["loc"])) if isinstance(e["loc"][i], int)}
    return [
        f"{_format_path(e['loc'])}: {_describe(dict(e))}"
        for e in errors
        if not (e["type"] == "too_short" and e["loc"] in item_failed)
    ]


def _interpolate(node: Any, path: str, env: dict[str, str], errors: list[str], hidden: set[str]) -> Any:
    """Replace ${VAR} in string values; `hidden` collects the paths whose value came from the environment."""
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), env, errors, hidden) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env, errors, hidden) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"  # escaped: a literal ${ (a tool name the analyzer wrote, a value that holds one)
            name, default = match.group(1), match.group(2)
            if name in env:
                hidden.add(path)
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(substitute, node)
    return node


def load_config(text: str, env: dict[str, str] | None = None) -> ProxyConfig:
    """Parse and validate YAML text; raise `ConfigError` listing every problem with its path."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}invalid YAML: {problem}"]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): must be a mapping of keys (got {type(raw).__name__})"])
    errors: list[str] = []
    hidden: set[str] = set()
    raw = _interpolate(raw, "", dict(os.environ) if env is None else env, errors, hidden)
    try:
        config = ProxyConfig.model_validate(raw)
    except ValidationError as exc:
        unset = {line.split(":", 1)[0] for line in errors}  # already explained: no second error there
        for line in _error_lines(exc):
            where = line.split(":", 1)[0]
            if where in hidden and " (got " in line:  # environment values are often secrets: never echo them
                line = line.split(" (got ", 1)[0] + " (the value comes from the environment; not shown)"
            if where not in unset:
                errors.append(line)
        raise ConfigError(errors) from exc
    if errors:
        raise ConfigError(errors)
    return config


def read_config_bytes(path: str | Path) -> bytes:
    """A config file's bytes; one that cannot be read is a `ConfigError` saying why."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"]) from exc


def load_config_file(path: str | Path, env: dict[str, str] | None = None) -> ProxyConfig:
    """Read and validate a config file; a file that cannot be read is a `ConfigError` too."""
    return load_config(read_config_bytes(path).decode("utf-8", errors="replace"), env)


def quickstart_config(upstream_url: str, listen: str | None = None, admin: str | None = None) -> ProxyConfig:
    """The config behind ``serve --upstream URL``: one upstream at /mcp, defaults for everything else."""
    return _quickstart({"name": "default", "url": upstream_url}, listen, admin)


def quickstart_stdio_config(
    command: Sequence[str], listen: str | None = None, admin: str | None = None
) -> ProxyConfig:
    """The config behind ``serve --stdio -- CMD ARGS...``: `command` run as one stdio upstream at /mcp,
    defaults for everything else. An error about the command names the flag, not a file path the user
    never wrote (``--stdio: 'nodee' not found on PATH``)."""
    try:
        return _quickstart({"name": "default", "command": list(command)}, listen, admin)
    except ConfigError as exc:
        raise ConfigError([_flag_path(line, "upstreams[0].command", "--stdio") for line in exc.errors]) from None


def _flag_path(line: str, path: str, flag: str) -> str:
    where, sep, message = line.partition(": ")
    if where == path:
        return f"{flag}{sep}{message}"
    if where.startswith(path + "["):
        return f"{flag} argv{where.removeprefix(path)}{sep}{message}"
    return line


def _quickstart(upstream: dict[str, Any], listen: str | None, admin: str | None) -> ProxyConfig:
    raw: dict[str, Any] = {"upstreams": [upstream]}
    if listen:
        raw["listen"] = host_port(listen, "--listen")
    if admin:
        raw["admin"] = host_port(admin, "--admin")
    try:
        return ProxyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_error_lines(exc)) from exc


def allowing_hosts(config: ProxyConfig, hosts: Sequence[str]) -> ProxyConfig:
    """`config` with `hosts` added to ``security.allowed_hosts`` (``serve --allow-host NAME``)."""
    allowed = config.security.allowed_hosts
    extra = tuple(dict.fromkeys(h.strip() for h in hosts if h.strip() and h.strip() not in allowed))
    if not extra:
        return config
    security = config.security.model_copy(update={"allowed_hosts": (*allowed, *extra)})
    return config.model_copy(update={"security": security})


def host_port(value: str, flag: str) -> dict[str, Any]:
    """``HOST:PORT`` (``[::1]:8080`` too) as a listener section; `flag` names the option in the error."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError([f"{flag}: must be HOST:PORT (got {value!r})"])
    host = host.strip("[]") or "127.0.0.1"
    return {"host": host, "port": int(port)}


def safe_url(url: str) -> str:
    """`url` without user info, query or fragment: fit for logs and /status (those may carry secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}"

"""Config model: defaults, path-named errors, env interpolation, and the exported JSON Schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from proxy.config.model import (
    ConfigError,
    ProxyConfig,
    allowing_hosts,
    load_config,
    load_config_file,
    parse_duration,
    quickstart_config,
)

REPO = Path(__file__).resolve().parent.parent


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(text, env or {})
    return caught.value.errors


def test_documented_default_file_is_valid_and_matches_model_defaults() -> None:
    config = load_config_file(REPO / "config" / "proxy.yaml", env={})
    model_default = ProxyConfig.model_validate({"upstreams": [{"name": "default", "url": "http://127.0.0.1:3000/mcp"}]})
    assert config == model_default


def test_minimal_config_gets_documented_defaults() -> None:
    config = load_config("upstreams: [{name: a, url: 'http://127.0.0.1:3000/mcp'}]", {})
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8080)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9901)
    assert config.upstreams[0].path == "/mcp"
    assert config.limits.max_body_bytes == 4 * 1024 * 1024
    assert (config.upstreams[0].timeouts.per_try, config.upstreams[0].timeouts.total) == (300.0, 600.0)
    limits = config.limits
    assert (limits.header_timeout, limits.idle_timeout, limits.max_connections) == (10.0, 75.0, None)
    assert (limits.max_request_head_bytes, limits.max_request_headers) == (60 * 1024, 100)
    assert config.security.forwarded_headers == "append"


TS_SDK_PROTOCOL = REPO / ".ci/cache/server-everything/node_modules/@modelcontextprotocol/sdk/dist/esm/shared/protocol.js"


def sdk_waits() -> dict[str, float]:
    """How long each official SDK client, as shipped, waits for a JSON answer before giving up (s): the
    Python SDK's HTTP client reads with a 300 s timeout (headers and body alike); the TypeScript SDK
    fails a request after DEFAULT_REQUEST_TIMEOUT_MSEC (read from the installed SDK when the cache has it)."""
    from mcp.shared._httpx_utils import create_mcp_http_client

    read = create_mcp_http_client().timeout.read
    assert read is not None
    waits = {"python": read}
    if TS_SDK_PROTOCOL.exists():
        found = re.search(r"DEFAULT_REQUEST_TIMEOUT_MSEC = (\d+)", TS_SDK_PROTOCOL.read_text())
        assert found is not None
        waits["typescript"] = int(found.group(1)) / 1000
    return waits


def test_no_default_timeout_cuts_a_call_a_direct_client_would_still_wait_for() -> None:
    """Do no harm: a JSON answer that comes after 45 s (past the old 30 s per_try) reaches a direct
    Python client, so the proxy must still be waiting for it too; and the call's deadline leaves room
    for one more attempt of that length (a timed-out idempotent call can still be retried)."""
    timeouts = load_config("upstreams: [{name: a, url: 'http://127.0.0.1:3000/mcp'}]", {}).upstreams[0].timeouts
    waits = sdk_waits()
    assert waits["python"] == 300.0 and waits.get("typescript", 60.0) == 60.0
    assert timeouts.per_try >= max(waits.values())
    assert timeouts.total >= 2 * timeouts.per_try


def test_listener_limits_and_forwarding_are_checked() -> None:
    text = """
security: {forwarded_headers: trust}
limits: {header_timeout: 0s, idle_timeout: -1, max_connections: 0, max_request_head_bytes: 100, max_request_headers: 0}
upstreams: [{name: a, url: 'http://127.0.0.1:3000/mcp'}]
"""
    assert errors_of(text) == [
        "security.forwarded_headers: must be 'append', 'overwrite' or 'pass' (got 'trust')",
        "limits.header_timeout: must be > 0.0 (got 0.0)",
        "limits.idle_timeout: must not be negative (got -1)",
        "limits.max_connections: must be >= 1 (got 0)",
        "limits.max_request_head_bytes: must be >= 1024 (got 100)",
        "limits.max_request_headers: must be >= 1 (got 0)",
    ]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("1.5m", 90.0), ("1h", 3600.0), (3, 3.0), ("7", 7.0)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


def test_every_error_is_reported_with_its_path() -> None:
    text = """
listen: {port: 99999}
bogus: 1
upstreams:
  - name: "a b"
    url: ftp://nowhere
    timeouts: {per_tri: 2s, connect: soon}
  - {name: ok, url: "http://127.0.0.1:1/mcp", path: relative}
"""
    assert errors_of(text) == [
        "listen.port: must be <= 65535 (got 99999)",
        "upstreams[0].name: must match ^[A-Za-z0-9_.-]+$ (got 'a b')",
        "upstreams[0].url: not a URL: need http:// or https:// and a host (got 'ftp://nowhere')",
        "upstreams[0].timeouts.connect: must be a duration such as 250ms, 2s or 1m (got 'soon')",
        "upstreams[0].timeouts.per_tri: unknown key",
        "upstreams[1].path: must start with / (got 'relative')",
        "bogus: unknown key",
    ]


def test_missing_upstreams_and_duplicates() -> None:
    assert errors_of("listen: {port: 1}") == ["upstreams: required"]
    assert errors_of("upstreams: []") == ["upstreams: must have at least 1 item(s)"]
    dup = "upstreams: [{name: a, url: 'http://h/mcp'}, {name: a, url: 'http://h/mcp', path: /b}]"
    assert errors_of(dup) == ["upstreams[1].name: duplicate name 'a' (also upstreams[0])"]


def test_invalid_yaml_names_the_line() -> None:
    assert errors_of("upstreams: [\n") == ["line 2, column 1: invalid YAML: expected the node content, but found '<stream end>'"]
    assert errors_of("- a\n- b\n") == ["(top level): must be a mapping of keys (got list)"]


def test_env_interpolation_on_values_only() -> None:
    text = "upstreams: [{name: a, url: '${UP}', path: '${P:-/mcp}'}]"
    config = load_config(text, {"UP": "http://10.0.0.1:3000/mcp"})
    assert config.upstreams[0].url == "http://10.0.0.1:3000/mcp"
    assert config.upstreams[0].path == "/mcp"
    assert errors_of(text) == ["upstreams[0].url: environment variable UP is not set"]


def test_a_doubled_dollar_is_a_literal_reference() -> None:
    text = "upstreams: [{name: a, url: 'http://127.0.0.1:1/mcp', rules: [{match: {tool: '$${HOME}x'}, idempotent: true}]}]"
    config = load_config(text, {"HOME": "/root"})
    assert config.upstreams[0].rules[0].match.tool == "${HOME}x"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "absent.yaml")


def test_quickstart_flags() -> None:
    config = quickstart_config("http://127.0.0.1:3000/mcp", "0.0.0.0:8081", "127.0.0.1:9999")
    assert (config.listen.host, config.listen.port, config.admin.port) == ("0.0.0.0", 8081, 9999)
    with pytest.raises(ConfigError, match="--listen: must be HOST:PORT"):
        quickstart_config("http://127.0.0.1:3000/mcp", "8081")
    with pytest.raises(ConfigError, match="not a URL"):
        quickstart_config("localhost:3000")


def test_exported_json_schema_matches_the_model() -> None:
    exported = json.loads((REPO / "config" / "proxy.schema.json").read_text())
    assert exported == ProxyConfig.model_json_schema()


@pytest.mark.parametrize("path", sorted((REPO / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    config = load_config_file(path, env={})
    assert config.upstreams


def test_there_is_an_example_per_policy() -> None:
    names = {p.stem for p in (REPO / "config" / "examples").glob("*.yaml")}
    assert {"retry", "breaker", "rate-limit", "cache", "timeouts"} <= names


def test_values_from_the_environment_are_never_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("upstreams: [{name: a, url: '${UP}'}]", {"UP": "token-abc123"})
    assert caught.value.errors == [
        "upstreams[0].url: not a URL: need http:// or https:// and a host (the value comes from the environment; not shown)"
    ]


def test_safe_url_drops_credentials_and_queries() -> None:
    from proxy.config.model import safe_url

    assert safe_url("https://user:pw@mcp.example.com:8443/mcp?token=x#f") == "https://mcp.example.com:8443/mcp"
    assert safe_url("http://[::1]:3000/mcp") == "http://[::1]:3000/mcp"


def test_an_upstream_port_out_of_range_is_a_config_error() -> None:
    assert errors_of("upstreams: [{name: a, url: 'http://127.0.0.1:99999/mcp'}]") == [
        "upstreams[0].url: not a URL: the port must be a number from 0 to 65535 (got 'http://127.0.0.1:99999/mcp')"
    ]


def test_a_duplicate_upstream_is_reported_at_the_entry_at_fault() -> None:
    text = """
upstreams:
  - {name: x, url: "http://h/mcp"}
  - {name: y, url: "http://h/mcp", path: /y}
  - {name: x, url: "http://h/mcp", path: /z}
  - {name: z, url: "http://h/mcp", path: /y}
  - {name: x, url: "http://h/mcp"}
"""
    assert errors_of(text) == [
        "upstreams[2].name: duplicate name 'x' (also upstreams[0])",
        "upstreams[3].path: duplicate path '/y' (also upstreams[1])",
        "upstreams[4].name: duplicate name 'x' (also upstreams[0])",
        "upstreams[4].path: duplicate path '/mcp' (also upstreams[0])",
    ]


@pytest.mark.parametrize(
    ("listen", "admin", "why"),
    [
        ("{host: 127.0.0.1, port: 8080}", "{host: 127.0.0.1, port: 8080}", "127.0.0.1:8080"),
        ("{port: 9901}", "{}", "127.0.0.1:9901"),  # the admin default
        ("{host: 0.0.0.0, port: 8080}", "{host: 127.0.0.1, port: 8080}", "admin 127.0.0.1:8080 overlaps listen 0.0.0.0:8080"),
        ("{host: 127.0.0.1, port: 8080}", "{host: 0.0.0.0, port: 8080}", "admin 0.0.0.0:8080 overlaps listen 127.0.0.1:8080"),
        ("{host: localhost, port: 8080}", "{host: 127.0.0.1, port: 8080}", "admin 127.0.0.1:8080 overlaps listen localhost:8080"),
        ("{host: '::', port: 8080}", "{host: '[::1]', port: 8080}", "admin [::1]:8080 overlaps listen [::]:8080"),
        ("{host: '::1', port: 8080}", "{host: '[::1]', port: 8080}", "[::1]:8080"),
        ("{host: proxy.internal, port: 8080}", "{host: 0.0.0.0, port: 8080}", "admin 0.0.0.0:8080 overlaps listen proxy.internal:8080"),
    ],
)
def test_admin_on_the_listen_address_is_a_config_error(listen: str, admin: str, why: str) -> None:
    text = f"listen: {listen}\nadmin: {admin}\nupstreams: [{{name: a, url: 'http://h/mcp'}}]"
    assert errors_of(text) == [f"admin: must not be the same address as listen ({why})"]


@pytest.mark.parametrize(
    ("listen", "admin"),
    [
        ("{host: 0.0.0.0, port: 0}", "{host: 0.0.0.0, port: 0}"),  # port 0: each gets its own free port
        ("{host: 127.0.0.1, port: 8080}", "{host: 127.0.0.1, port: 8081}"),
        ("{host: 127.0.0.1, port: 8080}", "{host: 127.0.0.2, port: 8080}"),
        ("{host: 0.0.0.0, port: 8080}", "{host: '::1', port: 8080}"),  # IPv6 sockets are bound v6-only
        ("{host: proxy.internal, port: 8080}", "{host: 127.0.0.1, port: 8080}"),  # no DNS at validation
    ],
)
def test_listeners_that_can_both_bind_are_valid(listen: str, admin: str) -> None:
    load_config(f"listen: {listen}\nadmin: {admin}\nupstreams: [{{name: a, url: 'http://h/mcp'}}]", {})


def test_every_cross_check_error_is_reported_in_one_pass() -> None:
    text = "admin: {port: 8080}\nupstreams: [{name: a, url: 'http://h/mcp'}, {name: a, url: 'http://h/mcp'}]"
    assert errors_of(text) == [
        "admin: must not be the same address as listen (127.0.0.1:8080)",
        "upstreams[1].name: duplicate name 'a' (also upstreams[0])",
        "upstreams[1].path: duplicate path '/mcp' (also upstreams[0])",
    ]


def test_quick_start_rejects_listen_equal_to_admin() -> None:
    with pytest.raises(ConfigError) as caught:
        quickstart_config("http://127.0.0.1:3000/mcp", "0.0.0.0:7000", "127.0.0.1:7000")
    assert caught.value.errors == ["admin: must not be the same address as listen (admin 127.0.0.1:7000 overlaps listen 0.0.0.0:7000)"]


def test_allowing_hosts_appends_each_new_name_once() -> None:
    config = load_config("upstreams: [{name: a, url: 'http://h/mcp'}]", {})
    extended = allowing_hosts(config, ["proxy.internal", "localhost", " proxy.internal ", "mcp.svc"])
    assert extended.security.allowed_hosts == (*config.security.allowed_hosts, "proxy.internal", "mcp.svc")
    assert extended.upstreams == config.upstreams
    assert allowing_hosts(config, []) is config

"""Stdio upstreams in the config (issue 14): an upstream is a `url` or a `command`, the child's keys, their
defaults, every error with its path, and the program looked up when the config is loaded.

A program's lookup depends on the machine, so these tests make their own: an executable script in a
temporary directory, found through a PATH that holds only that directory.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from proxy.config.model import (
    ChildConfig,
    ConfigError,
    ProxyConfig,
    UpstreamConfig,
    load_config,
    quickstart_stdio_config,
)
from proxy.config.stdio import INHERITED_ENV, child_environment
from tests.conftest import REPO

MISSING = "mcp-proxy-test-no-such-program"
SERVER = "my-mcp-server"


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(text, env or {})
    return caught.value.errors


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The proxy's PATH is one directory holding one executable, `SERVER`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / SERVER)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def one(upstream: str) -> str:
    return f"upstreams:\n  - {upstream}\n"


def test_a_command_upstream_gets_the_documented_defaults(on_path: Path) -> None:
    upstream = load_config(one(f"{{name: s, command: [{SERVER}, --flag, '']}}")).upstreams[0]
    assert upstream.command == (SERVER, "--flag", "")  # an empty argument is an argument
    assert upstream.url is None and upstream.is_stdio
    assert (upstream.env, upstream.cwd, upstream.stderr, upstream.isolation) == ({}, None, "log", "shared")
    child = upstream.child
    assert (child.start_timeout, child.stop_grace, child.max_children, child.idle_timeout) == (30.0, 2.0, 32, 600.0)
    assert (child.restart_backoff.base, child.restart_backoff.max) == (0.5, 30.0)
    assert child == ChildConfig.model_validate({})
    # Everything an upstream had before stays, sessions (legacy recovery) included.
    assert upstream.path == "/mcp" and upstream.sessions.recovery and upstream.health.active.enabled


def test_a_url_upstream_is_unchanged() -> None:
    upstream = load_config(one("{name: h, url: 'http://127.0.0.1:3000/mcp'}"), {}).upstreams[0]
    assert (upstream.url, upstream.command, upstream.is_stdio) == ("http://127.0.0.1:3000/mcp", None, False)


def test_every_child_key_accepted(on_path: Path, tmp_path: Path) -> None:
    text = f"""
upstreams:
  - name: s
    command: ["${{PROG}}", --root, "${{ROOT:-/srv}}"]
    env: {{API_TOKEN: "${{TOKEN}}", _X1: ""}}
    cwd: {tmp_path}
    stderr: discard
    isolation: per_session
    child: {{start_timeout: 1m, stop_grace: 0s, restart_backoff: {{base: 250ms, max: 1s}}, max_children: 4,
             idle_timeout: 90s}}
    sessions: {{recovery: false}}
"""
    upstream = load_config(text, {"PROG": SERVER, "TOKEN": "t0k"}).upstreams[0]
    assert upstream.command == (SERVER, "--root", "/srv")
    assert upstream.env == {"API_TOKEN": "t0k", "_X1": ""}
    assert (upstream.cwd, upstream.stderr, upstream.isolation) == (str(tmp_path), "discard", "per_session")
    child = upstream.child
    assert (child.start_timeout, child.stop_grace, child.max_children, child.idle_timeout) == (60.0, 0.0, 4, 90.0)
    assert (child.restart_backoff.base, child.restart_backoff.max) == (0.25, 1.0)
    assert upstream.sessions.recovery is False


def test_two_stdio_upstreams_may_share_a_command_but_not_a_path(on_path: Path) -> None:
    text = f"""
upstreams:
  - {{name: a, command: [{SERVER}]}}
  - {{name: b, command: [{SERVER}], path: /b}}
  - {{name: web, url: "http://127.0.0.1:3000/mcp", path: /web}}
"""
    assert [u.name for u in load_config(text).upstreams] == ["a", "b", "web"]
    clash = f"upstreams: [{{name: a, command: [{SERVER}]}}, {{name: b, command: [{SERVER}]}}]"
    assert errors_of(clash) == ["upstreams[1].path: duplicate path '/mcp' (also upstreams[0])"]


def test_neither_url_nor_command() -> None:
    assert errors_of(one("{name: a}")) == ["upstreams[0]: needs either url or command"]
    assert errors_of(one("{name: a, url: null, command: null}")) == ["upstreams[0]: needs either url or command"]


def test_both_url_and_command(on_path: Path) -> None:
    assert errors_of(one(f"{{name: a, url: 'http://h/mcp', command: [{SERVER}]}}")) == [
        "upstreams[0]: needs either url or command, not both"
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("env", "{A: b}"),
        ("cwd", "/tmp"),
        ("stderr", "inherit"),
        ("isolation", "per_session"),
        ("child", "{max_children: 3}"),
        ("child", "{restart_backoff: {max: 1m}}"),
    ],
)
def test_a_child_key_beside_a_url_is_an_error(key: str, value: str) -> None:
    assert errors_of(one(f"{{name: a, url: 'http://h/mcp', {key}: {value}}}")) == [
        f"upstreams[0].{key}: only with command (this upstream is a url)"
    ]


def test_every_child_key_beside_a_url_is_reported_in_one_pass() -> None:
    text = "upstreams: [{name: a, url: 'http://h/mcp'}, {name: b, url: 'http://h/b', path: /b, env: {A: b}, cwd: /, isolation: per_session}]"
    assert errors_of(text) == [
        "upstreams[1].env: only with command (this upstream is a url)",
        "upstreams[1].cwd: only with command (this upstream is a url)",
        "upstreams[1].isolation: only with command (this upstream is a url)",
    ]


def test_a_child_key_at_its_default_beside_a_url_is_accepted() -> None:
    text = one("{name: a, url: 'http://h/mcp', env: {}, stderr: log, isolation: shared, child: {max_children: 32}}")
    assert load_config(text, {}).upstreams[0].url == "http://h/mcp"


def test_a_program_not_on_path(on_path: Path) -> None:
    assert errors_of(one(f"{{name: a, command: [{MISSING}, x]}}")) == [
        f"upstreams[0].command: '{MISSING}' not found on PATH"
    ]


def test_the_program_is_looked_up_on_the_path_set_in_env(
    on_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    executable(other / "elsewhere-server")
    # Not on the proxy's PATH, found on the child's.
    load_config(one(f"{{name: a, command: [elsewhere-server], env: {{PATH: '{other}'}}}}"))
    assert errors_of(one("{name: a, command: [elsewhere-server]}")) == [
        "upstreams[0].command: 'elsewhere-server' not found on PATH"
    ]
    # On the proxy's PATH, not on the child's: the child would not find it.
    assert errors_of(one(f"{{name: a, command: [{SERVER}], env: {{PATH: '{other}'}}}}")) == [
        f"upstreams[0].command: '{SERVER}' not found on PATH (the PATH set in env)"
    ]
    monkeypatch.delenv("PATH")  # no PATH at all: the system default (os.defpath), as exec does
    load_config(one("{name: a, command: [sh]}"))


def test_a_program_with_a_slash_is_a_path_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "srv").mkdir()
    executable(tmp_path / "srv" / "run.sh")
    (tmp_path / "srv" / "data.txt").write_text("not a program\n")
    load_config(one(f"{{name: a, command: [./run.sh], cwd: '{tmp_path / 'srv'}'}}"))
    load_config(one(f"{{name: a, command: ['{tmp_path / 'srv' / 'run.sh'}']}}"))
    assert errors_of(one(f"{{name: a, command: [./run.sh], cwd: '{tmp_path}'}}")) == [
        f"upstreams[0].command: './run.sh' not found (relative to {tmp_path})"
    ]
    monkeypatch.chdir(tmp_path)  # no cwd: the proxy's own working directory
    load_config(one("{name: a, command: [srv/run.sh]}"))
    assert errors_of(one("{name: a, command: [./run.sh]}")) == [
        "upstreams[0].command: './run.sh' not found (relative to the proxy's working directory)"
    ]
    assert errors_of(one(f"{{name: a, command: ['{tmp_path}/absent']}}")) == [
        f"upstreams[0].command: '{tmp_path}/absent' not found"
    ]
    assert errors_of(one("{name: a, command: [srv/data.txt]}")) == [
        "upstreams[0].command: 'srv/data.txt' is not an executable file"
    ]
    assert errors_of(one("{name: a, command: [./srv]}")) == ["upstreams[0].command: './srv' is not an executable file"]


def test_a_cwd_that_is_not_a_directory(on_path: Path, tmp_path: Path) -> None:
    assert errors_of(one(f"{{name: a, command: [{SERVER}], cwd: '{tmp_path}/nope'}}")) == [
        f"upstreams[0].cwd: not a directory (got '{tmp_path}/nope')"
    ]


@pytest.mark.parametrize(
    ("command", "error"),
    [
        ("'my-mcp-server --stdio'", "upstreams[0].command: must be a list: the program, then each argument, e.g. "
         "[npx, -y, server] (no shell splits a string)"),
        ("[]", "upstreams[0].command: must have at least 1 item(s)"),
        ("['', x]", "upstreams[0].command[0]: the program to run must not be empty"),
        ("[my-mcp-server, 3]", "upstreams[0].command[1]: Input should be a valid string (got 3)"),
        ('[my-mcp-server, "a\\0b"]', "upstreams[0].command[1]: must not contain a NUL character"),
        ("{a: b}", "upstreams[0].command: Input should be a valid tuple (got {'a': 'b'})"),
    ],
)  # fmt: skip
def test_a_command_that_is_not_an_argv(on_path: Path, command: str, error: str) -> None:
    assert errors_of(one(f"{{name: a, command: {command}}}")) == [error]


def test_a_command_is_bounded_and_its_arguments_never_quoted(on_path: Path) -> None:
    secret = "s3cr3t" * 700  # 4200 characters
    assert errors_of(one(f"{{name: a, command: [{SERVER}, --token, {secret}]}}")) == [
        "upstreams[0].command[2]: must be at most 4096 characters (got 4200)"
    ]
    load_config(one(f"{{name: a, command: [{SERVER}, {'x' * 4096}]}}"))
    args = ", ".join(["x"] * 256)
    assert errors_of(one(f"{{name: a, command: [{SERVER}, {args}]}}")) == [
        "upstreams[0].command: must have at most 256 item(s)"
    ]
    load_config(one(f"{{name: a, command: [{SERVER}, {', '.join(['x'] * 255)}]}}"))


def test_env_names_and_values_are_checked_and_values_never_quoted(on_path: Path) -> None:
    text = one(
        f"{{name: a, command: [{SERVER}], env: {{'A-B': x, 1X: y, PORT: 3000, DEBUG: true, N: \"a\\0b\", ok_1: z}}}}"
    )
    assert errors_of(text) == [
        "upstreams[0].env.A-B: not a variable name: must match ^[A-Za-z_][A-Za-z0-9_]*$",
        "upstreams[0].env.1X: not a variable name: must match ^[A-Za-z_][A-Za-z0-9_]*$",
        "upstreams[0].env.PORT: must be a string (got int): quote it in the file",
        "upstreams[0].env.DEBUG: must be a string (got bool): quote it in the file",
        "upstreams[0].env.N: must not contain a NUL character",
    ]
    secret = "k" * (32 * 1024 + 1)
    assert errors_of(one(f"{{name: a, command: [{SERVER}], env: {{TOKEN: {secret}}}}}")) == [
        "upstreams[0].env.TOKEN: must be at most 32768 characters (got 32769)"
    ]
    errors = errors_of(one(f"{{name: a, command: [{SERVER}], env: {{TOKEN: '${{T}}'}}}}"), {"T": secret})
    assert errors == [
        "upstreams[0].env.TOKEN: must be at most 32768 characters (the value comes from the environment; not shown)"
    ]
    load_config(one(f"{{name: a, command: [{SERVER}], env: {{TOKEN: '${{T}}'}}}}"), {"T": secret[1:]})
    many = ", ".join(f"V{i}: x" for i in range(257))
    assert errors_of(one(f"{{name: a, command: [{SERVER}], env: {{{many}}}}}")) == [
        "upstreams[0].env: must have at most 256 item(s)"
    ]
    assert errors_of(one(f"{{name: a, command: [{SERVER}], env: [A=b]}}")) == [
        "upstreams[0].env: Input should be a valid dictionary"
    ]


def test_child_settings_are_checked(on_path: Path) -> None:
    text = one(
        f"{{name: a, command: [{SERVER}], stderr: file, isolation: per_client, child: {{start_timeout: 0s, "
        "stop_grace: -1, max_children: 0, idle_timeout: soon, restart_backoff: {base: 1m, max: 1s}, retries: 3}}"
    )
    assert errors_of(text) == [
        "upstreams[0].stderr: must be 'log', 'inherit' or 'discard' (got 'file')",
        "upstreams[0].isolation: must be 'shared' or 'per_session' (got 'per_client')",
        "upstreams[0].child.start_timeout: must be > 0.0 (got 0.0)",
        "upstreams[0].child.stop_grace: must not be negative (got -1)",
        "upstreams[0].child.restart_backoff: base (60s) is above max (1s)",
        "upstreams[0].child.max_children: must be >= 1 (got 0)",
        "upstreams[0].child.idle_timeout: must be a duration such as 250ms, 2s or 1m (got 'soon')",
        "upstreams[0].child.retries: unknown key",
    ]


def test_every_upstream_is_checked_in_one_pass(on_path: Path) -> None:
    text = f"""
upstreams:
  - {{name: a, command: [{MISSING}]}}
  - {{name: b, path: /b}}
  - {{name: c, command: [{SERVER}], path: /c, env: {{'bad name': x}}}}
  - {{name: d, command: [{SERVER}], path: /c}}
"""
    assert errors_of(text) == [
        f"upstreams[0].command: '{MISSING}' not found on PATH",
        "upstreams[1]: needs either url or command",
        "upstreams[2].env.bad name: not a variable name: must match ^[A-Za-z_][A-Za-z0-9_]*$",
    ]


def test_the_check_belongs_to_the_model_so_every_loader_makes_it(on_path: Path) -> None:
    """`load_config` (serve, validate, reload: `proxy.ops.reload` calls it) and a model built in code alike."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not found on PATH"):
        ProxyConfig.model_validate({"upstreams": [{"name": "a", "command": [MISSING]}]})
    with pytest.raises(ValidationError, match="needs either url or command"):
        UpstreamConfig.model_validate({"name": "a"})


def test_the_child_environment_is_the_safe_minimum_with_env_over_it() -> None:
    parent = {
        "HOME": "/home/u", "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "TMPDIR": "/tmp/u", "USER": "u",
        "AWS_SECRET_ACCESS_KEY": "nope", "MCP_PROXY_LISTEN_HOST": "0.0.0.0", "SHELL": "() { :; }; echo pwned",
        "LD_PRELOAD": "/evil.so",
    }  # fmt: skip
    assert child_environment({"TOKEN": "t", "PATH": "/opt/bin"}, parent) == {
        "HOME": "/home/u", "PATH": "/opt/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "TMPDIR": "/tmp/u", "USER": "u",
        "TOKEN": "t",
    }  # fmt: skip
    assert set(INHERITED_ENV) == {"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR"}
    assert child_environment({}) == {k: v for k, v in child_environment({}, dict(os.environ)).items()}


def test_the_schema_knows_command_and_the_either_or() -> None:
    schema = json.loads((REPO / "config" / "proxy.schema.json").read_text())
    upstream = schema["$defs"]["UpstreamConfig"]
    assert upstream["oneOf"] == [{"required": ["url"]}, {"required": ["command"]}]
    assert "url" not in upstream.get("required", []) and upstream["required"] == ["name"]
    command = upstream["properties"]["command"]["anyOf"][0]
    assert command == {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 256}
    assert set(upstream["properties"]) >= {"command", "env", "cwd", "stderr", "isolation", "child"}
    assert set(schema["$defs"]["ChildConfig"]["properties"]) == {
        "start_timeout", "stop_grace", "restart_backoff", "max_children", "idle_timeout"
    }  # fmt: skip


def test_quick_start_runs_one_command_and_names_the_flag_in_errors(on_path: Path) -> None:
    config = quickstart_stdio_config([SERVER, "--stdio"], "127.0.0.1:0", "127.0.0.1:0")
    (upstream,) = config.upstreams
    assert (upstream.name, upstream.path, upstream.command, upstream.url) == (
        "default",
        "/mcp",
        (SERVER, "--stdio"),
        None,
    )
    assert (config.listen.port, config.admin.port) == (0, 0)
    with pytest.raises(ConfigError) as caught:
        quickstart_stdio_config([MISSING])
    assert caught.value.errors == [f"--stdio: '{MISSING}' not found on PATH"]
    with pytest.raises(ConfigError) as caught:
        quickstart_stdio_config(["", "x"])
    assert caught.value.errors == ["--stdio argv[0]: the program to run must not be empty"]
    with pytest.raises(ConfigError) as caught:
        quickstart_stdio_config([SERVER], "8080")
    assert caught.value.errors == ["--listen: must be HOST:PORT (got '8080')"]


def test_the_python_running_the_tests_is_a_valid_command() -> None:
    """An absolute program path needs no PATH at all (what tests and the lead's e2e suites use)."""
    upstream = load_config(one(f"{{name: a, command: ['{sys.executable}', -c, 'pass']}}"), {}).upstreams[0]
    assert upstream.command == (sys.executable, "-c", "pass")

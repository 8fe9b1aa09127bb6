"""The one redaction function (`proxy.redact`) and the writers that use it: logs, events, fixtures, reloads."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from proxy.events.sinks import JsonlFile, log_event
from proxy.ops.logs import MAX_LOG_VALUE_CHARS, configure_logging, redact_secrets
from proxy.redact import MAX_LOG_LINE_CHARS, REDACTED, is_secret_key, redact, redact_text
from proxy.ops.reload import ConfigReloader
from proxy.config.model import ProxyConfig

SECRET = "Zq8vW3nKp0Lx"


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The proxy's logging set-up, writing to a buffer the test reads; structlog restored afterwards."""
    saved = structlog.get_config()
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("info")
    yield stream
    structlog.configure(**saved)


@pytest.mark.parametrize(
    "key",
    ["Authorization", "authorization", "X-Api-Key", "api_key", "apiKey", "APIKey", "accessKey", "access_key",
     "private_key", "privateKey", "pwd", "db_pwd", "userPwd", "auth", "x-auth", "authToken", "oauth", "password",
     "Mcp-Param-Password", "passwd", "pass", "client_secret", "credentials", "Cookie", "Set-Cookie", "token",
     "access_token", "Mcp-Session-Id", "sessionId", "jwt", "csrf_token", "passphrase",
     "authentication", "passcode", "creds", "sessionKey", "key", "otp", "mfa_code", "pin", "refresh", "hmac"],
)  # fmt: skip
def test_credential_key_names_are_secret(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    ["author", "authority", "authors", "max_tokens", "tokens", "tokenizer", "signature", "bypass", "passes",
     "legacy_session", "session", "keys", "name", "method", "tool", "upstream", "compass", "keyboard",
     "monkey", "spinner", "pinned"],
)  # fmt: skip
def test_ordinary_key_names_are_kept(key: str) -> None:
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {SECRET}", "Authorization: [redacted]"),
        (f"b'Cookie: a={SECRET}; b={SECRET}\\r\\nHost: x'", "b'Cookie: [redacted]\\r\\nHost: x'"),
        (f"b'X-Api-Key: {SECRET}\\r\\n'", "b'X-Api-Key: [redacted]\\r\\n'"),
        (f"https://user:{SECRET}@h:80/mcp?token={SECRET}&x=1#f", "https://[redacted]@h:80/mcp?token=[redacted]&x=1#f"),
        (f"https://{SECRET}@h/mcp", "https://[redacted]@h/mcp"),
        (f"http://h/mcp?key={SECRET}&sig={SECRET}", "http://h/mcp?key=[redacted]&sig=[redacted]"),
        (f'{{"password": "{SECRET}", "user": "bob"}}', '{"password": "[redacted]", "user": "bob"}'),
        (f"{{'pwd': '{SECRET}', 'accessKey': '{SECRET}'}}", "{'pwd': '[redacted]', 'accessKey': '[redacted]'}"),
        (f"Basic {SECRET}", "Basic [redacted]"),
        (f"bearer {SECRET}", "bearer [redacted]"),
        (f"PASSWORD={SECRET} next", "PASSWORD=[redacted] next"),
        (f"Mcp-Param-Password: {SECRET}", "Mcp-Param-Password: [redacted]"),
        ("author: Bob, authority: x, max_tokens=5, signature=abc", "author: Bob, authority: x, max_tokens=5, signature=abc"),
        ("https://host/a@b and no secret", "https://host/a@b and no secret"),
        ("client auth:3f2a9c1d0b7e", "client auth:3f2a9c1d0b7e"),
        (f"Invalid header token:\n\n    b'Cookie session={SECRET}'\n     ^", "Invalid header token:\n\n    b'Cookie [redacted]'\n     ^"),
        (f"b'Host: x\\r\\nX-Api-Key {SECRET}\\r\\n'", "b'Host: x\\r\\nX-Api-Key [redacted]\\r\\n'"),
        ("Got more than 8190 bytes, the token expired", "Got more than 8190 bytes, the token expired"),
        (f"auth: {SECRET}, auth={SECRET}", "auth: [redacted], auth=[redacted]"),
        (f"Authorization:Bearer{SECRET}", "Authorization:[redacted]"),
    ],
)
def test_credentials_inside_strings_are_replaced(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_by_key_at_any_depth_and_inside_values() -> None:
    value = {"a": [{"private_key": SECRET, "note": f"sent Authorization: Bearer {SECRET}"}], "auth": {"x": SECRET}}
    assert redact(value) == {"a": [{"private_key": REDACTED, "note": "sent Authorization: [redacted]"}], "auth": REDACTED}


def test_redact_bounds_values_depth_and_lines() -> None:
    assert redact("x" * 1_000_000) == "x" * MAX_LOG_VALUE_CHARS + f"…[{1_000_000 - MAX_LOG_VALUE_CHARS} chars cut]"
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(2000):  # deeper than the recursion limit: must not crash a log call
        node["n"] = {}
        node = node["n"]
    assert "nested deeper than" in orjson.dumps(redact(deep)).decode()
    wide = redact({"k": ["y" * 5000] * 1000})
    assert len(orjson.dumps(wide)) < MAX_LOG_LINE_CHARS + 600 * 80


def test_a_clip_inside_user_info_keeps_no_half_of_it() -> None:
    text = "x" * (MAX_LOG_VALUE_CHARS - 20) + f"https://user:{SECRET * 10}@host/"
    assert SECRET[:8] not in redact(text)


@given(st.text(alphabet="abcXYZ019:=;&?@/ '\"\\\r\n", max_size=60))
def test_a_planted_password_never_survives_a_key_value_string(noise: str) -> None:
    for template in ("password={}", "Authorization: Bearer {}", "?token={}", '"api_key": "{}"', "https://u:{}@h/"):
        assert SECRET not in redact_text(noise + template.format(SECRET) + noise.replace(SECRET, ""))


def test_the_log_processor_redacts_scans_and_bounds_every_line(logged: io.StringIO) -> None:
    log = structlog.get_logger("test")
    log.warning("bad_http_request", error=f"Invalid header: b'Authorization: Bearer {SECRET}'", name="n" * 1_000_000,
                password=SECRET, nested={"accessKey": SECRET})  # fmt: skip
    line = logged.getvalue()
    assert SECRET not in line and len(line) < 2 * MAX_LOG_VALUE_CHARS
    record = json.loads(line)
    assert record["event"] == "bad_http_request" and record["password"] == REDACTED
    assert record["error"] == "Invalid header: b'Authorization: [redacted]'"


def test_processor_keeps_the_event_name_whatever_the_other_fields_hold() -> None:
    fields = {f"f{i}": "z" * MAX_LOG_VALUE_CHARS for i in range(20)}
    out = redact_secrets(None, "info", {**fields, "event": "e" * 100})
    assert out["event"] == "e" * 100


def test_event_sinks_redact_what_the_event_carries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    event = {"v": 1, "id": 1, "ts": 1.0, "type": "call_failed", "params": {"password": SECRET},
             "error": {"message": f"upstream said: token={SECRET}"}}  # fmt: skip
    sink = JsonlFile(str(tmp_path / "events.jsonl"), 1 << 20, 1)
    sink(event)
    sink.close()
    log_event(event)
    assert SECRET not in (tmp_path / "events.jsonl").read_text() and SECRET not in capsys.readouterr().err


async def test_a_rejected_reload_never_echoes_the_urls_credentials(tmp_path: Path, logged: io.StringIO) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text("upstreams:\n  - name: a\n    url: http://h/mcp\n")
    applied: list[ProxyConfig] = []

    async def apply(config: ProxyConfig) -> None:
        applied.append(config)

    reported: list[dict[str, Any]] = []

    class Observer:
        def policy_event(self, kind: str, call: Any, **fields: Any) -> None:
            reported.append({"kind": kind, **fields})

    reloader = ConfigReloader(path, apply, 60.0, False, Observer())
    path.write_text(f"upstreams:\n  - name: a\n    url: 'ftp://u:{SECRET}@h/mcp?token={SECRET}&key={SECRET}'\n")
    result = await reloader.check("test")
    assert result.outcome == "rejected" and not applied
    assert "config_rejected" in logged.getvalue() and reported[0]["kind"] == "config_rejected"
    shown = orjson.dumps([result.as_dict(), reported]).decode() + logged.getvalue()
    assert SECRET not in shown and "upstreams[0].url" in shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("rate_limit.key: upstream -> client", "rate_limit.key: upstream -> client"),
        ("+    key: client", "+    key: client"),
        ("key: sk-live-1234", "key: [redacted]"),  # a bare key with anything else: a secret, as before
        ("api_key: client", "api_key: [redacted]"),  # a credential's name: whatever its value
    ],
)
def test_a_rate_limits_key_word_is_shown_other_keys_are_not(text: str, shown: str) -> None:
    """A proposal's change and diff name a rate limit's `key: client`: the config's own word, which
    redaction hid ("[redacted] -> client"); any other bare key value stays hidden."""
    assert redact_text(text) == shown

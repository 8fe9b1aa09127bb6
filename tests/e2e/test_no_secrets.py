"""No planted secret leaves the proxy: not in logs, events (stderr, file, /events), fixtures, /status or /metrics.

The proxy runs as a user runs it (``serve --config FILE``, its own process) in front of the fault
upstream, with an events file and fixtures on. Distinct random secrets are planted everywhere a client
or an operator can put one: the credential headers of a failing call (Authorization, Cookie,
X-Api-Key, an ``Mcp-Param-Password`` header), a ``password`` tool argument, the user info and a
``?token=`` of the upstream URL (in the served config and in a rejected reload), a malformed request
carrying Authorization, header lines aiohttp refuses and quotes in its error (a control character, no
colon), and over-long header lines that start with a credential. Every output is
then read whole and grepped for every secret, and each must be non-empty (a writer that writes
nothing would pass the grep). The upstream itself receives the client's credentials: that is
forwarding, not a leak, and is not checked.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

from tests.conftest import start_proxy_process
from tests.fault_upstream import FaultUpstream


def planted() -> dict[str, str]:
    names = ("authorization", "cookie", "api_key", "mcp_param", "argument", "url_password", "url_token",
             "reload_password", "reload_token", "malformed_auth", "bad_char_auth", "no_colon_auth", "no_colon_cookie",
             "long_auth", "long_cookie")  # fmt: skip
    return {name: f"S{secrets.token_hex(12)}" for name in names}


async def raw_request(url: str, head: bytes) -> bytes:
    """Send `head` as is on a fresh connection; return whatever the proxy answers before closing."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(head)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def read_sse_until(admin: str, last_id: int) -> bytes:
    """The /events stream from the start, read until the event with id `last_id` arrived."""
    seen = b""
    async with aiohttp.ClientSession() as session, session.get(f"{admin}/events", params={"since": "0"}) as response:
        async for chunk in response.content.iter_any():
            seen += chunk
            if f"id: {last_id}\n".encode() in seen:
                return seen
    raise AssertionError(f"/events ended before event {last_id}")


async def test_no_planted_secret_reaches_any_output(tmp_path: Path) -> None:
    secret = planted()
    upstream = FaultUpstream()
    await upstream.start()
    upstream.fault("tools/call", "lookup", status=500)
    fixtures, events_file = tmp_path / "fixtures", tmp_path / "events.jsonl"
    target = urlsplit(upstream.url)
    upstream_url = f"http://user:{secret['url_password']}@{target.netloc}{target.path}?token={secret['url_token']}"
    config: dict[str, Any] = {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "reload": {"watch": False},
        "upstreams": [{"name": "up", "url": upstream_url, "health": {"active": {"enabled": False}}, "retry": {"max_attempts": 1}}],
        "events": {"include_params": True, "file": {"path": str(events_file)}, "fixtures": {"dir": str(fixtures)}},
    }
    proxy = await start_proxy_process(config, tmp_path)
    outputs: dict[str, bytes] = {}
    try:
        headers = {
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {secret['authorization']}", "Cookie": f"sid={secret['cookie']}; theme=dark",
            "X-Api-Key": secret["api_key"], "Mcp-Param-Password": secret["mcp_param"],
        }  # fmt: skip
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "lookup", "arguments": {"key": "k1", "password": secret["argument"]}}}  # fmt: skip
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.post(f"{proxy.url}/mcp", json=call, headers=headers) as response:
                    assert response.status == 500
                    outputs["client answer"] = await response.read()

        host = urlsplit(proxy.url).netloc.encode()
        malformed = (
            b"POST /mcp HTTP/1.1\r\nHost: " + host + b"\r\nAuthorization: Bearer " + secret["malformed_auth"].encode()
            + b"\r\nContent-Length: nope\r\n\r\n"
        )  # fmt: skip
        long_lines = [
            b"Authorization: Bearer " + secret["long_auth"].encode() + b"x" * 9000,
            b"Cookie: session=" + secret["long_cookie"].encode() + b"y" * 9000,
        ]
        bad_lines = [  # aiohttp's error for each quotes the offending line
            b"Authorization: Bearer " + secret["bad_char_auth"].encode() + b"\x01",
            b"Authorization Bearer " + secret["no_colon_auth"].encode(),
            b"Cookie session=" + secret["no_colon_cookie"].encode(),
        ]
        answers = [await raw_request(proxy.url, malformed)]
        for line in bad_lines:
            answers.append(await raw_request(proxy.url, b"POST /mcp HTTP/1.1\r\nHost: " + host + b"\r\n" + line + b"\r\n\r\n"))
        for line in long_lines:
            answers.append(await raw_request(proxy.url, b"POST /mcp HTTP/1.1\r\nHost: " + host + b"\r\n" + line + b"\r\n\r\n"))
        assert all(re.match(rb"HTTP/1\.[01] 4\d\d ", answer) for answer in answers), answers
        outputs["malformed answers"] = b"".join(answers)

        rejected = dict(config)
        bad_url = f"ftp://admin:{secret['reload_password']}@{target.netloc}/mcp?token={secret['reload_token']}"
        rejected["upstreams"] = [{**config["upstreams"][0], "url": bad_url}]
        (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(rejected))
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{proxy.admin_url}/reload") as response:
                assert response.status == 422
                outputs["/reload"] = await response.read()
            for path in ("/status", "/metrics", "/events?format=json"):
                async with session.get(f"{proxy.admin_url}{path}") as response:
                    assert response.status == 200
                    outputs[path] = await response.read()
        last_id = json.loads(outputs["/events?format=json"])[-1]["id"]
        outputs["/events (SSE)"] = await read_sse_until(proxy.admin_url, last_id)
    finally:
        await proxy.stop()
        await upstream.stop()
    await proxy.collector  # type: ignore[attr-defined]
    outputs["stderr"] = b"\n".join(json.dumps(line).encode() for line in proxy.log_lines)
    outputs["events file"] = events_file.read_bytes()
    fixture_files = sorted(fixtures.glob("*.json"))
    assert fixture_files
    for fixture in fixture_files:
        outputs[f"fixture {fixture.name}"] = fixture.read_bytes()

    status = json.loads(outputs["/status"])
    assert status["config"]["last_reload"]["outcome"] == "rejected" and status["config"]["last_reload"]["errors"]
    assert b"config_rejected" in outputs["stderr"]  # the log line (the event, when published, is grepped with the rest)
    assert b"bad_http_request" in outputs["stderr"] and b'"password": "[redacted]"' in outputs[f"fixture {fixture_files[0].name}"]
    for name, data in outputs.items():
        assert data.strip(), f"{name} is empty: the test would prove nothing"
        leaked = [what for what, value in secret.items() if value.encode() in data]
        assert not leaked, f"{name} carries the planted {leaked}"

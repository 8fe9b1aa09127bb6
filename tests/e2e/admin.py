"""The proxy's admin port, read the way an operator or Kubernetes reads it: /readyz and /status.

The quick start (``serve --upstream URL``) names its one upstream ``default``; its upstream-wide
circuit breaker carries the same name in ``/status``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import httpx2
from prometheus_client.parser import text_string_to_metric_families

UPSTREAM: Final = "default"
"""The upstream's name under ``serve --upstream``."""

PROBE_WAIT_S: Final = 30.0
"""Bound on waiting for the next active probe: the default interval is 10 s (+10% jitter), timeout 2 s."""


async def admin_get(admin_url: str, path: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.get(f"{admin_url}{path}")


async def upstream_status(admin_url: str) -> dict[str, Any]:
    """The ``/status`` entry of the upstream."""
    response = await admin_get(admin_url, "/status")
    assert response.status_code == 200, response.text
    entry = response.json()["upstreams"][UPSTREAM]
    assert isinstance(entry, dict)
    return entry


async def wait_ready(admin_url: str, timeout: float = 15.0) -> None:
    """Return once ``/readyz`` answers 200 (the proxy's first probe of a fresh upstream); bounded."""
    async with asyncio.timeout(timeout):
        while (await admin_get(admin_url, "/readyz")).status_code != 200:
            await asyncio.sleep(0.05)  # the first active probe has not finished yet; bounded above


async def retries(admin_url: str) -> dict[str, float]:
    """``mcp_proxy_retries_total`` of the upstream, by failure kind (empty when nothing was retried)."""
    response = await admin_get(admin_url, "/metrics")
    assert response.status_code == 200, response.text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "mcp_proxy_retries_total" and sample.labels.get("upstream") == UPSTREAM:
                counts[sample.labels.get("failure", "")] = sample.value
    return {kind: value for kind, value in counts.items() if value}


async def assert_upstream_fine(admin_url: str, what: str, *, retries_allowed: bool = False) -> None:
    """``/readyz`` is 200 and ``/status`` shows the upstream breaker (and any other) closed.

    Unless `retries_allowed`, the proxy also retried nothing: a client's mistake answered by the
    server is not something a retry can fix, and each retry is one more request the server pays for.
    """
    ready = await admin_get(admin_url, "/readyz")
    entry = await upstream_status(admin_url)
    assert ready.status_code == 200, f"{what}: /readyz {ready.status_code} {ready.text}; health {entry.get('health')}"
    breakers = {b["name"]: b for b in entry["breakers"]}
    assert UPSTREAM in breakers, f"{what}: no upstream breaker in /status: {entry['breakers']}"
    not_closed = [b for b in entry["breakers"] if b["state"] != "closed"]
    assert not_closed == [], f"{what}: breakers not closed: {not_closed}"
    if not retries_allowed:
        retried = await retries(admin_url)
        assert retried == {}, f"{what}: the proxy retried (mcp_proxy_retries_total by failure): {retried}"


async def wait_for_probe_after(admin_url: str, since: float) -> dict[str, Any]:
    """The first active probe that finished after ``since`` (a ``time.monotonic()`` reading); bounded.

    Read from ``/status``: ``health.last_probe.seconds_ago`` shorter than the time since ``since``.
    """
    async with asyncio.timeout(PROBE_WAIT_S):
        while True:
            asked = time.monotonic()
            probe = (await upstream_status(admin_url))["health"]["last_probe"]
            if probe is not None and probe.get("seconds_ago") is not None and probe["seconds_ago"] < asked - since:
                assert isinstance(probe, dict)
                return probe
            await asyncio.sleep(0.2)  # the next probe is due within the default interval; bounded above

"""Auto-apply with ``auto_apply.shadow``: a proposal within bounds starts a shadow trial instead of being
written; the promotion writes it, and then auto-apply's own verification runs as before.

The embedded analyzer reaches the trials through its `Trials` protocol (the app hands it the
`TrialManager`): until embedded.py has that seam, this module is skipped.

Exact outcomes, as in tests/test_auto_apply.py: the upstream answers reads in 420 ms, the file allows
200 ms, so every read times out; the observations are published with the upstream's own delay (no
background watcher), so the timeouts rule proposes exactly 750ms, and under it every read is rescued.
The trial's clock is a fake one, moved past the end by the test.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.analyzer.embedded import EmbeddedAnalyzer
from proxy.app import ProxyServer, running_proxy
from proxy.config.model import load_config
from tests.fault_upstream import FaultUpstream
from tests.test_auto_apply import PROPOSED_PER_TRY, READ, UPSTREAM_DELAY_S, burst, file_config, learn

pytestmark = pytest.mark.skipif(
    "trials" not in inspect.signature(EmbeddedAnalyzer).parameters, reason="embedded.py has no Trials seam yet"
)


def shadow_config(upstream_url: str) -> dict[str, Any]:
    config = file_config(upstream_url)
    config["analyzer"]["auto_apply"]["shadow"] = True
    config["analyzer"]["shadow"] = {"duration": "30s", "min_calls": 10}
    return config


def observe_since(proxy: ProxyServer, since: int, observed_ms: float) -> int:
    """`tests.test_auto_apply.observe` for the timeouts published after event `since` only."""
    timeouts = [e for e in proxy.bus.recent(since) if e["type"] == "timeout"]
    for timeout in timeouts:
        envelope = {k: v for k, v in timeout.items() if k not in ("id", "ts", "type", "observing")}
        proxy.bus.publish({**envelope, "type": "timeout_observed", "observed_ms": observed_ms})
    return len(timeouts)


def of_type(proxy: ProxyServer, kind: str) -> list[dict[str, Any]]:
    return [e for e in proxy.bus.recent() if e["type"] == kind]


async def test_auto_apply_in_shadow_writes_only_on_promotion_then_verifies(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("resources/read", delay=UPSTREAM_DELAY_S)
    path = tmp_path / "proxy.yaml"
    original = yaml.safe_dump(shadow_config(upstream.url))
    path.write_text(original)
    async with running_proxy(load_config(original, {}), config_path=path) as proxy, aiohttp.ClientSession() as session:
        assert proxy.analyzer is not None and proxy.trials is not None
        frozen = [proxy.trials.clock()]
        proxy.trials.clock = lambda: frozen[0]
        now = await learn(proxy, session)
        proxy.analyzer.step(now)
        (started,) = of_type(proxy, "trial_started")
        assert path.read_text() == original and of_type(proxy, "proposal_applied") == []
        proxy.analyzer.step(now + 1)  # the trial runs: nothing else starts, nothing is written
        assert path.read_text() == original and len(of_type(proxy, "trial_started")) == 1

        # The trial's own traffic: the same 25 timed-out reads, observed at 420 ms (750ms would rescue all).
        assert await burst(session, proxy.url + "/mcp", READ, 25) == [504] * 25
        assert observe_since(proxy, started["id"], UPSTREAM_DELAY_S * 1000) == 25
        frozen[0] += 30
        proxy.trials.step()
        (finished,) = of_type(proxy, "trial_finished")
        assert (finished["trial"], finished["verdict"]) == (started["trial"], "promoted"), finished["reason"]
        assert f"per_try: {PROPOSED_PER_TRY}" in path.read_text()

        proxy.analyzer.step(now + 2)  # the promotion is seen: auto-apply verifies it as its own
        (applied,) = of_type(proxy, "proposal_applied")
        assert applied["proposal"] == started["proposal"]
        assert proxy.analyzer.document()["verifying"] == started["proposal"]


async def test_auto_apply_in_shadow_writes_nothing_when_the_trial_rejects(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("resources/read", delay=UPSTREAM_DELAY_S)
    path = tmp_path / "proxy.yaml"
    original = yaml.safe_dump(shadow_config(upstream.url))
    path.write_text(original)
    async with running_proxy(load_config(original, {}), config_path=path) as proxy, aiohttp.ClientSession() as session:
        assert proxy.analyzer is not None and proxy.trials is not None
        frozen = [proxy.trials.clock()]
        proxy.trials.clock = lambda: frozen[0]
        now = await learn(proxy, session)
        proxy.analyzer.step(now)
        (started,) = of_type(proxy, "trial_started")
        assert await burst(session, proxy.url + "/mcp", READ, 25) == [504] * 25
        assert observe_since(proxy, started["id"], 5000.0) == 25  # answers past any per_try it proposes: nothing rescued
        frozen[0] += 30
        proxy.trials.step()
        (finished,) = of_type(proxy, "trial_finished")
        assert finished["verdict"] == "rejected"
        proxy.analyzer.step(now + 2)
        assert path.read_text() == original and of_type(proxy, "proposal_applied") == []
        assert proxy.analyzer.document()["verifying"] is None

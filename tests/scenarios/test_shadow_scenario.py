"""A shadow trial, live: a proposal tried by the running proxy before it is enforced, as an operator runs it.

The slow-tool story of `test_scenarios` (``lookup`` answers in 420 ms under a 200 ms per-try timeout),
but instead of ``--apply ID`` the operator types ``--apply ID --shadow 20s``: the proxy (a subprocess,
started on the file) keeps enforcing 200 ms, so the trial's own traffic still fails, while it counts
what 750ms would have done to the same calls (every timed-out attempt observed answering at ~420 ms
would have completed). At the end of the trial it compares that with the proposal's estimate,
promotes it, writes the file itself and hot-reloads it; the same traffic then succeeds.

Exact where the mechanism decides: every call in the trial fails live (the upstream cannot beat the
limit), every one of them would have succeeded under 750ms (an observation past 750 ms would take a
machine 330 ms slower than the delay), and the verdict needs at least `min_calls` (5) of the 10. The
trial's 20 s hold the 10 calls (about 2 s at 5 at a time: 3 tries of 200 ms and two backoffs each; ten
times that on a slow machine, their observations included), and the test waits for the verdict by polling ``GET /trials``, never by sleeping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.fault_upstream import FaultUpstream
from tests.scenarios.harness import Call, Stage, base_config, cli, lookup, only, rules_of, until

pytestmark = pytest.mark.scenario

StageFactory = Callable[[dict[str, Any]], Awaitable[Stage]]
TRIAL_S = 20


async def trials(proxy: Stage) -> dict[str, Any]:
    async with proxy.session.get(proxy.proxy.admin_url + "/trials") as response:
        assert response.status == 200
        return dict(await response.json())


async def test_a_shadow_trial_measures_promotes_writes_and_reloads(upstream: FaultUpstream, stage: StageFactory) -> None:
    config = base_config(upstream.url, trust_annotations=True, timeouts={"per_try": "200ms"}, breaker={"reset_timeout": "2s"})
    config["analyzer"] = {"shadow": {"duration": "1m", "min_calls": 5}}
    proxy = await stage(config)
    assert (await proxy.run([Call("tools/list")] + [lookup()] * 3)).errors == 0
    upstream.fault("tools/call", tool="lookup", delay=0.42)

    before = await proxy.run([lookup()] * 10, concurrency=5)
    assert before.reasons() == {"upstream_timeout": 10}
    proposals = await proxy.analyze()
    assert rules_of(proposals) == ["timeouts"], proposals
    proposal = only(proposals, "timeouts")
    original = proxy.config_file.read_text()

    code, out, err = await cli(
        "analyze", "--follow", proxy.proxy.admin_url, "--once", "--config", str(proxy.config_file),
        "--apply", proposal["id"], "--shadow", f"{TRIAL_S}s",
    )  # fmt: skip
    assert code == 0, err
    assert f"of proposal {proposal['id']} started for {TRIAL_S}s" in out
    assert proxy.config_file.read_text() == original  # nothing written: the trial only counts
    running = (await trials(proxy))["running"]
    assert running is not None and running["proposal"] == proposal["id"]

    during = await proxy.run([lookup()] * 10, concurrency=5)
    assert during.reasons() == {"upstream_timeout": 10}  # the live policy still decides every call

    async def finished() -> bool:
        return not (await trials(proxy))["running"]

    await until(finished, "the trial's verdict", timeout=TRIAL_S + 60)
    (last, *_) = (await trials(proxy))["finished"]
    assert (last["proposal"], last["verdict"]) == (proposal["id"], "promoted"), last["reason"]
    measured = last["measured"]
    assert measured["errors_after"] == 0 and measured["errors_before"] == measured["timeouts_before"] // 3 >= 5
    events = await proxy.events()
    (started,) = [e for e in events if e["type"] == "trial_started"]
    (verdict,) = [e for e in events if e["type"] == "trial_finished"]
    assert (started["proposal"], verdict["proposal"], verdict["verdict"]) == (proposal["id"], proposal["id"], "promoted")
    assert "per_try: 750ms" in proxy.config_file.read_text()

    async def reloaded() -> bool:
        return int((await proxy.status())["config"]["reloads_applied"]) >= 1

    await until(reloaded, "the reload of the promoted file")
    await proxy.wait_breaker_reset()
    after = await proxy.run([lookup()] * 10, concurrency=5)
    assert (before.errors, during.errors, after.errors) == (10, 10, 0)

"""The official conformance suite scores each real server the same through the default proxy as direct.

Once per server and era it speaks (``--requirements 2025-11-25`` / ``2026-07-28``): nothing lost
(:func:`~tests.conformance.runner.regressions`) and nothing gained
(:func:`~tests.conformance.runner.improvements`), with one exception: a
``dns-rebinding-protection`` check may pass through the proxy where it fails direct, because the
proxy checks ``Host``/``Origin`` itself (it rewrites ``Host`` for the upstream, so it must).

These servers fail many checks on their own (they lack the suite's ``test_*`` fixtures): each of
those failures is a client mistake from the server's point of view (unknown tool, prompt,
resource...), which is exactly what the proxy must pass through without changing anyone's outcome.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance.runner import ConformanceResult, improvements, regressions, run_conformance
from tests.e2e.conftest import StackFactory, harness_missing, require
from tests.e2e.upstreams import Era, REQUIREMENTS, SERVER_ERAS, ServerSpec

pytestmark = pytest.mark.asyncio(loop_scope="package")


PROXY_MAY_ADD: tuple[str, ...] = ("dns-rebinding-protection:",)
"""Scenarios whose checks may pass through the proxy when they fail direct (the proxy's own protection)."""


def explain(keys: dict[str, tuple[str, str]], direct: ConformanceResult, proxied: ConformanceResult) -> str:
    """One line per differing check, with each side's error message."""
    lines = []
    for key, (was, now) in sorted(keys.items()):
        lines.append(
            f"  {key}: direct {was} ({direct.errors.get(key, '')[:200]!r}) / "
            f"proxy {now} ({proxied.errors.get(key, '')[:200]!r})"
        )
    return "\n".join(lines)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("spec", "era"), SERVER_ERAS)
async def test_conformance_through_the_proxy_equals_direct(spec: ServerSpec, era: Era, stack_for: StackFactory) -> None:
    require(harness_missing())
    stack = await stack_for(spec)
    revision = REQUIREMENTS[era]
    direct = await asyncio.to_thread(run_conformance, stack.direct_url, revision)
    proxied = await asyncio.to_thread(run_conformance, stack.url, revision)
    assert not direct.timed_out and not proxied.timed_out, (direct.output_tail, proxied.output_tail)
    assert direct.counts()["pass"] > 0, f"the harness never reached {spec} directly:\n{direct.output_tail}"

    lost = regressions(direct, proxied)
    gained = {
        key: change
        for key, change in improvements(direct, proxied).items()
        if not (key.startswith(PROXY_MAY_ADD) and change[0] == "fail")
    }
    assert lost == {}, (
        f"{spec} {revision}: {len(lost)} checks pass direct but not through the proxy:\n{explain(lost, direct, proxied)}"
    )
    assert gained == {}, (
        f"{spec} {revision}: {len(gained)} checks pass only through the proxy:\n{explain(gained, direct, proxied)}"
    )

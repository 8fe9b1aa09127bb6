"""The scenario suite's fixture: a `Stage` factory (fault upstream, proxy process, HTTP client), and its marker.

Every test here is marked ``scenario`` (the test modules' ``pytestmark``) (``-m "not scenario"`` leaves the suite out, ``-m scenario`` runs
it alone); the README's ``python -m pytest -q`` runs it with everything else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fault_upstream import FaultUpstream
from tests.scenarios.harness import Stage


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario: a live fault scenario (tests/scenarios): proxy process, analyzer CLI, apply")


@pytest.fixture
async def stage(upstream: FaultUpstream, tmp_path: Path) -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[Stage]]]:
    """`await stage(config)`: the proxy started on `config` (written to tmp_path/proxy.yaml) in front of `upstream`."""
    started: list[Stage] = []
    async with aiohttp.ClientSession() as session:

        async def start(config: dict[str, Any]) -> Stage:
            started.append(await Stage.start(upstream, config, tmp_path, session))
            return started[-1]

        yield start
        for one in started:
            await one.stop()

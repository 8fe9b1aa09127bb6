"""``serve`` imports only what serving uses: not the demo, the MCP SDK, uvicorn, the analyzer, rich...

Each check runs a fresh interpreter (a test process has imported everything already) that does what
``mcp-resilience-proxy serve --config FILE`` does: the CLI module first, then a `ProxyServer` built,
started and stopped on that file; it prints the modules it ended up with. Exact and independent of
the machine: a module is loaded or it is not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

NEVER_SERVING: tuple[str, ...] = (
    "mcp",  # the SDK: the demo's server and client
    "uvicorn",
    "starlette",
    "httpx",
    "jsonschema",
    "proxy.demo",
    "proxy.analyzer",  # unless analyzer.enabled
    "proxy.cli.analyze",
    "proxy.ops.fixtures",  # unless events.fixtures.dir
    "ruamel",  # the analyzer's YAML editor
    "rich",  # structlog's console tracebacks (proxy.ops.logs)
    "pygments",
)
"""Top-level packages and our modules a serving proxy never loads (with the default config)."""

_SERVE = """
import asyncio, json, sys
from pathlib import Path
import proxy.cli.main  # what the console script imports first
from proxy.config.model import load_config_file
from proxy.app import ProxyServer

async def serve(path):
    server = ProxyServer(load_config_file(path), config_path=Path(path))
    await server.start()
    await server.stop()

asyncio.run(serve(sys.argv[1]))
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_serving(tmp_path: Path, extra: str = "") -> set[str]:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "listen: {host: 127.0.0.1, port: 0}\n"
        "admin: {host: 127.0.0.1, port: 0}\n"
        "upstreams:\n"
        "  - name: up\n"
        "    url: http://127.0.0.1:9/mcp\n"
        "    health: {active: {enabled: false}}\n" + extra
    )
    done = subprocess.run(
        [sys.executable, "-c", _SERVE, str(config)], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def _loaded(modules: set[str], name: str) -> bool:
    return any(module == name or module.startswith(name + ".") for module in modules)


def test_serving_loads_none_of_what_it_does_not_use(tmp_path: Path) -> None:
    modules = _modules_after_serving(tmp_path)
    assert [name for name in NEVER_SERVING if _loaded(modules, name)] == []
    assert {"proxy.app", "proxy.server.handler", "aiohttp", "structlog"} <= modules  # it did serve


def test_what_the_config_turns_on_is_loaded(tmp_path: Path) -> None:
    fixtures = tmp_path / "fixtures"
    modules = _modules_after_serving(
        tmp_path, f"analyzer: {{enabled: true}}\nevents: {{fixtures: {{dir: {json.dumps(str(fixtures))}}}}}\n"
    )
    assert {"proxy.analyzer.embedded", "proxy.ops.fixtures"} <= modules


@pytest.mark.parametrize("module", ["proxy", "proxy.errors", "proxy.mcp.jsonrpc", "proxy.mcp.tool_catalog"])
def test_the_package_and_its_pure_modules_load_no_config_models(module: str) -> None:
    """`proxy/__init__` exports the config API lazily: importing any part of the package does not load pydantic."""
    done = subprocess.run(
        [sys.executable, "-c", f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout))
    assert not _loaded(modules, "pydantic") and not _loaded(modules, "proxy.config")


def test_the_config_api_is_still_exported_by_the_package() -> None:
    import proxy
    from proxy.config.model import ConfigError, ProxyConfig, load_config, load_config_file

    assert (proxy.ConfigError, proxy.ProxyConfig, proxy.load_config, proxy.load_config_file) == (
        ConfigError, ProxyConfig, load_config, load_config_file,
    )  # fmt: skip
    with pytest.raises(AttributeError):
        proxy.nothing_of_that_name  # noqa: B018

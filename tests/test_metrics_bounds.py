"""Metric labels under invented names (issue 10, item 5): bounded cardinality, a small scrape, and
names the upstream listed always keep their own labels."""

from __future__ import annotations

import re

from proxy.ops.metrics import MAX_LABEL_VALUES, ProxyMetrics
from proxy.mcp.tool_catalog import ToolCatalog

NAMES = 10_000
LONG = 256
SCRAPE_BOUND = 512 * 1024
"""What a scrape may weigh after any number of invented names (11.5 MB here before the bound, growing
with every name): 200 tool, 200 method and 200 breaker labels of 256 characters with their series
(about 340 KB), and the latency histogram of the MCP methods only."""


def catalog_of(*names: str) -> ToolCatalog:
    catalog = ToolCatalog()
    catalog.learn({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": name} for name in names]}})
    return catalog


def name(n: int, prefix: str) -> str:
    return f"{prefix}{n:05d}".ljust(LONG, "x")


def labels(scrape: str, metric: str, label: str) -> set[str]:
    return set(re.findall(rf'^{metric}[^\n]*{label}="([^"]*)"', scrape, re.MULTILINE))


def test_ten_thousand_long_invented_names_keep_the_scrape_small() -> None:
    metrics = ProxyMetrics()
    for n in range(NAMES):
        metrics.observe("up", "tools/call", name(n, "tool-"), "ok", 0.01)
        metrics.observe("up", name(n, "method/"), None, "http_4xx", 0.01)
        metrics.policy_event("breaker_state", None, upstream="up", breaker=f"up/{name(n, 'tool-')}", old="closed", new="open")
    scrape = metrics.render()
    assert len(scrape) <= SCRAPE_BOUND
    text = scrape.decode()
    tools = labels(text, "mcp_proxy_requests_total", "tool") - {""}
    methods = labels(text, "mcp_proxy_requests_total", "method") - {"tools/call"}
    assert len(tools) == len(methods) == MAX_LABEL_VALUES + 1 and "_other" in tools and "_other" in methods
    assert labels(text, "mcp_proxy_request_duration_seconds_bucket", "method") == {"tools/call", "_other"}
    assert len(labels(text, "mcp_proxy_breaker_transitions_total", "breaker")) == MAX_LABEL_VALUES + 1


def test_listed_tools_keep_their_labels_whatever_came_first() -> None:
    metrics = ProxyMetrics()
    for n in range(NAMES):
        metrics.observe("up", "tools/call", name(n, "junk-"), "ok", 0.01)
    metrics.catalogs = {"up": catalog_of("search", "fetch")}
    metrics.observe("up", "tools/call", "search", "ok", 0.01)
    metrics.observe("up", "tools/call", "fetch", "jsonrpc_error", 0.01)
    metrics.observe("up", "resources/read", None, "ok", 0.01)  # an MCP method: its own label too
    metrics.policy_event("breaker_state", None, upstream="up", breaker="up/search", old="closed", new="open")
    text = metrics.render().decode()
    assert 'method="tools/call",outcome="ok",tool="search",upstream="up"} 1.0' in text
    assert 'method="tools/call",outcome="jsonrpc_error",tool="fetch",upstream="up"} 1.0' in text
    assert 'method="resources/read",outcome="ok",tool="",upstream="up"} 1.0' in text
    assert 'mcp_proxy_breaker_state{breaker="up/search",upstream="up"} 2.0' in text


def test_a_credential_in_an_invented_name_never_reaches_a_label() -> None:
    metrics = ProxyMetrics()
    metrics.observe("up", "x/token=SEC58abc", "get?api_key=SEC59abc", "ok", 0.001)
    scrape = metrics.render().decode()
    assert "SEC58abc" not in scrape and "SEC59abc" not in scrape
    assert "mcp_proxy_requests_total" in scrape

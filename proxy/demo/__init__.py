"""Demo parts: a built-in MCP server and a client workload to drive traffic through the proxy.

Neither is used by the proxy itself; they exist so ``python -m proxy`` can be shown working
end to end with nothing but this package and the official ``mcp`` SDK installed.
"""

from proxy.demo.server import DemoState, build_demo_app, build_demo_server, running_demo_server
from proxy.demo.workload import MODES, CallStats, WorkloadStats, run_workload

__all__ = [
    "MODES",
    "CallStats",
    "DemoState",
    "WorkloadStats",
    "build_demo_app",
    "build_demo_server",
    "run_workload",
    "running_demo_server",
]

"""``python -m proxy``: the same CLI as ``mcp-resilience-proxy``."""

import sys

from proxy.cli.main import main

sys.exit(main())

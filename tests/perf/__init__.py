"""Throughput and latency benchmark: direct upstream vs. the proxy vs. a naive aiohttp forwarder.

Run with ``python -m tests.perf`` (see ``--help``). Not collected by pytest: no ``test_*`` modules here.
"""

"""What every benchmark server does once bound: say where (the parent reads ``LISTENING <port>`` from
stdout, `Processes.wait_for_line`), then serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

__all__ = ["listening_until_signalled"]


async def listening_until_signalled(port: int) -> None:
    """Announce `port` on stdout, then return when the process is asked to stop."""
    sys.stdout.write(f"LISTENING {port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

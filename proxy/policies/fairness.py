"""One client cannot starve the rest: a cap on what each client has open to an upstream at once.

Every request a client sends to an upstream (a call, a relayed notification, a legacy GET stream)
holds one of that client's slots until its answer is complete. A client at `pool.max_per_client`
(default: a quarter of `pool.max_connections`) is refused at once with `ClientOverloaded` (429): its own
stuck calls or long-lived streams then cost only itself, and two such clients still leave half the pool
for everybody else. The refusal is the proxy's condition: it counts against nothing upstream.

Two exceptions, both because a refusal there would do the harm the cap exists to prevent: what answers or
ends the server's own work (`NO_CAP`: a client's answer to a sampling request, a cancellation, a DELETE)
is never refused, and a client known only by a loopback address (`identifies`) is never refused: that
address is shared by every client behind a local proxy, so it names no one client.

Counts live only while a client has something open (an entry is dropped at zero), so the map is
bounded by the requests in flight, not by how many client identities were ever seen.
"""

from __future__ import annotations

import sys
from typing import Final

from proxy.errors import ClientOverloaded
from proxy.identity import identifies as _identifies

__all__ = ["NO_CAP", "ClientSlots", "identifies"]

NO_CAP: Final = sys.maxsize
"""The cap of what is counted but never refused (a client's answer to the server, a cancellation, a DELETE)."""

def identifies(client: str) -> bool:
    """Whether `client` (`proxy.server.classify.client_of`) tells one client from another
    (`proxy.identity.identifies`). A loopback peer address does not: every client behind a local mesh
    proxy or ingress comes from it, so a cap per address would be one cap shared by all of them (64 idle
    SDK sessions of different users would lock out the next). Such clients are counted, never refused."""
    return _identifies(client)


class ClientSlots:
    """Open requests per client identity for one upstream."""

    __slots__ = ("_open", "upstream")

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._open: dict[str, int] = {}

    def open_for(self, client: str) -> int:
        return self._open.get(client, 0)

    @property
    def clients(self) -> int:
        """Clients with at least one request open."""
        return len(self._open)

    def acquire(self, client: str, cap: int) -> None:
        """Take one of `client`'s slots, or raise `ClientOverloaded` when it already has `cap` open.
        Every successful `acquire` must be paired with one `release`."""
        held = self._open.get(client, 0)
        if held >= cap and identifies(client):
            raise ClientOverloaded(
                f"this client already has {held} requests open to upstream {self.upstream} "
                f"(pool.max_per_client = {cap}); wait for one to finish",
                upstream=self.upstream,
            )
        self._open[client] = held + 1

    def release(self, client: str) -> None:
        left = self._open[client] - 1
        if left:
            self._open[client] = left
        else:
            del self._open[client]

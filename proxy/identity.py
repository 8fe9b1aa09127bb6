"""Whether a client identity names one client: the proxy's fairness and its analyzer both need to know.

A client is known by the configured identity header, a hash of its strongest credential, or else its
peer address (`proxy.server.classify.client_of`). A loopback address does not tell clients apart: behind a
local mesh proxy or ingress, and in the quick start, every client comes from it. So what is per client
(the per-client cap, the watched attempts per client, a proposal to limit one client) treats such an
identity as nobody in particular.
"""

from __future__ import annotations

from typing import Final

__all__ = ["identifies"]

_LOOPBACK: Final = ("addr:127.", "addr:::1", "addr:::ffff:127.", "addr:unknown")


def identifies(client: str) -> bool:
    """Whether `client` tells one client from another: a credential, the identity header or a remote
    address does; a loopback (or unknown) peer address does not."""
    return not client.startswith(_LOOPBACK)

"""Who a request counts against for per-client limits.

The default is the peer's host (not its port: one machine opening many
connections is still one client). Once requests carry an authenticated
identity, pass a function returning that identity instead.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

ClientKey = Callable[[grpc.aio.ServicerContext], str]


def peer_host(context: grpc.aio.ServicerContext) -> str:
    """'ipv4:10.0.0.1:5555' -> 'ipv4:10.0.0.1'; 'ipv6:[::1]:5555' -> 'ipv6:[::1]'."""
    peer = context.peer() or ""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit():
            return host
    return peer

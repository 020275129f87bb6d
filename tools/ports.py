"""Free loopback ports for the tests' and benchmarks' meshes.

Each port is found by binding port 0, but the sockets stay open until every port of the batch is
picked: closed one by one, the kernel may hand the same port out twice, and two listeners of one
mesh would then collide.
"""
from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

from services.runtime.config import load_topology

GATEWAY_LISTENERS = ("HTTP", "HTTPS", "ADMIN")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def mesh_addresses(services: Iterable[str] | None = None, gateway: bool = True) -> dict[str, str]:
    """DIBOAS_* overrides that put every listener of a mesh (each service's gRPC and metrics ports,
    and the gateway's) on its own free loopback port. `services` defaults to every service of the
    topology (mesh.yaml, or DIBOAS_TOPOLOGY): a service left out would listen on its usual port."""
    if services is None:
        services = load_topology().services
    keys = [f"DIBOAS_{name.upper().replace('-', '_')}_{kind}" for name in services for kind in ("ADDRESS", "METRICS")]
    if gateway:
        keys += [f"DIBOAS_GATEWAY_{listener}" for listener in GATEWAY_LISTENERS]
    return {key: f"127.0.0.1:{port}" for key, port in zip(keys, free_ports(len(keys)), strict=True)}

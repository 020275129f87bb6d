"""Free loopback ports for the tests' and benchmarks' meshes.

Each port is found by binding port 0, but the sockets stay open until every port of the batch is
picked: closed one by one, the kernel may hand the same port out twice, and two listeners of one
mesh would then collide.
"""
from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

from services.runtime.config import INSTANCE_PORT_STEP, load_topology

GATEWAY_LISTENERS = ("HTTP", "HTTPS", "ADMIN")


def _taken(stack: contextlib.ExitStack, port: int) -> bool:
    """Whether `port` cannot be bound now; when it can, it stays bound until the stack closes."""
    if port > 65535:
        return True
    sock = stack.enter_context(socket.socket())
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return True
    return False


def free_ports(count: int, instances: int = 1) -> list[int]:
    """`count` distinct ports that were free a moment ago. With `instances` > 1, so were the ports
    the further instances take (port + INSTANCE_PORT_STEP * k, services/runtime/config.py), and no
    two of all of them are the same."""
    for _ in range(50):
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            ports = [sock.getsockname()[1] for sock in sockets]
            further = [port + INSTANCE_PORT_STEP * k for port in ports for k in range(1, instances)]
            if len(set(ports + further)) == len(ports) + len(further) and not any(_taken(stack, p) for p in further):
                return ports
    raise RuntimeError(f"no {count} free loopback ports for {instances} instances each after 50 tries")


def mesh_addresses(services: Iterable[str] | None = None, gateway: bool = True, instances: int = 1) -> dict[str, str]:
    """DIBOAS_* overrides that put every listener of a mesh (each service's gRPC and metrics ports,
    and the gateway's) on its own free loopback port. `services` defaults to every service of the
    topology (mesh.yaml, or DIBOAS_TOPOLOGY): a service left out would listen on its usual port.
    `instances`: the most instances any service will run (each further one listens 100 ports up)."""
    if services is None:
        services = load_topology().services
    keys = [f"DIBOAS_{name.upper().replace('-', '_')}_{kind}" for name in services for kind in ("ADDRESS", "METRICS")]
    if gateway:
        keys += [f"DIBOAS_GATEWAY_{listener}" for listener in GATEWAY_LISTENERS]
    return {key: f"127.0.0.1:{port}" for key, port in zip(keys, free_ports(len(keys), instances), strict=True)}

"""The spec's ServiceHealthMonitor: ask every service for its gRPC health, and the gateway
(Envoy's admin interface: ready, and every upstream cluster healthy), concurrently."""
from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.config import Address, Topology
from services.runtime.tls import IdentityFiles, load_identity, mesh_channel


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    address: str
    status: str          # SERVING, NOT_SERVING, UNKNOWN, or UNREACHABLE
    latency_ms: float
    error: str = ""
    # Dependencies the service can do without for a while (the message broker) that are away now
    missing: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


async def check_service(topology: Topology, name: str, files: IdentityFiles, timeout: float,
                        instance: int = 0, address: Address | None = None) -> ServiceStatus:
    """One instance's health, at `address` when given (else where callers reach that instance)."""
    service = topology.services[name]
    address = address or service.instance_address(instance)
    started = time.perf_counter()
    missing: list[str] = []
    async with mesh_channel(str(address), files, name) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            status, error = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), ""
            for dependency in (["rabbitmq"] if topology.uses_broker(name) else []):
                state = await stub.Check(health_pb2.HealthCheckRequest(service=dependency), timeout=timeout)
                if state.status != health_pb2.HealthCheckResponse.SERVING:
                    missing.append(dependency)
        except grpc.aio.AioRpcError as exc:
            status, error = "UNREACHABLE", exc.details() or exc.code().name
    if missing:
        error = f"serving, but {', '.join(missing)} is away: its events and queued work wait in the database until it is back"
    label = name if instance == 0 else f"{name}#{instance}"
    return ServiceStatus(label, str(address), status, round((time.perf_counter() - started) * 1000, 1), error,
                         tuple(missing))


def _gateway_status(topology: Topology, timeout: float) -> tuple[str, str]:
    admin = f"http://{topology.gateway.admin}"
    try:
        with urllib.request.urlopen(f"{admin}/ready", timeout=timeout) as reply:
            if reply.status != 200:
                return "NOT_SERVING", f"Envoy is {reply.read().decode().strip()}"
        with urllib.request.urlopen(f"{admin}/clusters", timeout=timeout) as reply:
            flags = [line.split("::") for line in reply.read().decode().splitlines() if "::health_flags::" in line]
    except urllib.error.HTTPError as exc:
        return "NOT_SERVING", f"Envoy is {exc.read().decode().strip() or exc.reason}"
    except (OSError, ValueError) as exc:
        return "UNREACHABLE", str(getattr(exc, "reason", None) or exc)
    unhealthy = sorted({f[0] for f in flags if f[-1] != "healthy"})
    if unhealthy:
        return "NOT_SERVING", f"upstreams failing their health checks: {', '.join(unhealthy)}"
    return "SERVING", ""


async def check_gateway(topology: Topology, timeout: float) -> ServiceStatus:
    started = time.perf_counter()
    status, error = await asyncio.to_thread(_gateway_status, topology, timeout)
    return ServiceStatus("gateway", str(topology.gateway.http), status,
                         round((time.perf_counter() - started) * 1000, 1), error)


async def probe(topology: Topology, name: str, timeout: float) -> ServiceStatus:
    """This machine's instance of `name` (DIBOAS_INSTANCE), asked on loopback as the service itself:
    what a Kubernetes exec probe runs in the service's pod, with the pod's own certificate (the
    kubelet's gRPC probe cannot present one, and the server requires it)."""
    service = topology.services[name]
    listen = service.instance_listen(topology.instance)
    return await check_service(topology, name, load_identity(topology.certs_dir, name), timeout,
                               topology.instance, Address("127.0.0.1", listen.port))


async def health_report(topology: Topology, identity: str = "operator", timeout: float = 2.0,
                        gateway: bool = True) -> list[ServiceStatus]:
    """One status per service (and the gateway); one that does not answer is reported, not fatal."""
    files = load_identity(topology.certs_dir, identity)
    checks = [check_service(topology, n, files, timeout, k) for n, s in topology.services.items() for k in range(s.instances)]
    return list(await asyncio.gather(*checks, *([check_gateway(topology, timeout)] if gateway else [])))

"""The spec's ServiceHealthMonitor: ask every service for its gRPC health, concurrently."""
from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.config import Topology
from services.runtime.tls import channel_credentials, load_identity


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    address: str
    status: str          # SERVING, NOT_SERVING, UNKNOWN, or UNREACHABLE
    latency_ms: float
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


async def check_service(topology: Topology, name: str, creds: grpc.ChannelCredentials,
                        timeout: float) -> ServiceStatus:
    service = topology.services[name]
    started = time.perf_counter()
    async with grpc.aio.secure_channel(str(service.address), creds,
                                       options=[("grpc.ssl_target_name_override", name)]) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            status, error = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), ""
        except grpc.aio.AioRpcError as exc:
            status, error = "UNREACHABLE", exc.details() or exc.code().name
    return ServiceStatus(name, str(service.address), status, round((time.perf_counter() - started) * 1000, 1), error)


async def health_report(topology: Topology, identity: str = "operator", timeout: float = 2.0) -> list[ServiceStatus]:
    """One status per service; a service that does not answer is reported, not fatal."""
    creds = channel_credentials(load_identity(topology.certs_dir, identity))
    return list(await asyncio.gather(*(check_service(topology, n, creds, timeout) for n in topology.services)))

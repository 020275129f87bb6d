"""In every shape, each service serves its own gRPC API at its own address, as itself: the
monolith's one process answers on four addresses, each with that service's certificate, its
reflection (its own services only), its health and its own call policy; and a shape's process
stops cleanly on SIGTERM, its callers first."""
from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from diboas.events.v1 import events_pb2, events_pb2_grpc
from services.runtime.status import error_info

from conftest import bearer, client_channel, service_token
from meshkit import ORDER, mesh_processes

pytestmark = pytest.mark.slow
OWN = {"wallet": {"diboas.wallet.v1.WalletService", "diboas.events.v1.EventSinkService"},
       "transaction": {"diboas.transaction.v1.TransactionService", "diboas.events.v1.DeadLetterService"},
       "provider": {"diboas.provider.v1.ProviderService"},
       "blockchain": {"diboas.blockchain.v1.BlockchainService"},
       "compliance": {"diboas.compliance.v1.ComplianceService"}}
INFRASTRUCTURE = {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                  "grpc.reflection.v1alpha.ServerReflection"}


async def listed_services(channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    async for reply in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 timeout=5):
        return {s.name for s in reply.list_services_response.service}


async def test_the_monolith_serves_each_service_at_its_own_address_as_itself(pki, tmp_path):
    async with mesh_processes(pki, tmp_path, "monolith") as (topology, processes):
        assert list(processes) == ["monolith"]
        for name in ORDER:
            port = topology.services[name].address.port
            # The TLS handshake checks the server's certificate names `name`: each address is that service.
            async with client_channel(topology, "operator", port, name) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                assert await listed_services(channel) == OWN[name] | INFRASTRUCTURE
        # The wallet's policy over the network is unchanged: only the transaction service delivers events.
        wallet = topology.services["wallet"].address.port
        async with client_channel(topology, "operator", wallet, "wallet") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await events_pb2_grpc.EventSinkServiceStub(channel).DeliverEvent(
                    events_pb2.DeliverEventRequest(), metadata=bearer(service_token(topology, "operator", "wallet")),
                    timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(refused.value).reason == "CALLER_NOT_PERMITTED"
        # SIGTERM: every service NOT_SERVING, then drained, callers first; the process exits 0.
        process = processes["monolith"].process
        process.terminate()
        assert await asyncio.to_thread(process.wait, 30) == 0
        messages = [json.loads(line)["message"] for line in (tmp_path / "monolith.log").read_text().splitlines()
                    if line.startswith("{")]
        stopped = [m.split()[0] for m in messages if m.endswith(" stopped") and m.split()[0] in ORDER]
        assert sorted(stopped) == sorted(ORDER) and stopped[0] == "transaction" and stopped[-1] == "wallet", messages

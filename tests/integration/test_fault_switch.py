"""Faults are switched through one interface (services/simulation.py: FaultSwitch): the
simulators implement it; an adapter that does not (a real provider or chain) is refused with
FAILED_PRECONDITION naming it, over gRPC too, and its resource shows no faults."""
from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
from test_chain_catalog import LedgerChain
from test_provider_catalog import AcmePay

from diboas.blockchain.v1 import blockchain_pb2 as chain_pb
from diboas.blockchain.v1 import blockchain_pb2_grpc
from diboas.provider.v1 import provider_pb2, provider_pb2_grpc
from services.blockchain.app import build as blockchain_app
from services.blockchain.simulator import default_chains
from services.domain.errors import FailedPrecondition
from services.provider.app import build as provider_app
from services.provider.simulator import default_providers
from services.simulation import FaultSwitch, fault_switch, faults_of

from conftest import operator_calls


def test_the_simulators_are_fault_switches_and_real_adapters_are_not():
    for simulator in [*default_chains(), *default_providers()]:
        assert isinstance(simulator, FaultSwitch) and faults_of(simulator) is simulator.faults
        assert not faults_of(simulator).error_rate
        fault_switch(simulator, simulator.name).faults = replace(simulator.faults, error_rate=0.5)
        assert faults_of(simulator).error_rate == 0.5
    for real in (LedgerChain("ledger", "https://rpc.example"), AcmePay("acme", "https://api.acme.example", ["USD"])):
        assert faults_of(real) is None
        with pytest.raises(FailedPrecondition) as caught:
            fault_switch(real, f"things/{real.name}")
        assert caught.value.reason == "FAULTS_NOT_SUPPORTED"
        assert caught.value.message == (f"things/{real.name} does not support faults: they can be switched on "
                                        f"simulators only, and things/{real.name} is served by {type(real).__name__}")


CHAINS = """chains:
  ethereum: {adapter: "services.blockchain.simulator:SimulatedChain", native_currency: ETH,
             required_confirmations: 12, block_time_seconds: 2, fee: "0.00042"}
  ledger: {adapter: "test_chain_catalog:LedgerChain", rpc_url: "https://rpc.example"}
"""
PROVIDERS = """providers:
  alpha-pay: {adapter: "services.provider.simulator:SimulatedProvider", currencies: [USD], fees: {}}
  acme: {adapter: "test_provider_catalog:AcmePay", api_url: "https://api.acme.example", currencies: [USD]}
"""
SERVICES = {   # the service, its catalogue, and how to switch and read the faults of a resource there
    "blockchain": (blockchain_app, blockchain_pb2_grpc.BlockchainServiceStub, "DIBOAS_CHAINS_FILE", CHAINS,
                   lambda name, rid: ("SetChainFaults", chain_pb.SetChainFaultsRequest(
                       chain=name, faults=chain_pb.ChainFaults(error_rate_percent=50), request_id=rid)),
                   lambda name: ("GetChain", chain_pb.GetChainRequest(name=name)), "chains/ethereum", "chains/ledger"),
    "provider": (provider_app, provider_pb2_grpc.ProviderServiceStub, "DIBOAS_PROVIDERS_FILE", PROVIDERS,
                 lambda name, rid: ("SetProviderFaults", provider_pb2.SetProviderFaultsRequest(
                     provider=name, faults=provider_pb2.ProviderFaults(error_rate_percent=50), request_id=rid)),
                 lambda name: ("GetProvider", provider_pb2.GetProviderRequest(name=name)), "providers/alpha-pay",
                 "providers/acme"),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_a_real_adapter_refuses_faults_with_failed_precondition_beside_a_simulator(
        service, topology, start_server, tmp_path, monkeypatch):
    app, stub, env_key, text, set_faults, get, simulated, real = SERVICES[service]
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(text)
    monkeypatch.setenv(env_key, str(catalogue))
    server = await start_server(topology, service, app)
    call, channel = operator_calls(topology, server.port, service, stub)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(*set_faults(real, "f1"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
        assert caught.value.details().startswith(f"{real} does not support faults")
        [shown] = [field for _, field in (await call(*get(real))).ListFields()]
        assert not shown.HasField("faults")
        [switched] = [field for _, field in (await call(*set_faults(simulated, "f2"))).ListFields()]
        assert switched.faults.error_rate_percent == 50
    finally:
        await channel.close()

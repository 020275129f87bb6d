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
from services.provider.app import build as provider_app
from services.provider.simulator import default_providers
from services.runtime.errors import FailedPrecondition
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


async def test_a_real_chain_refuses_faults_with_failed_precondition(topology, start_server, tmp_path, monkeypatch):
    catalogue = tmp_path / "chains.yaml"
    catalogue.write_text("chains:\n  ethereum:\n    adapter: services.blockchain.simulator:SimulatedChain\n"
                         "    native_currency: ETH\n    required_confirmations: 12\n    block_time_seconds: 2\n"
                         "    fee: '0.00042'\n"
                         "  ledger:\n    adapter: test_chain_catalog:LedgerChain\n    rpc_url: https://rpc.example\n")
    monkeypatch.setenv("DIBOAS_CHAINS_FILE", str(catalogue))
    server = await start_server(topology, "blockchain", blockchain_app)
    call, channel = operator_calls(topology, server.port, "blockchain", blockchain_pb2_grpc.BlockchainServiceStub)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call("SetChainFaults", chain_pb.SetChainFaultsRequest(
                chain="chains/ledger", faults=chain_pb.ChainFaults(error_rate_percent=50), request_id="f1"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
        assert caught.value.details().startswith("chains/ledger does not support faults")
        ledger = (await call("GetChain", chain_pb.GetChainRequest(name="chains/ledger"))).chain
        assert (ledger.latest_block_number, ledger.HasField("faults")) == (7, False)
        switched = await call("SetChainFaults", chain_pb.SetChainFaultsRequest(
            chain="chains/ethereum", faults=chain_pb.ChainFaults(error_rate_percent=50), request_id="f2"))
        assert switched.chain.faults.error_rate_percent == 50
    finally:
        await channel.close()


async def test_a_real_provider_refuses_faults_with_failed_precondition(topology, start_server, tmp_path, monkeypatch):
    catalogue = tmp_path / "providers.yaml"
    catalogue.write_text("providers:\n  acme:\n    adapter: test_provider_catalog:AcmePay\n"
                         "    api_url: https://api.acme.example\n    currencies: [USD]\n")
    monkeypatch.setenv("DIBOAS_PROVIDERS_FILE", str(catalogue))
    server = await start_server(topology, "provider", provider_app)
    call, channel = operator_calls(topology, server.port, "provider", provider_pb2_grpc.ProviderServiceStub)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call("SetProviderFaults", provider_pb2.SetProviderFaultsRequest(
                provider="providers/acme", faults=provider_pb2.ProviderFaults(error_rate_percent=50), request_id="f1"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
        assert caught.value.details().startswith("providers/acme does not support faults")
        acme = (await call("GetProvider", provider_pb2.GetProviderRequest(name="providers/acme"))).provider
        assert not acme.HasField("faults")
    finally:
        await channel.close()

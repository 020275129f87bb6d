"""services.meshclient against a real wallet server (the runtime's guard, mTLS, tokens, policy) in
this process, as a new client identity `reporting`: the deadline a call arrives with, retries,
the breaker, and refusals seen as themselves."""
from __future__ import annotations

import dataclasses
import shutil

import pytest

from certs.mkcerts import ensure_certificates
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.meshclient import MeshClient, PermissionDenied, ServiceUnavailable
from services.runtime.config import Address, BreakerPolicy, RetryPolicy, spiffe_id

from conftest import with_service
from fakes import EchoWallets, wallet_build


def with_reporting(topology, tmp_path):
    """The topology with a client `reporting` allowed to call the wallet's GetWallet, and its certificate
    (in a copy of the test PKI)."""
    certs = tmp_path / "certs"
    shutil.copytree(topology.certs_dir, certs)
    topology = dataclasses.replace(topology, certs_dir=certs, clients={
        **topology.clients, "reporting": spiffe_id(topology.trust_domain, "client", "reporting")})
    wallet = topology.services["wallet"]
    topology = with_service(topology, "wallet", policy={**wallet.policy, "GetWallet": wallet.policy["GetWallet"] | {"reporting"}})
    ensure_certificates(certs, topology.identities())
    return topology


async def started(topology, start_server, wallets: EchoWallets, server_topology=None):
    server = await start_server(server_topology or topology, "wallet", wallet_build(wallets))
    return with_service(topology, "wallet", address=Address("127.0.0.1", server.port))


def get(name: str = "wallets/w1") -> wallet_pb2.GetWalletRequest:
    return wallet_pb2.GetWalletRequest(name=name)


async def test_a_call_arrives_with_the_deadline_of_its_block_or_its_own(topology, start_server, tmp_path):
    wallets = EchoWallets()
    topology = await started(with_reporting(topology, tmp_path), start_server, wallets)
    async with MeshClient(topology, "reporting", tracing=False) as mesh:
        stub = mesh.stub("wallet", wallet_pb2_grpc.WalletServiceStub)
        await stub.GetWallet(get())             # the channel's handshake, out of the measured calls
        with mesh.deadline(0.8):
            await stub.GetWallet(get())
        with mesh.deadline(3.0):
            with mesh.deadline(0.6):            # an inner block cannot outlast the outer one, nor the reverse
                await stub.GetWallet(get())
        with mesh.deadline(0.6):
            with mesh.deadline(3.0):
                await stub.GetWallet(get())
        await stub.GetWallet(get(), timeout=0.3)
        await stub.GetWallet(get())              # neither: the topology's default (5 s)
    _, block, inner, outer, own, default = wallets.seen_deadlines
    # Each arrives with what was left of it: a busy machine takes a little off, never adds.
    assert 0.3 < block <= 0.8
    assert 0.2 < inner <= 0.6 and 0.2 < outer <= 0.6
    assert 0.1 < own < 0.32
    assert 4.0 < default < topology.defaults.deadline_seconds + 0.1     # grpc-timeout is rounded up on the wire


async def test_unavailable_is_retried_then_the_breaker_opens(topology, start_server, tmp_path):
    topology = dataclasses.replace(topology, defaults=dataclasses.replace(
        topology.defaults, breaker=BreakerPolicy(fail_max=2, reset_timeout_seconds=30),
        retry=RetryPolicy(max_attempts=3, initial_backoff_seconds=0.01)))
    wallets = EchoWallets()
    topology = await started(with_reporting(topology, tmp_path), start_server, wallets)
    async with MeshClient(topology, "reporting", tracing=False) as mesh:
        stub = mesh.stub("wallet", wallet_pb2_grpc.WalletServiceStub)
        wallets.fail_next_unavailable = 2
        assert (await stub.GetWallet(get())).wallet.name == "wallets/w1"
        assert wallets.calls == 3                                        # two retries by gRPC's policy
        wallets.fail_next_unavailable = 1000
        for _ in range(2):
            with pytest.raises(ServiceUnavailable):
                await stub.GetWallet(get())
        calls = wallets.calls
        with pytest.raises(ServiceUnavailable) as refused:
            await stub.GetWallet(get())
        assert refused.value.reason == "CIRCUIT_OPEN" and wallets.calls == calls      # not sent
        assert mesh.breaker_state("wallet") == "open"


async def test_refusals_reach_the_client_as_themselves(topology, start_server, tmp_path):
    mine = with_reporting(topology, tmp_path)
    wallets = EchoWallets()
    # A method the policy does not give it.
    async with MeshClient(await started(mine, start_server, wallets), "reporting", tracing=False) as mesh:
        with pytest.raises(PermissionDenied) as refused:
            await mesh.stub("wallet", wallet_pb2_grpc.WalletServiceStub).ListWallets(wallet_pb2.ListWalletsRequest())
        assert refused.value.reason == "CALLER_NOT_PERMITTED"
        assert refused.value.message == "wallet: reporting may not call wallet.ListWallets"
    # A wallet started with a topology that does not know it yet (its certificate is good).
    stale = dataclasses.replace(topology, certs_dir=mine.certs_dir)
    async with MeshClient(await started(mine, start_server, wallets, stale), "reporting", tracing=False) as mesh:
        with pytest.raises(PermissionDenied) as refused:
            await mesh.stub("wallet", wallet_pb2_grpc.WalletServiceStub).GetWallet(get())
        assert refused.value.reason == "UNKNOWN_IDENTITY"
        assert "spiffe://diboas.local/client/reporting is not an identity of this mesh" in refused.value.message

"""An upstream in the same process (services/runtime/local.py), called through the stub the
network client would give: the upstream's policy, the caller's identity without a user, the
deadline, and the same domain errors a caller sees of an upstream over the network."""
from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.domain import errors
from services.runtime.config import load_topology
from services.runtime.context import CURRENT_CALL, CallInfo, current_caller, current_user
from services.runtime.local import LocalUpstream
from services.runtime.status import upstream_error
from services.runtime.users import User
from services.transaction.wallet_client import WalletClient

WALLET_SERVICE = "diboas.wallet.v1.WalletService"


class FakeWalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    """Records who called, as the real servicer would see it; answers or fails as told."""

    def __init__(self):
        self.seen: list[tuple[str | None, object]] = []
        self.failure: BaseException | None = None
        self.delay = 0.0

    async def GetWallet(self, request, context):
        self.seen.append((current_caller(), current_user()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failure is not None:
            raise self.failure
        return wallet_pb2.GetWalletResponse(wallet=wallet_pb2.Wallet(name=request.name))

    async def BatchGetWallets(self, request, context):
        self.seen.append((current_caller(), current_user()))
        return wallet_pb2.BatchGetWalletsResponse(wallets=[
            wallet_pb2.Wallet(name=name, owner_id="bob", currency_code="USD") for name in request.names])


@pytest.fixture
def topology():
    return load_topology(env={})


def upstream(topology, servicer, caller="transaction", **policy):
    wallet = topology.services["wallet"]
    if policy:
        wallet = dataclasses.replace(wallet, policy={**wallet.policy, **{m: frozenset(c) for m, c in policy.items()}})
    return LocalUpstream(topology, caller, wallet, {WALLET_SERVICE: servicer}, tracing=False)


async def test_the_call_reaches_the_servicer_as_the_caller_without_the_user_it_serves(topology):
    servicer = FakeWalletServicer()
    stub = upstream(topology, servicer).stub(wallet_pb2_grpc.WalletServiceStub)
    alice = User("alice", frozenset({"user"}))
    token = CURRENT_CALL.set(CallInfo("gateway", 1e12, alice))     # serving alice's request
    try:
        reply = await stub.GetWallet(wallet_pb2.GetWalletRequest(name="wallets/w1"))
        assert current_user() == alice                               # ours again afterwards
    finally:
        CURRENT_CALL.reset(token)
    assert reply.wallet.name == "wallets/w1"
    assert servicer.seen == [("transaction", None)]


async def test_a_caller_the_policy_does_not_allow_is_refused_as_over_the_network(topology):
    servicer = FakeWalletServicer()
    stub = upstream(topology, servicer, GetWallet=["gateway"]).stub(wallet_pb2_grpc.WalletServiceStub)
    with pytest.raises(errors.Internal) as caught:
        await stub.GetWallet(wallet_pb2.GetWalletRequest(name="wallets/w1"))
    assert caught.value.reason == "UPSTREAM_REFUSED"
    assert servicer.seen == []


@pytest.mark.parametrize("failure", [
    errors.NotFound("wallet wallets/w1 does not exist", reason="WALLET_NOT_FOUND", metadata={"wallet": "w1"}),
    errors.FailedPrecondition("not enough money", reason="INSUFFICIENT_FUNDS"),
    errors.InvalidArgument.field("name", "is required"),
    errors.ServiceUnavailable("the database is unreachable", reason="DATABASE_UNAVAILABLE"),
    errors.Internal("broken", reason="SOMETHING"),
])
async def test_a_domain_error_arrives_as_it_would_over_the_network(topology, failure):
    servicer = FakeWalletServicer()
    servicer.failure = failure
    stub = upstream(topology, servicer).stub(wallet_pb2_grpc.WalletServiceStub)
    from services.runtime.status import code_of
    expected = upstream_error(code_of(failure), failure.message, failure.reason, "wallet")
    with pytest.raises(errors.DomainError) as caught:
        await stub.GetWallet(wallet_pb2.GetWalletRequest(name="wallets/w1"))
    got = caught.value
    assert (type(got), got.message, got.reason, got.metadata) == (type(expected), expected.message, expected.reason, {})
    assert got.upstream_code == code_of(failure)


async def test_an_unexpected_failure_is_upstream_internal_and_logged(topology, caplog):
    servicer = FakeWalletServicer()
    servicer.failure = RuntimeError("a bug")
    stub = upstream(topology, servicer).stub(wallet_pb2_grpc.WalletServiceStub)
    with pytest.raises(errors.ServiceUnavailable) as caught:
        await stub.GetWallet(wallet_pb2.GetWalletRequest(name="wallets/w1"))
    assert caught.value.reason == "UPSTREAM_INTERNAL" and "a bug" not in caught.value.message
    assert any("unhandled error in wallet.GetWallet" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_the_deadline_is_enforced(topology):
    servicer = FakeWalletServicer()
    servicer.delay = 5
    stub = upstream(topology, servicer).stub(wallet_pb2_grpc.WalletServiceStub)
    started = asyncio.get_running_loop().time()
    with pytest.raises(errors.DeadlineExceeded) as caught:
        await stub.GetWallet(wallet_pb2.GetWalletRequest(name="wallets/w1"), timeout=0.05)
    assert asyncio.get_running_loop().time() - started < 1
    assert caught.value.upstream_code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_grpc_service_the_upstream_does_not_serve_here_is_a_clear_error(topology):
    from diboas.events.v1 import events_pb2_grpc
    with pytest.raises(LookupError, match="wallet serves no diboas.events.v1.EventSinkService"):
        upstream(topology, FakeWalletServicer()).stub(events_pb2_grpc.EventSinkServiceStub)


async def test_what_the_upstream_logs_on_a_direct_call_names_it_and_the_process(topology):
    import json
    import logging

    from services.runtime.logs import JsonFormatter
    lines = []

    class Logging(FakeWalletServicer):
        async def GetWallet(self, request, context):
            lines.append(JsonFormatter("monolith").format(logging.LogRecord("diboas", logging.INFO, "", 0, "hi", (), None)))
            return await super().GetWallet(request, context)

    stub = upstream(topology, Logging()).stub(wallet_pb2_grpc.WalletServiceStub)
    await stub.GetWallet(wallet_pb2.GetWalletRequest(name="wallets/w1"))
    after = json.loads(JsonFormatter("monolith").format(logging.LogRecord("diboas", logging.INFO, "", 0, "x", (), None)))
    entry = json.loads(lines[0])
    assert (entry["service"], entry["process"]) == ("wallet", "monolith")
    assert after["service"] == "monolith" and "process" not in after      # the caller's context again


async def test_the_transaction_services_batched_wallet_read_is_allowed_by_the_shipped_policy(topology):
    servicer = FakeWalletServicer()
    client = WalletClient(upstream(topology, servicer))
    facts = await client.describe_all(["wallets/a", "wallets/b"])
    assert [(f.owner, f.currency) for f in facts] == [("bob", "USD")] * 2 and servicer.seen == [("transaction", None)]
    refused = WalletClient(upstream(topology, servicer, caller="gateway"))
    with pytest.raises(errors.Internal):                  # the gateway may not: a fault inside the mesh
        await refused.describe_all(["wallets/a"])

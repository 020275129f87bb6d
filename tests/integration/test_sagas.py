"""DEPOSIT, WITHDRAW and BRIDGE as sagas over the real services (in-process, real mTLS): the
provider and chain simulators with faults switched on, and what the wallets, the providers'
own books and the chains end up with."""
from __future__ import annotations

from decimal import Decimal

import grpc
import pytest

from diboas.provider.v1 import provider_pb2
from diboas.transaction.v1 import transaction_pb2
from services.runtime.status import error_info

from meshkit import start_mesh, usd

COMPLETED = transaction_pb2.TRANSACTION_STATE_COMPLETED
FAILED = transaction_pb2.TRANSACTION_STATE_FAILED
PROVIDERS = ("alpha-pay", "beta-ramp", "gamma-exchange")


@pytest.fixture
async def mesh(topology, start_server):
    mesh = await start_mesh(topology, start_server)
    yield mesh
    await mesh.close()


async def fault(mesh, provider: str, key: str, check: bool = False, **faults) -> None:
    await mesh.provider("SetProviderFaults", provider_pb2.SetProviderFaultsRequest(
        provider=f"providers/{provider}", faults=provider_pb2.ProviderFaults(**faults), request_id=key))
    if check:        # the background check would notice within its interval; ask now
        await mesh.provider("GetProviderHealth", provider_pb2.GetProviderHealthRequest(provider=f"providers/{provider}"))


def charges(mesh) -> list[tuple[str, str, str]]:
    return [(p, c["direction"], c["amount"]) for p in PROVIDERS for c in mesh.provider_books(p)]


async def test_a_deposit_is_paid_in_once_and_credited_once(mesh):
    alice = await mesh.wallet("alice", "0")
    created = await mesh.create("DEPOSIT", "100.00", "d1", destination_wallet=alice)
    assert (await mesh.create("DEPOSIT", "100.00", "d1", destination_wallet=alice)).name == created.name
    tx = await mesh.settled(created.name)
    assert tx.state == COMPLETED and tx.provider_payment.startswith("payments/") and tx.provider
    payment = (await mesh.provider("GetPayment", provider_pb2.GetPaymentRequest(name=tx.provider_payment))).payment
    assert payment.state == provider_pb2.PAYMENT_STATE_SUCCEEDED and payment.transaction == tx.name
    assert charges(mesh) == [(tx.provider.removeprefix("providers/"), "PAY_IN", "100.00")]
    await mesh.wait_until(lambda: mesh.balances(alice), (Decimal("100.00"), 0))
    assert await mesh.balances(alice) == (Decimal("100.00"), 0)


async def test_a_deposit_with_no_healthy_provider_fails_clearly_and_moves_nothing(mesh):
    alice = await mesh.wallet("alice", "0")
    for p in PROVIDERS:
        await fault(mesh, p, f"f-{p}", check=True, error_rate_percent=100)
    tx = await mesh.settled((await mesh.create("DEPOSIT", "100.00", "d2", destination_wallet=alice)).name)
    assert tx.state == FAILED and "no healthy provider" in tx.failure_reason
    assert charges(mesh) == [] and await mesh.balances(alice) == (0, 0)


async def test_a_withdrawal_fails_over_to_the_backup_and_pays_out_once(mesh):
    alice = await mesh.wallet("alice", "500.00")
    cheapest = (await mesh.provider("SelectProvider", provider_pb2.SelectProviderRequest(
        direction=provider_pb2.PAYMENT_DIRECTION_PAY_OUT, amount=usd("200.00"),
        request_id="s"))).provider
    await fault(mesh, cheapest.removeprefix("providers/"), "f1", error_rate_percent=100)   # fails mid-payment
    tx = await mesh.settled((await mesh.create("WITHDRAW", "200.00", "w1", source_wallet=alice,
                                               provider=cheapest)).name)
    assert tx.state == COMPLETED and tx.provider != cheapest
    payment = (await mesh.provider("GetPayment", provider_pb2.GetPaymentRequest(name=tx.provider_payment))).payment
    assert [a.provider for a in payment.attempts] == [cheapest, tx.provider]
    assert charges(mesh) == [(tx.provider.removeprefix("providers/"), "PAY_OUT", "200.00")]
    await mesh.wait_until_settled([alice])
    assert await mesh.balances(alice) == (Decimal("300.00"), 0)


async def test_a_withdrawal_no_provider_can_pay_out_releases_the_hold(mesh):
    alice = await mesh.wallet("alice", "500.00")
    for p in PROVIDERS:
        await fault(mesh, p, f"f-{p}", error_rate_percent=100)
    tx = await mesh.settled((await mesh.create("WITHDRAW", "200.00", "w2", source_wallet=alice)).name)
    assert tx.state == FAILED and tx.hold and "no healthy provider" in tx.failure_reason
    await mesh.wait_until_settled([alice])
    assert charges(mesh) == [] and await mesh.balances(alice) == (Decimal("500.00"), 0)


@pytest.mark.parametrize("kind,fields,field", [
    ("DEPOSIT", {}, "transaction.destination_wallet"),
    ("DEPOSIT", {"destination_wallet": "wallets/x", "source_wallet": "wallets/y"}, "transaction.source_wallet"),
    ("WITHDRAW", {"source_wallet": "wallets/x", "provider": "acme"}, "transaction.provider"),
    ("BRIDGE", {"source_wallet": "wallets/x", "source_chain": "chains/ethereum"}, "transaction.target_chain"),
    ("BRIDGE", {"source_wallet": "wallets/x", "source_chain": "chains/ethereum", "target_chain": "chains/ethereum",
                "destination_address": "0xabc"}, "transaction.target_chain"),
    ("SEND", {"source_wallet": "wallets/x", "destination_wallet": "wallets/y", "provider": "providers/alpha-pay"},
     "transaction.provider"),
])
async def test_bad_sagas_are_refused_naming_the_field_and_write_nothing(mesh, kind, fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.create(kind, "10.00", f"bad-{kind}-{field}", **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and caught.value.details().startswith(field)
    listed = await mesh.transactions.ListTransactions(transaction_pb2.ListTransactionsRequest(),
                                                      metadata=mesh.as_gateway, timeout=10)
    assert list(listed.transactions) == []


@pytest.mark.parametrize("one_process", [False, True], ids=["apart", "one process"])
async def test_a_provider_or_chain_that_does_not_exist_is_not_found_and_nothing_is_written(topology, start_server,
                                                                                          one_process):
    mesh = await start_mesh(topology, start_server, one_process=one_process)
    try:
        await _refused_for_what_does_not_exist(mesh)
    finally:
        await mesh.close()


async def _refused_for_what_does_not_exist(mesh) -> None:
    alice = await mesh.wallet("alice", "500.00")
    address = "0x" + "ab" * 20
    refused = [
        ("DEPOSIT", {"destination_wallet": alice, "provider": "providers/nobody"}, "PROVIDER_NOT_FOUND"),
        ("WITHDRAW", {"source_wallet": alice, "provider": "providers/nobody"}, "PROVIDER_NOT_FOUND"),
        ("BRIDGE", {"source_wallet": alice, "source_chain": "chains/ethereum", "target_chain": "chains/nowhere",
                    "destination_address": address}, "CHAIN_NOT_FOUND"),
    ]
    for n, (kind, fields, reason) in enumerate(refused):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mesh.create(kind, "10.00", f"unknown-{n}", **fields)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and error_info(caught.value).reason == reason
        assert "does not exist (known: " in caught.value.details()
    # One it knows, for a payment it does not take (alpha-pay's minimum is 10 USD; providers.yaml).
    for kind, fields in (("DEPOSIT", {"destination_wallet": alice}), ("WITHDRAW", {"source_wallet": alice})):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mesh.create(kind, "9.99", f"below-{kind}", provider="providers/alpha-pay", **fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(caught.value).reason == "PROVIDER_CANNOT_PAY"
        assert caught.value.details() == ("transaction.amount.amount: providers/alpha-pay takes at least 10 USD, "
                                          "not 9.99 USD")
    listed = await mesh.transactions.ListTransactions(transaction_pb2.ListTransactionsRequest(),
                                                      metadata=mesh.as_gateway, timeout=10)
    assert list(listed.transactions) == [] and charges(mesh) == []
    assert await mesh.balances(alice) == (Decimal("500.00"), 0)
    # One it knows: accepted and paid.
    tx = await mesh.settled((await mesh.create("DEPOSIT", "10.00", "known", destination_wallet=alice,
                                               provider="providers/beta-ramp")).name)
    assert tx.state == COMPLETED and tx.provider == "providers/beta-ramp"

"""The wallet service as a real mTLS server (its real composition root, SQLite and PostgreSQL):
contract-level behaviour, codes and field violations for bad input, idempotent replays."""
from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from diboas.common.v1 import common_pb2
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.runtime.status import error_info
from services.wallet.app import build as wallet_app

from conftest import bearer, client_channel, service_token, with_service


@pytest.fixture
async def stub(topology, start_server, database_url):
    topology = with_service(topology, "wallet", database=database_url)
    server = await start_server(topology, "wallet", wallet_app)
    # The transaction service (moves money) and the operator (creates wallets, reads ledgers),
    # each over its own connection with its own token.
    callers = {}
    for identity in ("transaction", "operator"):
        channel = client_channel(topology, identity, server.port, "wallet")
        callers[identity] = (channel, wallet_pb2_grpc.WalletServiceStub(channel),
                             bearer(service_token(topology, identity, "wallet")))

    class Calls:
        async def __call__(self, method: str, request, as_operator: bool = False):
            _, wallets, metadata = callers["operator" if as_operator else "transaction"]
            return await getattr(wallets, method)(request, metadata=metadata, timeout=10)
    yield Calls()
    for channel, _, _ in callers.values():
        await channel.close()


def usd(amount: str) -> common_pb2.Money:
    return common_pb2.Money(currency_code="USD", amount=amount)


async def create(stub, owner: str, currency: str = "USD") -> str:
    reply = await stub("CreateWallet", wallet_pb2.CreateWalletRequest(
        wallet=wallet_pb2.Wallet(owner_id=owner, currency_code=currency), request_id=f"create-{owner}"),
        as_operator=True)
    return reply.wallet.name


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    fields = []
    for detail in rpc_status.from_call(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


async def test_a_transfer_through_holds(stub):
    alice, bob = await create(stub, "alice"), await create(stub, "bob")
    credited = await stub("CreditWallet", wallet_pb2.CreditWalletRequest(
        wallet=alice, amount=usd("100"), reference="deposit-1", request_id="credit-1"))
    assert credited.wallet.available_balance.amount == "100.00"
    assert credited.ledger_entry.type == wallet_pb2.LEDGER_ENTRY_TYPE_CREDIT
    check = await stub("ValidateBalance", wallet_pb2.ValidateBalanceRequest(wallet=alice, amount=usd("150")),
                       as_operator=True)
    assert (check.sufficient, check.shortfall.amount) == (False, "50.00")
    held = await stub("CreateHold", wallet_pb2.CreateHoldRequest(
        parent=alice, hold=wallet_pb2.Hold(amount=usd("40.50"), reference="tx-1"), request_id="hold-1"))
    assert held.wallet.held_balance.amount == "40.50" and held.hold.state == wallet_pb2.HOLD_STATE_ACTIVE
    captured = await stub("CaptureHold", wallet_pb2.CaptureHoldRequest(
        name=held.hold.name, destination_wallet=bob, request_id="capture-1"))
    assert captured.hold.state == wallet_pb2.HOLD_STATE_CAPTURED and captured.hold.destination_wallet == bob
    a, b = (await stub("BatchGetWallets", wallet_pb2.BatchGetWalletsRequest(names=[alice, bob]))).wallets
    assert (a.available_balance.amount, a.held_balance.amount, b.available_balance.amount) == ("59.50", "0.00", "40.50")
    entries = (await stub("ListLedgerEntries", wallet_pb2.ListLedgerEntriesRequest(parent=alice),
                          as_operator=True)).ledger_entries
    assert [wallet_pb2.LedgerEntryType.Name(e.type) for e in entries] == [
        "LEDGER_ENTRY_TYPE_HOLD_CAPTURE", "LEDGER_ENTRY_TYPE_HOLD", "LEDGER_ENTRY_TYPE_CREDIT"]


async def test_batch_get_wallets_refuses_a_missing_wallet_or_a_bad_name_by_its_place(stub):
    alice = await create(stub, "alice")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub("BatchGetWallets", wallet_pb2.BatchGetWalletsRequest(names=[alice, "wallets/nope"]))
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.NOT_FOUND,
                                                             "wallet wallets/nope does not exist")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub("BatchGetWallets", wallet_pb2.BatchGetWalletsRequest(names=[alice, "wallets/a b"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(caught.value) == ["names[1]"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub("BatchGetWallets", wallet_pb2.BatchGetWalletsRequest(names=[alice, "wallets/a\x00b"]))
    assert violations(caught.value) == ["names[1]"] and "control character U+0000" in caught.value.details()


async def test_a_repeated_request_returns_the_first_response(stub):
    alice = await create(stub, "alice")
    request = wallet_pb2.CreditWalletRequest(wallet=alice, amount=usd("5"), request_id="same")
    first = await stub("CreditWallet", request)
    second = await stub("CreditWallet", request)
    assert first == second
    assert (await stub("GetWallet", wallet_pb2.GetWalletRequest(name=alice))).wallet.available_balance.amount == "5.00"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub("CreditWallet", wallet_pb2.CreditWalletRequest(wallet=alice, amount=usd("6"), request_id="same"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(caught.value).reason == "REQUEST_ID_REUSED"


@pytest.mark.parametrize("request_,code,field", [
    (wallet_pb2.CreditWalletRequest(wallet="wallets/x", amount=usd("1.001"), request_id="r"),
     grpc.StatusCode.INVALID_ARGUMENT, "amount.amount"),
    (wallet_pb2.CreditWalletRequest(wallet="wallets/x", amount=usd("-1"), request_id="r"),
     grpc.StatusCode.INVALID_ARGUMENT, "amount.amount"),
    (wallet_pb2.CreditWalletRequest(wallet="wallets/x", amount=usd("0"), request_id="r"),
     grpc.StatusCode.INVALID_ARGUMENT, "amount.amount"),
    (wallet_pb2.CreditWalletRequest(wallet="wallets/x", amount=common_pb2.Money(currency_code="XXX", amount="1"),
                                    request_id="r"), grpc.StatusCode.INVALID_ARGUMENT, "amount.currency_code"),
    (wallet_pb2.CreditWalletRequest(wallet="wallets/x", request_id="r"), grpc.StatusCode.INVALID_ARGUMENT, "amount"),
    (wallet_pb2.CreditWalletRequest(wallet="bad name", amount=usd("1"), request_id="r"),
     grpc.StatusCode.INVALID_ARGUMENT, "wallet"),
    (wallet_pb2.CreditWalletRequest(wallet="wallets/x", amount=usd("1")), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    (wallet_pb2.CreditWalletRequest(wallet="wallets/x", amount=common_pb2.Money(currency_code="EUR", amount="1"),
                                    request_id="r"), grpc.StatusCode.INVALID_ARGUMENT, "amount.currency_code"),
    (wallet_pb2.CreditWalletRequest(wallet="wallets/nope", amount=usd("1"), request_id="r"),
     grpc.StatusCode.NOT_FOUND, None),
])
async def test_bad_input_is_refused_by_field_and_changes_nothing(stub, request_, code, field):
    wallet = await create(stub, "alice")
    request_ = type(request_).FromString(request_.SerializeToString())   # parameters are shared: copy
    if request_.wallet == "wallets/x":
        request_.wallet = wallet
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub("CreditWallet", request_)
    assert caught.value.code() == code, caught.value.details()
    if field:
        assert violations(caught.value) == [field], caught.value.details()
    after = (await stub("GetWallet", wallet_pb2.GetWalletRequest(name=wallet))).wallet
    assert after.available_balance.amount == "0.00"
    entries = await stub("ListLedgerEntries", wallet_pb2.ListLedgerEntriesRequest(parent=wallet), as_operator=True)
    assert list(entries.ledger_entries) == []


async def test_insufficient_funds_is_failed_precondition(stub):
    alice = await create(stub, "alice")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub("DebitWallet", wallet_pb2.DebitWalletRequest(wallet=alice, amount=usd("1"), request_id="d"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "INSUFFICIENT_FUNDS"
    assert "insufficient funds" in caught.value.details()

"""A user, through the gateway's identity, sees and moves only their own wallets: someone
else's wallet or transaction is NOT_FOUND (as if it did not exist, so ids cannot be probed),
before anything about it is said. The operator role sees everything."""
from __future__ import annotations

import grpc
import pytest

from diboas.transaction.v1 import transaction_pb2
from diboas.wallet.v1 import wallet_pb2

from meshkit import start_mesh, usd


@pytest.fixture
async def mesh(topology, start_server):
    mesh = await start_mesh(topology, start_server, ("wallet", "transaction", "compliance"))
    yield mesh
    await mesh.close()


async def create_wallet(mesh, user: str) -> str:
    return (await mesh.user_wallets.CreateWallet(wallet_pb2.CreateWalletRequest(
        wallet=wallet_pb2.Wallet(currency_code="USD"), request_id=f"w-{user}"), metadata=mesh.as_user(user),
        timeout=10)).wallet.name


async def expect(code, call):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def test_a_user_sees_only_their_own_wallets(mesh):
    alice, bob = await create_wallet(mesh, "alice"), await create_wallet(mesh, "bob")
    wallets = mesh.user_wallets
    mine = await wallets.GetWallet(wallet_pb2.GetWalletRequest(name=alice), metadata=mesh.as_user("alice"), timeout=10)
    assert mine.wallet.owner_id == "alice"                      # owner_id defaults to the user
    theirs = await expect(grpc.StatusCode.NOT_FOUND, wallets.GetWallet(
        wallet_pb2.GetWalletRequest(name=alice), metadata=mesh.as_user("bob"), timeout=10))
    missing = await expect(grpc.StatusCode.NOT_FOUND, wallets.GetWallet(
        wallet_pb2.GetWalletRequest(name="wallets/nope"), metadata=mesh.as_user("bob"), timeout=10))
    assert theirs.details().replace(alice, "X") == missing.details().replace("wallets/nope", "X")   # indistinguishable
    for request in (wallet_pb2.ListWalletsRequest(), wallet_pb2.ListWalletsRequest(owner_id="alice")):
        listed = await wallets.ListWallets(request, metadata=mesh.as_user("bob"), timeout=10)
        assert [w.name for w in listed.wallets] == ([bob] if not request.owner_id else [])
    await expect(grpc.StatusCode.NOT_FOUND, wallets.ValidateBalance(wallet_pb2.ValidateBalanceRequest(
        wallet=alice, amount=usd("1.00")), metadata=mesh.as_user("bob"), timeout=10))
    await expect(grpc.StatusCode.NOT_FOUND, wallets.ListLedgerEntries(wallet_pb2.ListLedgerEntriesRequest(
        parent=alice), metadata=mesh.as_user("bob"), timeout=10))
    await expect(grpc.StatusCode.PERMISSION_DENIED, wallets.CreateWallet(wallet_pb2.CreateWalletRequest(
        wallet=wallet_pb2.Wallet(owner_id="alice", currency_code="EUR"), request_id="steal"),
        metadata=mesh.as_user("bob"), timeout=10))
    everyone = await wallets.ListWallets(wallet_pb2.ListWalletsRequest(), metadata=mesh.as_user("ops", "operator"),
                                         timeout=10)
    assert {w.name for w in everyone.wallets} == {alice, bob}


async def test_a_user_moves_only_their_own_money_and_sees_only_their_transactions(mesh):
    alice, bob, carol = [await create_wallet(mesh, u) for u in ("alice", "bob", "carol")]
    for name in (alice, carol):
        await mesh.wallets.CreditWallet(wallet_pb2.CreditWalletRequest(wallet=name, amount=usd("50.00"),
                                                                       request_id=f"fund-{name}"),
                                        metadata=mesh.as_operator, timeout=10)

    def create(user: str, source: str, destination: str, amount: str, key: str):
        return mesh.transactions.CreateTransaction(transaction_pb2.CreateTransactionRequest(
            transaction=transaction_pb2.Transaction(type=transaction_pb2.TRANSACTION_TYPE_SEND, source_wallet=source,
                                                    destination_wallet=destination, amount=usd(amount)),
            request_id=key), metadata=mesh.as_user(user), timeout=10)
    # Bob may not spend Alice's money; even "more than she has" does not tell him anything.
    for amount in ("1.00", "999.00"):
        await expect(grpc.StatusCode.NOT_FOUND, create("bob", alice, bob, amount, f"steal-{amount}"))
    sent = (await create("alice", alice, bob, "10.00", "gift")).transaction          # to anyone's wallet
    other = (await create("carol", carol, alice, "5.00", "carol-pays")).transaction
    for user, visible in (("alice", {sent.name, other.name}), ("bob", {sent.name}), ("carol", {other.name})):
        listed = await mesh.transactions.ListTransactions(transaction_pb2.ListTransactionsRequest(),
                                                          metadata=mesh.as_user(user), timeout=10)
        assert {t.name for t in listed.transactions} == visible, user
    await expect(grpc.StatusCode.NOT_FOUND, mesh.transactions.GetTransaction(
        transaction_pb2.GetTransactionRequest(name=other.name), metadata=mesh.as_user("bob"), timeout=10))

    async def watch(user: str, name: str) -> list:           # a server stream, with GetTransaction's rules
        stream = mesh.transactions.WatchTransaction(transaction_pb2.WatchTransactionRequest(name=name),
                                                    metadata=mesh.as_user(user), timeout=10)
        return [reply.transaction async for reply in stream]
    await expect(grpc.StatusCode.NOT_FOUND, watch("bob", other.name))
    watched = await watch("bob", sent.name)                  # the gift's destination may follow it
    assert watched[-1].state in (transaction_pb2.TRANSACTION_STATE_COMPLETED, transaction_pb2.TRANSACTION_STATE_FAILED)
    assert all(t.name == sent.name for t in watched)
    listed = await mesh.transactions.ListTransactions(transaction_pb2.ListTransactionsRequest(),
                                                      metadata=mesh.as_user("ops", "operator"), timeout=10)
    assert len(listed.transactions) == 2


async def test_someone_elses_wallet_tells_nothing_a_missing_one_would_not(mesh):
    alice = await create_wallet(mesh, "alice")
    eur = (await mesh.wallets.CreateWallet(wallet_pb2.CreateWalletRequest(
        wallet=wallet_pb2.Wallet(owner_id="alice", currency_code="EUR"), request_id="alice-eur"),
        metadata=mesh.as_operator, timeout=10)).wallet.name

    async def withdraw_as_bob(source: str) -> str:
        error = await expect(grpc.StatusCode.NOT_FOUND, mesh.transactions.CreateTransaction(
            transaction_pb2.CreateTransactionRequest(transaction=transaction_pb2.Transaction(
                type=transaction_pb2.TRANSACTION_TYPE_WITHDRAW, source_wallet=source, amount=usd("1.00")),
                request_id=f"probe-{source}"), metadata=mesh.as_user("bob"), timeout=10))
        return error.details().replace(source, "X")
    # The same answer for a missing wallet, Alice's USD one and Alice's EUR one (another currency).
    assert await withdraw_as_bob(alice) == await withdraw_as_bob("wallets/missing") == await withdraw_as_bob(eur)


async def test_a_users_request_ids_are_their_own(mesh):
    def create(user: str):
        return mesh.user_wallets.CreateWallet(wallet_pb2.CreateWalletRequest(
            wallet=wallet_pb2.Wallet(currency_code="USD"), request_id="1"), metadata=mesh.as_user(user), timeout=10)
    alices, bobs = (await create("alice")).wallet, (await create("bob")).wallet
    assert (alices.owner_id, bobs.owner_id) == ("alice", "bob") and alices.name != bobs.name
    assert (await create("alice")).wallet == alices                 # a repeat still gets the first answer


@pytest.mark.parametrize("fields,field", [
    ({"type": 99, "amount": usd("1.00")}, "transaction.type"),
    ({"type": transaction_pb2.TRANSACTION_TYPE_BRIDGE, "amount": usd("1.00"), "source_wallet": "wallets/a",
      "source_chain": "chains/ethereum", "target_chain": "chains/polygon", "destination_address": "0x with space"},
     "transaction.destination_address"),
])
async def test_requests_the_saga_would_refuse_are_refused_up_front(mesh, fields, field):
    error = await expect(grpc.StatusCode.INVALID_ARGUMENT, mesh.transactions.CreateTransaction(
        transaction_pb2.CreateTransactionRequest(transaction=transaction_pb2.Transaction(**fields), request_id="bad"),
        metadata=mesh.as_user("alice"), timeout=10))
    assert error.details().startswith(field)

"""A service that shuts down ends its open WatchTransaction streams at once, with UNAVAILABLE
("watch again"), instead of holding its drain to the end; the wallet and the transaction
service as real mTLS servers in this process."""
from __future__ import annotations

import asyncio
import time

import grpc

from diboas.transaction.v1 import transaction_pb2
from diboas.wallet.v1 import wallet_pb2
from services.runtime.config import Address
from services.transaction.app import build as build_transaction
from services.wallet.app import build as build_wallet

from conftest import with_service
from meshkit import Mesh, usd


async def test_a_shutdown_ends_an_open_watch_with_unavailable_before_the_drain_is_over(topology, start_server):
    wallet = await start_server(topology, "wallet", build_wallet)
    topology = with_service(topology, "wallet", address=Address("127.0.0.1", wallet.port))
    transaction = await start_server(topology, "transaction", build_transaction)
    topology = with_service(topology, "transaction", address=Address("127.0.0.1", transaction.port))
    mesh = Mesh(topology, {"wallet": wallet.port, "transaction": transaction.port})
    try:
        alice = (await mesh.wallets.CreateWallet(wallet_pb2.CreateWalletRequest(
            wallet=wallet_pb2.Wallet(owner_id="alice", currency_code="USD"), request_id="alice"),
            metadata=mesh.as_operator, timeout=10)).wallet.name
        # A deposit: its saga waits for the provider service, which is not running, so it stays open.
        created = (await mesh.transactions.CreateTransaction(transaction_pb2.CreateTransactionRequest(
            transaction=transaction_pb2.Transaction(type=transaction_pb2.TRANSACTION_TYPE_DEPOSIT,
                                                    destination_wallet=alice, amount=usd("5.00")),
            request_id="open-deposit"), metadata=mesh.as_user("ops", "operator"), timeout=10)).transaction
        stream = mesh.transactions.WatchTransaction(transaction_pb2.WatchTransactionRequest(name=created.name),
                                                    metadata=mesh.as_user("ops", "operator"), timeout=60)
        first = await stream.read()
        assert first.transaction.name == created.name
        started = time.monotonic()
        stopping = asyncio.create_task(transaction.stop(grace=20))
        try:
            while True:
                await stream.read()
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert "shutting down: watch again" in error.details()
        assert time.monotonic() - started < 5, "the watch held the drain"
        await asyncio.wait_for(stopping, 20)
        assert time.monotonic() - started < 10
    finally:
        await mesh.close()

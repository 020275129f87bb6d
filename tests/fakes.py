"""Test servicers: real generated service interfaces with small, observable behaviours.

They stand in for business logic that later issues build; the runtime around them (TLS,
auth, policy, deadlines, errors, health, clients) is the real one.
"""
from __future__ import annotations

import asyncio

from diboas.events.v1 import events_pb2_grpc
from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.domain import errors
from services.runtime.context import current_user
from services.runtime.server import Registration, Runtime
from services.runtime.unimplemented import unimplemented_registration
from services.transaction.domain import APPROVED, Screened


class EchoWallets(wallet_pb2_grpc.WalletServiceServicer):
    """GetWallet echoes the name; special names fail in chosen ways; every call is recorded."""

    def __init__(self):
        self.seen_deadlines: list[float | None] = []
        self.seen_users: list = []
        self.calls = 0
        self.fail_next_unavailable = 0

    async def GetWallet(self, request, context):
        self.calls += 1
        self.seen_deadlines.append(context.time_remaining())
        self.seen_users.append(current_user())
        if self.fail_next_unavailable > 0:
            self.fail_next_unavailable -= 1
            raise errors.ServiceUnavailable("wallet is warming up", reason="WARMING_UP")
        name = request.name
        if name == "wallets/missing":
            raise errors.NotFound("wallet wallets/missing does not exist", reason="WALLET_NOT_FOUND")
        if name == "wallets/bad":
            raise errors.InvalidArgument.field("name", "must look like wallets/{wallet}")
        if name == "wallets/boom":
            raise RuntimeError("secret internal detail")
        if name == "wallets/timeout":
            raise TimeoutError("a driver gave up")  # not the call's deadline: a fault of ours
        if name.startswith("wallets/slow"):
            await asyncio.sleep(float(name.rpartition("-")[2]))
        return wallet_pb2.GetWalletResponse(wallet=wallet_pb2.Wallet(name=name, owner_id="owner-1",
                                                                     currency_code="USD"))


def wallet_build(servicer: EchoWallets):
    def build(runtime: Runtime) -> list[Registration]:
        # The event sink too: the wallet's policy in mesh.yaml names its DeliverEvent(s).
        return [Registration(wallet_pb2_grpc.add_WalletServiceServicer_to_server, servicer),
                unimplemented_registration(events_pb2_grpc, "EventSinkService", "wallet", "not in these tests")]
    return build


class ForwardingTransactions(transaction_pb2_grpc.TransactionServiceServicer):
    """GetTransaction calls the wallet upstream (GetWallet with the transaction's name), so
    tests can watch what reaches the next hop: deadline, identity, errors."""

    def __init__(self, runtime: Runtime):
        self._wallet = runtime.upstreams["wallet"].stub(wallet_pb2_grpc.WalletServiceStub)

    async def GetTransaction(self, request, context):
        reply = await self._wallet.GetWallet(wallet_pb2.GetWalletRequest(name=request.name))
        return transaction_pb2.GetTransactionResponse(
            transaction=transaction_pb2.Transaction(name=reply.wallet.name))


def transaction_build(holder: dict):
    def build(runtime: Runtime) -> list[Registration]:
        holder["runtime"] = runtime
        return [Registration(transaction_pb2_grpc.add_TransactionServiceServicer_to_server,
                             ForwardingTransactions(runtime))]
    return build


class ApprovingCompliance:
    """The transaction service's compliance port, approving every transaction: for tests of the
    work queue and tracing around a saga, not of screening (tests/unit/test_transaction_screening.py)."""

    async def screen(self, tx, request_id: str) -> Screened:
        return Screened(f"screenings/s-{tx.id}", APPROVED, "")

    async def decision(self, screening: str) -> Screened:
        return Screened(screening, APPROVED, "")

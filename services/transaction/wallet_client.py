"""The wallet service, as the transaction service needs it: an adapter from domain values to
the wallet's RPCs (errors arrive as domain errors, through the runtime's guarded stubs)."""
from __future__ import annotations

from decimal import Decimal

from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.domain.money import EXACT, Money
from services.runtime.client import Upstream
from services.runtime.wire import money_pb

from .ports import WalletFacts


class WalletClient:
    """The wallet port (ports.WalletPort) over the wallet's RPCs."""

    def __init__(self, upstream: Upstream):
        self._wallet = upstream.stub(wallet_pb2_grpc.WalletServiceStub)

    async def describe(self, wallet: str) -> WalletFacts:
        """Owner, currency and balances of a wallet; NOT_FOUND when it does not exist."""
        return _facts((await self._wallet.GetWallet(wallet_pb2.GetWalletRequest(name=wallet))).wallet)

    async def describe_all(self, wallets: list[str]) -> list[WalletFacts]:
        """`describe` of several wallets in one BatchGetWallets, in the order given; NOT_FOUND
        when any of them does not exist."""
        reply = await self._wallet.BatchGetWallets(wallet_pb2.BatchGetWalletsRequest(names=wallets))
        return [_facts(found) for found in reply.wallets]

    async def hold(self, source: str, amount: Money, reference: str, request_id: str) -> str:
        """Reserve `amount` on the source wallet; the hold's name. Idempotent by request_id."""
        reply = await self._wallet.CreateHold(wallet_pb2.CreateHoldRequest(
            parent=source, request_id=request_id,
            hold=wallet_pb2.Hold(amount=money_pb(amount),
                                 reference=reference)))
        return reply.hold.name


def _facts(found: wallet_pb2.Wallet) -> WalletFacts:
    available = Decimal(found.available_balance.amount or "0")
    balance = EXACT.add(available, Decimal(found.held_balance.amount or "0"))
    return WalletFacts(found.owner_id, found.currency_code, Money(found.currency_code, balance),
                       Money(found.currency_code, available))

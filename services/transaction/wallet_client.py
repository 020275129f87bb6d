"""The wallet service, as the transaction service needs it: an adapter from domain values to
the wallet's RPCs (errors arrive as domain errors, through the runtime's guarded stubs). The
reads of concurrent admissions go together in BatchGetWallets calls, and the holds of concurrent
sagas in BatchCreateHolds calls (services/runtime/coalesce.py)."""
from __future__ import annotations

import asyncio
from decimal import Decimal

from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.domain.errors import DomainError, InvalidArgument, NotFound
from services.domain.money import EXACT, Money
from services.runtime.client import Upstream
from services.runtime.coalesce import Coalescer
from services.runtime.status import from_status_message
from services.runtime.wire import money_pb

from .ports import WalletFacts


class WalletClient:
    """The wallet port (ports.WalletPort) over the wallet's RPCs."""

    def __init__(self, upstream: Upstream, max_batch: int = 100):
        self._wallet, self._upstream = upstream.stub(wallet_pb2_grpc.WalletServiceStub), upstream.name
        self._holds: Coalescer[wallet_pb2.CreateHoldRequest, str] = Coalescer(
            self._create_holds, upstream.name, "BatchCreateHolds", max_batch=max_batch)
        # two names per read at most, and BatchGetWallets takes up to max_batch names
        self._reads: Coalescer[list[str], list[WalletFacts]] = Coalescer(
            self._read_each, upstream.name, "BatchGetWallets", max_batch=max_batch // 2)

    async def describe(self, wallet: str) -> WalletFacts:
        """Owner, currency and balances of a wallet; NOT_FOUND when it does not exist."""
        return _facts((await self._wallet.GetWallet(wallet_pb2.GetWalletRequest(name=wallet))).wallet)

    async def describe_all(self, wallets: list[str]) -> list[WalletFacts]:
        """`describe` of several wallets in one BatchGetWallets, in the order given; NOT_FOUND
        when any of them does not exist. Two or fewer go in a batch with other callers' reads."""
        if len(wallets) <= 2:
            return await self._reads(wallets)
        reply = await self._wallet.BatchGetWallets(wallet_pb2.BatchGetWalletsRequest(names=wallets))
        return [_facts(found) for found in reply.wallets]

    async def _read_each(self, asks: list[list[str]]) -> list[list[WalletFacts] | DomainError]:
        """The wallets of several callers in one BatchGetWallets. The wallet answers a batch with
        a missing (or misnamed) wallet with that one error: then each caller is asked on its own,
        so that only the ones who named it get it."""
        try:
            reply = await self._wallet.BatchGetWallets(wallet_pb2.BatchGetWalletsRequest(
                names=[name for ask in asks for name in ask]))
        except (NotFound, InvalidArgument) as refused:
            if len(asks) == 1:
                return [refused]
            return [answer for answers in await asyncio.gather(*(self._read_each([ask]) for ask in asks))
                    for answer in answers]
        found, answers = iter(reply.wallets), []
        for ask in asks:
            answers.append([_facts(next(found)) for _ in ask])
        return answers

    async def hold(self, source: str, amount: Money, reference: str, request_id: str) -> str:
        """Reserve `amount` on the source wallet; the hold's name. Idempotent by request_id."""
        return await self._holds(wallet_pb2.CreateHoldRequest(
            parent=source, request_id=request_id, hold=wallet_pb2.Hold(amount=money_pb(amount), reference=reference)))

    async def _create_holds(self, requests: list[wallet_pb2.CreateHoldRequest]) -> list[str | DomainError]:
        reply = await self._wallet.BatchCreateHolds(wallet_pb2.BatchCreateHoldsRequest(requests=requests))
        return [outcome.response.hold.name if outcome.status.code == 0
                else from_status_message(outcome.status, self._upstream) for outcome in reply.outcomes]


def _facts(found: wallet_pb2.Wallet) -> WalletFacts:
    available = Decimal(found.available_balance.amount or "0")
    balance = EXACT.add(available, Decimal(found.held_balance.amount or "0"))
    return WalletFacts(found.owner_id, found.currency_code, Money(found.currency_code, balance),
                       Money(found.currency_code, available))

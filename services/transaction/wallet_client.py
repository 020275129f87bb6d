"""The wallet service, as the transaction service needs it: an adapter from domain values to
the wallet's RPCs (errors arrive as domain errors, through the runtime's guarded stubs). The
reads of concurrent admissions go together in BatchGetWallets calls, and the holds of concurrent
sagas in BatchCreateHolds calls (services/runtime/coalesce.py)."""
from __future__ import annotations

import asyncio
from decimal import Decimal

from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.domain.errors import InvalidArgument, NotFound, ServiceUnavailable
from services.domain.money import EXACT, Money
from services.runtime.client import Upstream
from services.runtime.coalesce import Coalescer, answers_of
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
            self._read_all, upstream.name, "BatchGetWallets", max_batch=max(1, max_batch // 2))

    async def describe(self, wallet: str) -> WalletFacts:
        """Owner, currency and balances of a wallet; NOT_FOUND when it does not exist."""
        return _facts((await self._wallet.GetWallet(wallet_pb2.GetWalletRequest(name=wallet))).wallet)

    async def describe_all(self, wallets: list[str]) -> list[WalletFacts]:
        """`describe` of several wallets in one BatchGetWallets, in the order given; NOT_FOUND
        when any of them does not exist. One or two go in a batch with other callers' reads."""
        if 1 <= len(wallets) <= 2:
            return await self._reads(wallets)
        return (await self._read_all([wallets]))[0]

    async def _read_all(self, asks: list[list[str]]) -> list[list[WalletFacts] | Exception]:
        """The wallets of several callers in one BatchGetWallets, each caller's in its order. The
        wallet refuses a whole call that names a missing (or misnamed) wallet: then each half of
        the callers is asked on its own, and so on, so only the ones who named it are refused
        (about two calls more per halving, not one per caller)."""
        names = [name for ask in asks for name in ask]
        try:
            reply = await self._wallet.BatchGetWallets(wallet_pb2.BatchGetWalletsRequest(names=names))
        except (NotFound, InvalidArgument) as refused:
            if len(asks) == 1:
                return [refused]
            half = len(asks) // 2
            first, second = await asyncio.gather(self._read_all(asks[:half]), self._read_all(asks[half:]),
                                                 return_exceptions=True)
            return [*_each(first, half), *_each(second, len(asks) - half)]
        if len(reply.wallets) != len(names):
            raise ServiceUnavailable(f"{self._upstream} answered {len(reply.wallets)} wallets to {len(names)} names",
                                     reason="UPSTREAM_MALFORMED_ANSWER")
        found = iter(reply.wallets)
        return [[_facts(next(found)) for _ in ask] for ask in asks]

    async def hold(self, source: str, amount: Money, reference: str, request_id: str) -> str:
        """Reserve `amount` on the source wallet; the hold's name. Idempotent by request_id."""
        return await self._holds(wallet_pb2.CreateHoldRequest(
            parent=source, request_id=request_id, hold=wallet_pb2.Hold(amount=money_pb(amount), reference=reference)))

    async def _create_holds(self, requests: list[wallet_pb2.CreateHoldRequest]) -> list[str | Exception]:
        async def batch(requests: list[wallet_pb2.CreateHoldRequest]):
            return (await self._wallet.BatchCreateHolds(wallet_pb2.BatchCreateHoldsRequest(requests=requests))).outcomes
        answers = await answers_of(batch, self._wallet.CreateHold, requests, self._upstream)
        return [answer if isinstance(answer, BaseException) else answer.hold.name for answer in answers]


def _each(outcome: list | BaseException, callers: int) -> list:
    """The outcomes of `callers` callers: theirs, or the one failure of their whole call."""
    return [outcome] * callers if isinstance(outcome, BaseException) else outcome


def _facts(found: wallet_pb2.Wallet) -> WalletFacts:
    available = Decimal(found.available_balance.amount or "0")
    balance = EXACT.add(available, Decimal(found.held_balance.amount or "0"))
    return WalletFacts(found.owner_id, found.currency_code, Money(found.currency_code, balance),
                       Money(found.currency_code, available))

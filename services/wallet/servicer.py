"""WalletService over gRPC: requests to domain values (every problem named by its field), the
service layer, and domain results back to protobuf. No business rules here."""
from __future__ import annotations

import re

from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.domain.errors import InvalidArgument
from services.domain.money import Money, scale_of
from services.runtime.context import current_user
from services.runtime.requests import fingerprint, money, request_id, resource_id
from services.runtime.status import answer_each
from services.runtime.wire import money_pb, timestamp

from .ledger import Hold, Wallet
from .repository import LedgerEntry
from .service import WalletService

MAX_BATCH_GET = 100             # names in one BatchGetWallets
MAX_BATCH_HOLDS = 100           # requests in one BatchCreateHolds
_HOLD = re.compile(r"wallets/([A-Za-z0-9_-]{1,64})/holds/([A-Za-z0-9_-]{1,64})")


def wallet_id(name: str, field: str) -> str:
    return resource_id(name, "wallets", field)


def hold_ids(name: str, field: str = "name") -> tuple[str, str]:
    match = _HOLD.fullmatch(name)
    if not match:
        raise InvalidArgument.field(field, f"'{name}' is not a hold name like \"wallets/{{wallet}}/holds/{{hold}}\"")
    return match.group(1), match.group(2)


def wallet_pb(w: Wallet) -> wallet_pb2.Wallet:
    return wallet_pb2.Wallet(name=w.name, owner_id=w.owner_id, currency_code=w.currency,
                             available_balance=money_pb(w.money(w.available)),
                             held_balance=money_pb(w.money(w.held)),
                             create_time=timestamp(w.created_at), update_time=timestamp(w.updated_at))


def hold_pb(h: Hold, currency: str) -> wallet_pb2.Hold:
    return wallet_pb2.Hold(name=h.name, amount=money_pb(Money(currency, h.amount)),
                           state=wallet_pb2.HoldState.Value(f"HOLD_STATE_{h.state}"), reference=h.reference,
                           destination_wallet=f"wallets/{h.destination_wallet_id}" if h.destination_wallet_id else "",
                           create_time=timestamp(h.created_at), update_time=timestamp(h.updated_at))


def entry_pb(e: LedgerEntry, currency: str) -> wallet_pb2.LedgerEntry:
    return wallet_pb2.LedgerEntry(
        name=f"wallets/{e.wallet_id}/ledgerEntries/{e.id}", type=wallet_pb2.LedgerEntryType.Value(f"LEDGER_ENTRY_TYPE_{e.type}"),
        amount=money_pb(Money(currency, e.amount)), available_balance_after=money_pb(Money(currency, e.available_after)),
        held_balance_after=money_pb(Money(currency, e.held_after)), reference=e.reference, journal_id=str(e.journal_id),
        create_time=timestamp(e.created_at))


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    """`domain`: of the ErrorInfo in a refused request's outcome (BatchCreateHolds)."""

    def __init__(self, service: WalletService, domain: str = "wallet"):
        self._service, self._domain = service, domain

    async def CreateWallet(self, request, context):
        rid = request_id(request)
        viewer = current_user()
        owner = request.wallet.owner_id or (viewer.id if viewer else "")    # a user's own, by default
        if not owner or len(owner) > 128:
            raise InvalidArgument.field("wallet.owner_id", "is required (up to 128 characters)")
        if not request.wallet.currency_code:
            raise InvalidArgument.field("wallet.currency_code", "is required, e.g. \"USD\"")
        scale_of(request.wallet.currency_code, "wallet.currency_code")
        data = await self._service.create_wallet(
            rid, fingerprint(request), owner, request.wallet.currency_code,
            lambda w: wallet_pb2.CreateWalletResponse(wallet=wallet_pb(w)).SerializeToString(), viewer)
        return wallet_pb2.CreateWalletResponse.FromString(data)

    async def GetWallet(self, request, context):
        wallet = await self._service.get_wallet(wallet_id(request.name, "name"), current_user())
        return wallet_pb2.GetWalletResponse(wallet=wallet_pb(wallet))

    async def BatchGetWallets(self, request, context):
        if not 1 <= len(request.names) <= MAX_BATCH_GET:
            raise InvalidArgument.field("names", f"give 1 to {MAX_BATCH_GET} wallet names, not {len(request.names)}")
        ids = [wallet_id(name, f"names[{i}]") for i, name in enumerate(request.names)]
        wallets = await self._service.get_wallets(ids, current_user())
        return wallet_pb2.BatchGetWalletsResponse(wallets=[wallet_pb(w) for w in wallets])

    async def ListWallets(self, request, context):
        page = await self._service.list_wallets(request.owner_id, request.page_size, request.page_token,
                                                current_user())
        return wallet_pb2.ListWalletsResponse(wallets=[wallet_pb(w) for w in page.items],
                                              next_page_token=page.next_page_token)

    async def ValidateBalance(self, request, context):
        wid = wallet_id(request.wallet, "wallet")
        amount = money(request.amount, request.HasField("amount"), "amount")
        wallet, sufficient, shortfall = await self._service.validate_balance(wid, amount, current_user())
        return wallet_pb2.ValidateBalanceResponse(
            sufficient=sufficient, available_balance=money_pb(wallet.money(wallet.available)),
            shortfall=money_pb(shortfall), wallet=wallet_pb(wallet))

    async def ListLedgerEntries(self, request, context):
        wid = wallet_id(request.parent, "parent")
        page = await self._service.list_entries(wid, request.page_size, request.page_token, current_user())
        currency = (await self._service.get_wallet(wid)).currency if page.items else ""
        return wallet_pb2.ListLedgerEntriesResponse(ledger_entries=[entry_pb(e, currency) for e in page.items],
                                                    next_page_token=page.next_page_token)

    async def CreateHold(self, request, context):
        rid = request_id(request)
        wid = wallet_id(request.parent, "parent")
        amount = money(request.hold.amount, request.hold.HasField("amount"), "hold.amount")
        data = await self._service.create_hold(
            rid, fingerprint(request), wid, amount, request.hold.reference,
            lambda pair: wallet_pb2.CreateHoldResponse(hold=hold_pb(pair[0], pair[1].currency),
                                                       wallet=wallet_pb(pair[1])).SerializeToString())
        return wallet_pb2.CreateHoldResponse.FromString(data)

    async def BatchCreateHolds(self, request, context):
        outcomes = await answer_each(request.requests, lambda one: self.CreateHold(one, context), self._domain,
                                     most=MAX_BATCH_HOLDS)
        return wallet_pb2.BatchCreateHoldsResponse(outcomes=[
            wallet_pb2.CreateHoldOutcome(status=status, response=response) for status, response in outcomes])

    async def GetHold(self, request, context):
        wid, hid = hold_ids(request.name)
        hold = await self._service.get_hold(wid, hid)
        wallet = await self._service.get_wallet(wid)
        return wallet_pb2.GetHoldResponse(hold=hold_pb(hold, wallet.currency))

    async def CaptureHold(self, request, context):
        rid = request_id(request)
        wid, hid = hold_ids(request.name)
        destination = wallet_id(request.destination_wallet, "destination_wallet") if request.destination_wallet else None
        currency = (await self._service.get_wallet(wid)).currency
        data = await self._service.capture_hold(
            rid, fingerprint(request), wid, hid, destination,
            lambda hold: wallet_pb2.CaptureHoldResponse(hold=hold_pb(hold, currency)).SerializeToString())
        return wallet_pb2.CaptureHoldResponse.FromString(data)

    async def ReleaseHold(self, request, context):
        rid = request_id(request)
        wid, hid = hold_ids(request.name)
        currency = (await self._service.get_wallet(wid)).currency
        data = await self._service.release_hold(
            rid, fingerprint(request), wid, hid,
            lambda hold: wallet_pb2.ReleaseHoldResponse(hold=hold_pb(hold, currency)).SerializeToString())
        return wallet_pb2.ReleaseHoldResponse.FromString(data)

    async def CreditWallet(self, request, context):
        return await self._move(request, self._service.credit, wallet_pb2.CreditWalletResponse)

    async def DebitWallet(self, request, context):
        return await self._move(request, self._service.debit, wallet_pb2.DebitWalletResponse)

    async def _move(self, request, operation, response_type):
        rid = request_id(request)
        wid = wallet_id(request.wallet, "wallet")
        amount = money(request.amount, request.HasField("amount"), "amount")
        data = await operation(
            rid, fingerprint(request), wid, amount, request.reference,
            lambda pair: response_type(wallet=wallet_pb(pair[0]),
                                       ledger_entry=entry_pb(pair[1], pair[0].currency)).SerializeToString())
        return response_type.FromString(data)

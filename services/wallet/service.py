"""Wallet use cases: each one a database transaction, idempotent by request_id where it changes money.

Plain synchronous functions over a WalletRepository, each in a unit of work (the repository
and the idempotency record on one database transaction); `WalletService` runs them off the
event loop. Nothing here knows about grpc: responses of idempotent operations are stored as the
opaque bytes the caller's `encode` gives (the first answer is replayed verbatim).
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Callable, TypeVar

from services.domain.clock import utcnow
from services.domain.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound, PermissionDenied
from services.domain.money import EXACT, Money, require_transaction_limit
from services.runtime.db import Database
from services.runtime.requests import KEY, SEQUENCE, PageTokens, page_size
from services.runtime.unit_of_work import UnitsOfWork
from services.runtime.users import User

from . import ledger
from .ledger import Hold, Wallet
from .repository import LedgerEntry, WalletRepository
from .tables import idempotency_keys

T = TypeVar("T")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Page:
    items: list
    next_page_token: str


WALLET_PAGES = PageTokens("wallets", KEY)               # after this wallet id
ENTRY_PAGES = PageTokens("ledgerEntries", SEQUENCE)     # before this ledger entry id


def _same_currency(wallet: Wallet, amount: Money, field: str) -> None:
    if amount.currency != wallet.currency:
        raise InvalidArgument(f"{field}: {wallet.name} holds {wallet.currency}, not {amount.currency}",
                              reason="CURRENCY_MISMATCH",
                              violations=[FieldViolation(field, f"must be {wallet.currency}, the wallet's currency")])


class WalletService:
    def __init__(self, db: Database, clock: Callable[[], dt.datetime] = utcnow, ids: Callable[[], str] = new_id):
        self.db = db
        self.units = UnitsOfWork(db, WalletRepository, idempotency=idempotency_keys, clock=clock)
        self._ids = ids

    # --- idempotent, money-changing operations -------------------------------------------------

    def _idempotent(self, operation: str, request_id: str, fingerprint: str,
                    work: Callable[[WalletRepository, dt.datetime], T], encode: Callable[[T], bytes]) -> bytes:
        return self.units.idempotent(operation, request_id, fingerprint, lambda unit: work(unit.repo, unit.now),
                                     encode)

    async def create_wallet(self, request_id: str, fingerprint: str, owner_id: str, currency: str,
                            encode: Callable[[Wallet], bytes], viewer: User | None = None) -> bytes:
        if viewer is not None and not viewer.may_see(owner_id):
            raise PermissionDenied(f"user '{viewer.id}' may create wallets only for themselves, not for '{owner_id}'",
                                   reason="NOT_YOUR_WALLET")

        def work(repo: WalletRepository, now: dt.datetime) -> Wallet:
            existing = repo.find_wallet(owner_id, currency)
            if existing is not None:
                raise AlreadyExists(f"owner '{owner_id}' already has a {currency} wallet: {existing.name}",
                                    reason="WALLET_EXISTS", metadata={"wallet": existing.name})
            zero = Money.zero(currency).amount
            wallet = Wallet(self._ids(), owner_id, currency, zero, zero, now, now)
            repo.add_wallet(wallet)
            return wallet
        return await self.db.run(self._idempotent, "CreateWallet", request_id, fingerprint, work, encode)

    def _move(self, repo: WalletRepository, now: dt.datetime, wallet_id: str, amount: Money, field: str,
              make: Callable[[Wallet], ledger.Journal], entry_type: str) -> tuple[Wallet, int]:
        wallet = repo.lock_wallets([wallet_id]).get(wallet_id)
        if wallet is None:
            raise NotFound(f"wallet wallets/{wallet_id} does not exist", reason="WALLET_NOT_FOUND")
        _same_currency(wallet, amount, field)
        journal = make(wallet)
        journal.post({wallet.id: wallet}, now, {wallet.id: entry_type})
        repo.save_balances(wallet)
        return wallet, repo.add_journal(journal, now)

    async def credit(self, request_id: str, fingerprint: str, wallet_id: str, amount: Money, reference: str,
                     encode: Callable[[tuple[Wallet, LedgerEntry]], bytes]) -> bytes:
        return await self._change("CreditWallet", ledger.credit_within_limit, ledger.CREDIT, request_id, fingerprint, wallet_id,
                                  amount, reference, encode)

    async def debit(self, request_id: str, fingerprint: str, wallet_id: str, amount: Money, reference: str,
                    encode: Callable[[tuple[Wallet, LedgerEntry]], bytes]) -> bytes:
        return await self._change("DebitWallet", ledger.debit, ledger.DEBIT, request_id, fingerprint, wallet_id,
                                  amount, reference, encode)

    async def _change(self, operation: str, make: Callable[..., ledger.Journal], entry_type: str, request_id: str,
                      fingerprint: str, wallet_id: str, amount: Money, reference: str, encode) -> bytes:
        """Money into or out of the platform on one wallet (a credit or a debit), at most the
        currency's max_transaction."""
        def work(repo: WalletRepository, now: dt.datetime):
            require_transaction_limit(amount, "amount.amount")
            wallet, journal_id = self._move(repo, now, wallet_id, amount, "amount.currency_code",
                                            lambda w: make(w, amount, reference), entry_type)
            return wallet, repo.entry_of_journal(wallet_id, journal_id)
        return await self.db.run(self._idempotent, operation, request_id, fingerprint, work, encode)

    async def create_hold(self, request_id: str, fingerprint: str, wallet_id: str, amount: Money, reference: str,
                          encode: Callable[[tuple[Hold, Wallet]], bytes]) -> bytes:
        def work(repo: WalletRepository, now: dt.datetime):
            require_transaction_limit(amount, "hold.amount.amount")
            wallet, _ = self._move(repo, now, wallet_id, amount, "hold.amount.currency_code",
                                   lambda w: ledger.reserve(w, amount, reference), ledger.HOLD)
            hold = Hold(self._ids(), wallet_id, amount.amount, ledger.ACTIVE, reference, None, now, now)
            repo.add_hold(hold)
            return hold, wallet
        return await self.db.run(self._idempotent, "CreateHold", request_id, fingerprint, work, encode)

    def _settle(self, repo: WalletRepository, now: dt.datetime, wallet_id: str, hold_id: str, capture: bool,
                destination_id: str | None) -> Hold:
        """Capture (to another wallet, or out of the platform) or release an active hold."""
        locked = repo.lock_wallets([wallet_id, *([destination_id] if destination_id else [])])
        wallet = locked.get(wallet_id)
        hold = repo.get_hold(wallet_id, hold_id) if wallet else None
        if hold is None:
            raise NotFound(f"hold wallets/{wallet_id}/holds/{hold_id} does not exist", reason="HOLD_NOT_FOUND")
        destination = None
        if destination_id is not None:
            if destination_id == wallet_id:
                raise InvalidArgument.field("destination_wallet", "must be another wallet than the hold's")
            destination = locked.get(destination_id)
            if destination is None:
                raise NotFound(f"destination wallet wallets/{destination_id} does not exist",
                               reason="WALLET_NOT_FOUND")
            _same_currency(destination, wallet.money(hold.amount), "destination_wallet")
        hold.require_active()
        if capture:
            journal = ledger.capture(wallet, hold, destination)
            entry_types = {wallet_id: ledger.HOLD_CAPTURE, **({destination_id: ledger.CREDIT} if destination else {})}
            hold.state, hold.destination_wallet_id = ledger.CAPTURED, destination_id
        else:
            journal = ledger.release(wallet, hold)
            entry_types = {wallet_id: ledger.HOLD_RELEASE}
            hold.state = ledger.RELEASED
        journal.post(locked, now, entry_types)
        hold.updated_at = now
        for touched in locked.values():
            repo.save_balances(touched)
        repo.save_hold(hold)
        repo.add_journal(journal, now)
        return hold

    async def capture_hold(self, request_id: str, fingerprint: str, wallet_id: str, hold_id: str,
                           destination_id: str | None, encode: Callable[[Hold], bytes]) -> bytes:
        def work(repo: WalletRepository, now: dt.datetime) -> Hold:
            return self._settle(repo, now, wallet_id, hold_id, True, destination_id)
        return await self.db.run(self._idempotent, "CaptureHold", request_id, fingerprint, work, encode)

    async def release_hold(self, request_id: str, fingerprint: str, wallet_id: str, hold_id: str,
                           encode: Callable[[Hold], bytes]) -> bytes:
        def work(repo: WalletRepository, now: dt.datetime) -> Hold:
            return self._settle(repo, now, wallet_id, hold_id, False, None)
        return await self.db.run(self._idempotent, "ReleaseHold", request_id, fingerprint, work, encode)

    def settle_in(self, connection, now: dt.datetime, wallet_id: str, hold_id: str, capture: bool,
                  destination_id: str | None) -> Hold:
        """Capture or release a hold inside a transaction the caller owns (an event handler's,
        with its inbox record)."""
        return self._settle(WalletRepository(connection), now, wallet_id, hold_id, capture, destination_id)

    def credit_in(self, connection, now: dt.datetime, wallet_id: str, amount: Money, reference: str) -> None:
        """Credit money that came into the platform (a deposit) inside a transaction the caller
        owns (an event handler's, with its inbox record). Never refused for the currency's
        limits: they were checked when the deposit was accepted."""
        self._move(WalletRepository(connection), now, wallet_id, amount, "amount.currency_code",
                   lambda w: ledger.credit(w, amount, reference), ledger.CREDIT)

    # --- reads ----------------------------------------------------------------------------------

    def _read(self, fn: Callable[[WalletRepository], T]) -> T:
        with self.units.reading() as unit:
            return fn(unit.repo)

    async def get_wallet(self, wallet_id: str, viewer: User | None = None) -> Wallet:
        """The wallet; NOT_FOUND also when it is someone else's (so ids cannot be probed)."""
        wallet = await self.db.run(self._read, lambda repo: repo.get_wallet(wallet_id))
        if wallet is None or (viewer is not None and not viewer.may_see(wallet.owner_id)):
            raise NotFound(f"wallet wallets/{wallet_id} does not exist", reason="WALLET_NOT_FOUND")
        return wallet

    async def get_wallets(self, wallet_ids: list[str], viewer: User | None = None) -> list[Wallet]:
        """The wallets, in the order asked, from one read; NOT_FOUND for the first that does not
        exist or is someone else's, as get_wallet words it."""
        found = await self.db.run(self._read, lambda repo: repo.get_wallets(wallet_ids))
        for wallet_id in wallet_ids:
            wallet = found.get(wallet_id)
            if wallet is None or (viewer is not None and not viewer.may_see(wallet.owner_id)):
                raise NotFound(f"wallet wallets/{wallet_id} does not exist", reason="WALLET_NOT_FOUND")
        return [found[wallet_id] for wallet_id in wallet_ids]

    async def list_wallets(self, owner_id: str, size: int, token: str, viewer: User | None = None) -> Page:
        """Wallets, optionally of one owner; a user who is not an operator sees only their own."""
        if viewer is not None and not viewer.is_operator:
            if owner_id and owner_id != viewer.id:
                return Page([], "")
            owner_id = viewer.id
        after, limit = WALLET_PAGES.read(token), page_size(size)
        found = await self.db.run(self._read, lambda repo: repo.list_wallets(owner_id or None, after and after[0],
                                                                             limit + 1))
        more = len(found) > limit
        return Page(found[:limit], WALLET_PAGES.write(found[limit - 1].id) if more else "")

    async def validate_balance(self, wallet_id: str, amount: Money,
                               viewer: User | None = None) -> tuple[Wallet, bool, Money]:
        wallet = await self.get_wallet(wallet_id, viewer)
        _same_currency(wallet, amount, "amount.currency_code")
        shortfall = EXACT.subtract(amount.amount, wallet.available)
        if shortfall <= 0:
            return wallet, True, Money.zero(wallet.currency)
        return wallet, False, wallet.money(shortfall)

    async def get_hold(self, wallet_id: str, hold_id: str) -> Hold:
        hold = await self.db.run(self._read, lambda repo: repo.get_hold(wallet_id, hold_id))
        if hold is None:
            raise NotFound(f"hold wallets/{wallet_id}/holds/{hold_id} does not exist", reason="HOLD_NOT_FOUND")
        return hold

    async def list_entries(self, wallet_id: str, size: int, token: str, viewer: User | None = None) -> Page:
        if viewer is not None:
            await self.get_wallet(wallet_id, viewer)          # NOT_FOUND unless it is theirs
        before, limit = ENTRY_PAGES.read(token), page_size(size)

        def read(repo: WalletRepository):
            if repo.get_wallet(wallet_id) is None:
                raise NotFound(f"wallet wallets/{wallet_id} does not exist", reason="WALLET_NOT_FOUND")
            return repo.list_entries(wallet_id, before and before[0], limit + 1)
        found = await self.db.run(self._read, read)
        more = len(found) > limit
        return Page(found[:limit], ENTRY_PAGES.write(found[limit - 1].id) if more else "")

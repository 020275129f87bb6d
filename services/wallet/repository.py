"""Reading and writing the wallet service's tables, inside a transaction the caller owns."""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, insert, select, update

from services.domain.money import EXACT
from services.runtime.db import as_utc, insert_into, param
from services.runtime.prepared import Prepared

from .ledger import Hold, Journal, Wallet
from .tables import holds, journals, ledger_entries, postings, wallets


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    wallet_id: str
    journal_id: int
    type: str
    amount: Decimal
    available_after: Decimal
    held_after: Decimal
    reference: str
    created_at: dt.datetime


w, h = wallets.c, holds.c
SAVE_BALANCES = Prepared(update(wallets).where(w.id == param(w.id)).values(
    available=param(w.available), held=param(w.held), updated_at=param(w.updated_at)))
ADD_HOLD = Prepared(insert(holds))
GET_HOLD = Prepared(select(holds).where(h.id == param(h.id), h.wallet_id == param(h.wallet_id)))
SAVE_HOLD = Prepared(update(holds).where(h.id == param(h.id)).values(
    state=param(h.state), destination_wallet_id=param(h.destination_wallet_id), updated_at=param(h.updated_at)))
ADD_JOURNAL = Prepared(insert(journals).returning(journals.c.id))
ADD_POSTINGS = Prepared(insert(postings))
ADD_ENTRIES = Prepared(insert(ledger_entries))


@functools.lru_cache(maxsize=256)
def _wallets_by_id(count: int, for_update: bool) -> Prepared:
    """The wallets of `count` ids (id_0, id_1...) in id order, locked for the transaction when
    `for_update`: one statement per count, since a prepared statement's IN list is fixed."""
    query = select(wallets).where(w.id.in_([param(w.id, f"id_{i}") for i in range(count)])).order_by(w.id)
    return Prepared(query.with_for_update() if for_update else query)


def _wallet(row) -> Wallet:
    return Wallet(row.id, row.owner_id, row.currency, row.available, row.held, as_utc(row.created_at), as_utc(row.updated_at))


def _entry(row) -> LedgerEntry:
    return LedgerEntry(row.id, row.wallet_id, row.journal_id, row.type, row.amount, row.available_after,
                       row.held_after, row.reference, as_utc(row.created_at))


def _hold(row) -> Hold:
    return Hold(row.id, row.wallet_id, row.amount, row.state, row.reference, row.destination_wallet_id,
                as_utc(row.created_at), as_utc(row.updated_at))


class WalletRepository:
    def __init__(self, connection: Connection):
        self.c = connection
        # SELECT ... FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers.
        self._lock = connection.dialect.name == "postgresql"

    # wallets
    def add_wallet(self, wallet: Wallet) -> None:
        self.c.execute(insert_into(wallets), dict(
            id=wallet.id, owner_id=wallet.owner_id, currency=wallet.currency, available=wallet.available,
            held=wallet.held, created_at=wallet.created_at, updated_at=wallet.updated_at))

    def get_wallet(self, wallet_id: str, for_update: bool = False) -> Wallet | None:
        return self.get_wallets([wallet_id], for_update).get(wallet_id)

    def get_wallets(self, wallet_ids: list[str], for_update: bool = False) -> dict[str, Wallet]:
        """The wallets of these ids that exist, by id; `for_update`: locked for this transaction
        in id order (so two transfers cannot deadlock)."""
        ids = sorted(set(wallet_ids))
        if not ids:
            return {}
        query = _wallets_by_id(len(ids), for_update and self._lock)
        return {row.id: _wallet(row) for row in query.run(self.c, {f"id_{i}": wallet_id for i, wallet_id in enumerate(ids)})}

    def lock_wallets(self, wallet_ids: list[str]) -> dict[str, Wallet]:
        """The wallets, locked for this transaction in id order (so two transfers cannot deadlock)."""
        return self.get_wallets(wallet_ids, for_update=True)

    def find_wallet(self, owner_id: str, currency: str) -> Wallet | None:
        row = self.c.execute(select(wallets).where(wallets.c.owner_id == owner_id,
                                                   wallets.c.currency == currency)).first()
        return _wallet(row) if row else None

    def list_wallets(self, owner_id: str | None, after_id: str | None, limit: int) -> list[Wallet]:
        query = select(wallets).order_by(wallets.c.id).limit(limit)
        if owner_id:
            query = query.where(wallets.c.owner_id == owner_id)
        if after_id:
            query = query.where(wallets.c.id > after_id)
        return [_wallet(row) for row in self.c.execute(query)]

    def save_balances(self, wallet: Wallet) -> None:
        SAVE_BALANCES.run(self.c, {"wallets_id": wallet.id, "wallets_available": wallet.available,
                                       "wallets_held": wallet.held, "wallets_updated_at": wallet.updated_at})

    # holds
    def add_hold(self, hold: Hold) -> None:
        ADD_HOLD.run(self.c, dict(
            id=hold.id, wallet_id=hold.wallet_id, amount=hold.amount, state=hold.state, reference=hold.reference,
            destination_wallet_id=hold.destination_wallet_id, created_at=hold.created_at, updated_at=hold.updated_at))

    def get_hold(self, wallet_id: str, hold_id: str) -> Hold | None:
        row = GET_HOLD.run(self.c, {"holds_id": hold_id, "holds_wallet_id": wallet_id}).first()
        return _hold(row) if row else None

    def save_hold(self, hold: Hold) -> None:
        SAVE_HOLD.run(self.c, {"holds_id": hold.id, "holds_state": hold.state,
                                   "holds_destination_wallet_id": hold.destination_wallet_id,
                                   "holds_updated_at": hold.updated_at})

    # the ledger
    def add_journal(self, journal: Journal, now: dt.datetime) -> int:
        journal_id = ADD_JOURNAL.run(self.c, dict(type=journal.type, reference=journal.reference,
                                                  created_at=now)).scalar_one()
        ADD_POSTINGS.run(self.c, [
            {"journal_id": journal_id, "account": line.account, "currency": journal.currency, "amount": line.amount}
            for line in journal.lines])
        ADD_ENTRIES.run(self.c, [
            {"wallet_id": e.wallet_id, "journal_id": journal_id, "type": e.type, "amount": e.amount,
             "available_after": e.available_after, "held_after": e.held_after, "reference": journal.reference,
             "created_at": now} for e in journal.effects])
        return journal_id

    def list_entries(self, wallet_id: str, before_id: int | None, limit: int) -> list[LedgerEntry]:
        query = (select(ledger_entries).where(ledger_entries.c.wallet_id == wallet_id)
                 .order_by(ledger_entries.c.id.desc()).limit(limit))
        if before_id is not None:
            query = query.where(ledger_entries.c.id < before_id)
        return [_entry(r) for r in self.c.execute(query)]

    def entry_of_journal(self, wallet_id: str, journal_id: int) -> LedgerEntry:
        row = self.c.execute(select(ledger_entries).where(ledger_entries.c.wallet_id == wallet_id,
                                                          ledger_entries.c.journal_id == journal_id)).one()
        return _entry(row)

    def account_sums(self) -> dict[str, Decimal]:
        """Every account's balance from the postings (for audits and tests)."""
        sums: dict[str, Decimal] = {}
        for row in self.c.execute(select(postings.c.account, postings.c.amount)):
            sums[row.account] = EXACT.add(sums.get(row.account, Decimal(0)), row.amount)
        return sums

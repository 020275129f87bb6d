"""Reading and writing the transactions table, inside a transaction the caller owns (a unit of
work): rows to domain Transactions and back."""
from __future__ import annotations

import datetime as dt
import functools
import json

from sqlalchemy import Connection, and_, insert, literal, or_, select, update

from services.domain.money import Money
from services.runtime.db import as_utc, param
from services.runtime.prepared import Prepared
from services.runtime.users import User

from .domain import PENDING, PROCESSING, TERMINAL, Screened, Transaction
from .tables import transactions

t = transactions.c
GET = select(transactions).where(t.id == param(t.id))
GET_ONE = Prepared(GET)
INCOMING = Prepared(select(t.amount).where(t.destination_wallet == param(t.destination_wallet),
                                           t.currency == param(t.currency),
                                           t.state.in_([literal(PENDING), literal(PROCESSING)])))
ADD = Prepared(insert(transactions))


@functools.cache
def _save(columns: tuple[str, ...]) -> Prepared:
    """UPDATE of these columns of one transaction, compiled once."""
    return Prepared(update(transactions).where(t.id == param(t.id), t.state.not_in([literal(s) for s in sorted(TERMINAL)]))
                    .values({name: param(t[name]) for name in columns}))


def _transaction(row) -> Transaction:
    return Transaction(row.id, row.type, row.state, row.source_wallet, row.destination_wallet,
                       Money(row.currency, row.amount), row.hold, row.failure_reason, as_utc(row.created_at),
                       as_utc(row.updated_at), as_utc(row.completed_at), row.provider, row.provider_payment,
                       row.source_chain, row.target_chain, row.destination_address, row.cross_chain_transfer,
                       [tuple(ref) for ref in json.loads(row.chain_transactions)],
                       source_owner=row.source_owner, destination_owner=row.destination_owner,
                       compliance=Screened(row.screening, row.screening_decision, row.screening_reason)
                       if row.screening_decision else None)


def _saga_columns(tx: Transaction) -> dict:
    """What the saga steps change, as columns."""
    return dict(state=tx.state, hold=tx.hold, failure_reason=tx.failure_reason, updated_at=tx.updated_at,
                completed_at=tx.completed_at, provider=tx.provider, provider_payment=tx.provider_payment,
                cross_chain_transfer=tx.cross_chain_transfer, chain_transactions=json.dumps(tx.chain_transactions),
                screening=screened.screening if (screened := tx.compliance) else "",
                screening_decision=screened.decision if screened else "",
                screening_reason=screened.reason if screened else "")


class TransactionRepository:
    def __init__(self, connection: Connection):
        self.c = connection
        # SELECT ... FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers.
        self._lock = connection.dialect.name == "postgresql"

    def add(self, tx: Transaction) -> None:
        """A new transaction, with the owners of its wallets (who may see it)."""
        ADD.run(self.c, dict(
            id=tx.id, type=tx.type, source_wallet=tx.source_wallet, destination_wallet=tx.destination_wallet,
            currency=tx.amount.currency, amount=tx.amount.amount, created_at=tx.created_at,
            source_chain=tx.source_chain, target_chain=tx.target_chain, destination_address=tx.destination_address,
            source_owner=tx.source_owner, destination_owner=tx.destination_owner, **_saga_columns(tx)))

    def save_progress(self, tx: Transaction) -> bool:
        """Write what the saga changed, unless the stored transaction has already ended (the row
        stays locked until the caller's transaction ends); False when it had."""
        columns = _saga_columns(tx)
        saved = _save(tuple(columns)).run(self.c, {"transactions_id": tx.id,
                                                   **{f"transactions_{name}": v for name, v in columns.items()}})
        return saved.rowcount == 1

    def get(self, transaction_id: str, viewer: User | None = None) -> Transaction | None:
        """The transaction, if `viewer` may see it (None: anyone)."""
        if viewer is None or viewer.is_operator:
            row = GET_ONE.run(self.c, {"transactions_id": transaction_id}).first()
            return _transaction(row) if row else None
        found = self._select(GET, viewer, {"transactions_id": transaction_id})
        return found[0] if found else None

    def newest(self, wallet: str, after: tuple[dt.datetime, str] | None, limit: int,
               viewer: User | None = None) -> list[Transaction]:
        """Newest first, after the (created_at, id) given, optionally of one wallet (as source or
        destination), those `viewer` may see."""
        query = select(transactions).order_by(t.created_at.desc(), t.id.desc()).limit(limit)
        if wallet:
            query = query.where(or_(t.source_wallet == wallet, t.destination_wallet == wallet))
        if after is not None:
            created, last_id = after
            query = query.where(or_(t.created_at < created, and_(t.created_at == created, t.id < last_id)))
        return self._select(query, viewer)

    def incoming(self, wallet: str, currency: str) -> Money:
        """What transactions accepted and not finished yet bring to `wallet`."""
        amounts = INCOMING.run(self.c, {"transactions_destination_wallet": wallet,
                                        "transactions_currency": currency}).scalars()
        return sum((Money(currency, amount) for amount in amounts), Money.zero(currency))

    def _select(self, query, viewer: User | None, values: dict | None = None) -> list[Transaction]:
        if viewer is not None and not viewer.is_operator:
            query = query.where(or_(t.source_owner == viewer.id, t.destination_owner == viewer.id))
        return [_transaction(row) for row in self.c.execute(query, values)]

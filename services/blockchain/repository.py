"""Reading and writing the blockchain service's tables: cross-chain transfers, and the idempotency
keys of its requests. All of its SQL is here."""
from __future__ import annotations

import datetime as dt
import json
from typing import Callable, TypeVar

from sqlalchemy import Connection, insert, select, update

from services.domain.clock import utcnow
from services.domain.money import Money
from services.runtime.db import Database, as_utc
from services.runtime.idempotency import run_idempotent, stored_response

from .tables import cross_chain_transfers, idempotency_keys
from .transfers import TERMINAL, ChainTx, Compensation, Transfer

T = TypeVar("T")


def _tx(chain: str, tx_hash: str | None, block: int | None) -> ChainTx | None:
    return None if tx_hash is None else ChainTx(chain, tx_hash, block or 0)


def _compensations_json(items: list[Compensation]) -> str:
    return json.dumps([{"step": c.step, "chain": c.transaction.chain, "hash": c.transaction.hash,
                        "block": c.transaction.block, "reason": c.reason, "created_at": c.created_at.isoformat()}
                       for c in items])


def _compensations(text: str) -> list[Compensation]:
    return [Compensation(c["step"], ChainTx(c["chain"], c["hash"], c["block"]), c["reason"],
                         dt.datetime.fromisoformat(c["created_at"])) for c in json.loads(text)]


def _transfer(row) -> Transfer:
    return Transfer(
        id=row.id, source_chain=row.source_chain, target_chain=row.target_chain, amount=Money(row.currency, row.amount),
        destination_address=row.destination_address, transaction=row.transaction_name, state=row.state,
        current_step=row.current_step, created_at=as_utc(row.created_at), updated_at=as_utc(row.updated_at),
        completed_at=as_utc(row.completed_at), source_tx=_tx(row.source_chain, row.source_tx_hash, row.source_tx_block),
        bridge_tx=_tx(row.source_chain, row.bridge_tx_hash, row.bridge_tx_block),
        target_tx=_tx(row.target_chain, row.target_tx_hash, row.target_tx_block),
        compensations=_compensations(row.compensations), failure_reason=row.failure_reason,
        compensating=row.compensating, outcome_unknown=row.outcome_unknown, last_error=row.last_error,
        attempts=row.attempts)


def _changes(t: Transfer) -> dict:
    """The columns that change during a transfer's life."""
    values = {"state": t.state, "current_step": t.current_step, "compensating": t.compensating,
              "outcome_unknown": t.outcome_unknown, "compensations": _compensations_json(t.compensations),
              "failure_reason": t.failure_reason, "last_error": t.last_error, "attempts": t.attempts,
              "updated_at": t.updated_at, "completed_at": t.completed_at}
    for step, tx in (("source", t.source_tx), ("bridge", t.bridge_tx), ("target", t.target_tx)):
        values[f"{step}_tx_hash"], values[f"{step}_tx_block"] = (tx.hash, tx.block) if tx else (None, None)
    return values


class TransferRepository:
    """Each method one database transaction, run off the event loop."""

    def __init__(self, db: Database, clock: Callable[[], dt.datetime] = utcnow):
        self._db, self._clock = db, clock

    async def get(self, transfer_id: str) -> Transfer | None:
        return await self._db.run(self._get, transfer_id)

    def _get(self, transfer_id: str) -> Transfer | None:
        with self._db.reading() as connection:
            row = connection.execute(select(cross_chain_transfers).where(cross_chain_transfers.c.id == transfer_id)).first()
        return _transfer(row) if row else None

    async def save(self, t: Transfer) -> None:
        await self._db.run(self._save, t)

    def _save(self, t: Transfer) -> None:
        with self._db.transaction() as connection:
            connection.execute(update(cross_chain_transfers).where(cross_chain_transfers.c.id == t.id).values(**_changes(t)))

    async def unfinished(self) -> list[str]:
        """The ids of the transfers that are not terminal, oldest first."""
        return await self._db.run(self._unfinished)

    def _unfinished(self) -> list[str]:
        c = cross_chain_transfers.c
        with self._db.reading() as connection:
            return list(connection.execute(select(c.id).where(c.state.not_in(TERMINAL)).order_by(c.created_at)).scalars())

    async def first_response(self, operation: str, request_id: str, fingerprint: str) -> bytes | None:
        """The stored answer of `request_id`, if it was seen (ALREADY_EXISTS for another request)."""
        return await self._db.run(self._first_response, operation, request_id, fingerprint)

    def _first_response(self, operation: str, request_id: str, fingerprint: str) -> bytes | None:
        with self._db.reading() as connection:
            return stored_response(connection, idempotency_keys, operation, request_id, fingerprint)

    async def once(self, operation: str, request_id: str, fingerprint: str, work: Callable[[dt.datetime], T],
                   encode: Callable[[T], bytes]) -> bytes:
        """Run `work(now)` unless `request_id` was seen; the first answer's bytes."""
        return await self._db.run(run_idempotent, self._db, idempotency_keys, operation, request_id, fingerprint,
                                  lambda connection, now: work(now), encode, self._clock)

    async def create(self, operation: str, request_id: str, fingerprint: str,
                     new: Callable[[dt.datetime], Transfer]) -> str:
        """Insert the transfer `new(now)` makes, once per request_id: its id (the first one's on a repeat)."""
        def work(connection: Connection, now: dt.datetime) -> Transfer:
            t = new(now)
            connection.execute(insert(cross_chain_transfers).values(
                id=t.id, source_chain=t.source_chain, target_chain=t.target_chain, currency=t.amount.currency,
                amount=t.amount.amount, destination_address=t.destination_address, transaction_name=t.transaction,
                created_at=t.created_at, **_changes(t)))
            return t
        stored = await self._db.run(run_idempotent, self._db, idempotency_keys, operation, request_id, fingerprint,
                                    work, lambda t: t.id.encode(), self._clock)
        return stored.decode()

"""Transaction use cases: create (idempotent, validated against the wallet), read, list, and
process queued work. Every state change is written with its event (outbox) and, for queued
work, the queue item's removal, in one database transaction: a crash anywhere leaves either
the old state with the item still queued, or the new state with its event and no item."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Connection, and_, insert, or_, select, update

from diboas.common.v1 import common_pb2
from diboas.events.v1 import events_pb2
from diboas.transaction.v1 import transaction_pb2
from services.domain.money import Money
from services.runtime.db import Database
from services.runtime.errors import DeadlineExceeded, DomainError, InvalidArgument, NotFound, ServiceUnavailable
from services.runtime.idempotency import run_idempotent, stored_response
from services.runtime.messaging.queue import Claimed, WorkQueue
from services.runtime.messaging.store import Outbox
from services.runtime.requests import page_size

from .domain import COMPLETED, FAILED, PENDING, TERMINAL, Transaction
from .tables import idempotency_keys, transactions
from .wallet_client import WalletClient

log = logging.getLogger("diboas.transaction")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _row(row) -> Transaction:
    return Transaction(row.id, row.type, row.state, row.source_wallet, row.destination_wallet,
                       Money(row.currency, row.amount), row.hold, row.failure_reason, _utc(row.created_at),
                       _utc(row.updated_at), _utc(row.completed_at))


def _money(amount: Money) -> common_pb2.Money:
    return common_pb2.Money(currency_code=amount.currency, amount=amount.text)


def event_for(tx: Transaction) -> tuple[str, events_pb2.TransactionCompleted | events_pb2.TransactionFailed]:
    kind = transaction_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{tx.type}")
    if tx.state == COMPLETED:
        event = events_pb2.TransactionCompleted(transaction=tx.name, type=kind, source_wallet=tx.source_wallet,
                                                destination_wallet=tx.destination_wallet, amount=_money(tx.amount),
                                                hold=tx.hold)
        event.complete_time.FromDatetime(tx.completed_at)
        return "transaction.completed", event
    event = events_pb2.TransactionFailed(transaction=tx.name, type=kind, source_wallet=tx.source_wallet,
                                         destination_wallet=tx.destination_wallet, amount=_money(tx.amount),
                                         hold=tx.hold, reason=tx.failure_reason)
    event.fail_time.FromDatetime(tx.completed_at)
    return "transaction.failed", event


def _token(last: Transaction) -> str:
    return base64.urlsafe_b64encode(f"{last.created_at.isoformat()}|{last.id}".encode()).decode().rstrip("=")


def _untoken(token: str) -> tuple[dt.datetime, str]:
    try:
        created, _, last_id = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().partition("|")
        return dt.datetime.fromisoformat(created), last_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "is not a page token this list gave out") from None


@dataclass(frozen=True)
class Page:
    items: list[Transaction]
    next_page_token: str


class TransactionService:
    def __init__(self, db: Database, wallet: WalletClient, queue: WorkQueue, outbox: Outbox,
                 clock: Callable[[], dt.datetime] = utcnow, ids: Callable[[], str] = lambda: uuid.uuid4().hex):
        self.db, self._wallet, self.queue, self._outbox = db, wallet, queue, outbox
        self._clock, self._ids = clock, ids

    # --- create ---------------------------------------------------------------------------------

    async def create_send(self, request_id: str, fingerprint: str, source: str, destination: str, amount: Money,
                          encode: Callable[[Transaction], bytes]) -> bytes:
        """A SEND, queued for processing once the wallets agree it can happen (nothing is written
        when they do not). A repeated request_id returns the first answer."""
        def stored() -> bytes | None:
            with self.db.reading() as connection:
                return stored_response(connection, idempotency_keys, "CreateTransaction", request_id, fingerprint)
        first = await self.db.run(stored)
        if first is not None:
            return first
        await self._wallet.check_transfer(source, destination, amount)

        def work(connection: Connection, now: dt.datetime) -> Transaction:
            tx = Transaction(self._ids(), "SEND", PENDING, source, destination, amount, "", "", now, now, None)
            connection.execute(insert(transactions).values(
                id=tx.id, type=tx.type, state=tx.state, source_wallet=source, destination_wallet=destination,
                currency=amount.currency, amount=amount.amount, hold="", failure_reason="", created_at=now,
                updated_at=now, completed_at=None))
            self.queue.enqueue(connection, tx.id, priority=10)
            return tx
        return await self.db.run(run_idempotent, self.db, idempotency_keys, "CreateTransaction", request_id,
                                 fingerprint, work, encode, self._clock)

    # --- reads ----------------------------------------------------------------------------------

    def _get(self, transaction_id: str) -> Transaction | None:
        with self.db.reading() as connection:
            row = connection.execute(select(transactions).where(transactions.c.id == transaction_id)).first()
        return _row(row) if row else None

    async def get(self, transaction_id: str) -> Transaction:
        tx = await self.db.run(self._get, transaction_id)
        if tx is None:
            raise NotFound(f"transaction transactions/{transaction_id} does not exist", reason="TRANSACTION_NOT_FOUND")
        return tx

    async def list(self, wallet: str, size: int, token: str) -> Page:
        """Newest first, optionally of one wallet (as source or destination); keyset paging."""
        limit = page_size(size)
        after = _untoken(token) if token else None

        def read() -> list[Transaction]:
            t = transactions.c
            query = select(transactions).order_by(t.created_at.desc(), t.id.desc()).limit(limit + 1)
            if wallet:
                query = query.where(or_(t.source_wallet == wallet, t.destination_wallet == wallet))
            if after is not None:
                created, last_id = after
                query = query.where(or_(t.created_at < created, and_(t.created_at == created, t.id < last_id)))
            with self.db.reading() as connection:
                return [_row(r) for r in connection.execute(query)]
        found = await self.db.run(read)
        more = len(found) > limit
        return Page(found[:limit], _token(found[limit - 1]) if more else "")

    # --- processing -----------------------------------------------------------------------------

    def _finish(self, claimed: Claimed, transaction_id: str, state: str, hold: str = "", reason: str = "") -> None:
        with self.db.transaction() as connection:
            query = select(transactions).where(transactions.c.id == transaction_id)
            if connection.dialect.name == "postgresql":
                query = query.with_for_update()
            tx = _row(connection.execute(query).one())
            if tx.state not in TERMINAL:
                tx.move_to(state, self._clock(), hold=hold, reason=reason)
                connection.execute(update(transactions).where(transactions.c.id == tx.id).values(
                    state=tx.state, hold=tx.hold, failure_reason=tx.failure_reason, updated_at=tx.updated_at,
                    completed_at=tx.completed_at))
                topic, event = event_for(tx)
                self._outbox.add(connection, topic, tx.name, event)
            self.queue.done(connection, claimed)

    async def process(self, claimed: Claimed) -> None:
        """One queued SEND: reserve on the source wallet, then complete (or fail)."""
        tx = await self.db.run(self._get, claimed.item)
        if tx is None or tx.state in TERMINAL:
            await self.db.run(self._finish_gone, claimed)
            return
        try:
            hold = await self._wallet.hold(tx.source_wallet, tx.amount, tx.name, request_id=f"{tx.id}:hold")
        except (ServiceUnavailable, DeadlineExceeded):
            raise  # the wallet cannot answer now: the item is retried later
        except DomainError as exc:  # the wallet said no (funds, currency, a wallet gone)
            await self.db.run(self._finish, claimed, tx.id, FAILED, "", exc.message)
            return
        await self.db.run(self._finish, claimed, tx.id, COMPLETED, hold)

    def _finish_gone(self, claimed: Claimed) -> None:
        with self.db.transaction() as connection:
            self.queue.done(connection, claimed)

    async def work(self, stop: asyncio.Event, idle_seconds: float = 0.05) -> None:
        """One competing consumer of the queue, until `stop` is set."""
        while not stop.is_set():
            try:
                claimed = await self.db.run(self.queue.claim)
            except Exception:  # noqa: BLE001 - a database hiccup must not end the worker
                log.exception("could not claim work")
                claimed = None
            if claimed is None:
                try:
                    await asyncio.wait_for(stop.wait(), idle_seconds)
                except TimeoutError:
                    pass
                continue
            try:
                await self.process(claimed)
            except Exception as exc:  # noqa: BLE001 - every failure puts the item back for later
                message = getattr(exc, "message", None) or repr(exc)
                delay = await self.db.run(self.queue.retry, claimed, message)
                log.log(logging.INFO if isinstance(exc, (ServiceUnavailable, DeadlineExceeded)) else logging.ERROR,
                        "transactions/%s: attempt %d failed (%s); retrying in %.1fs", claimed.item, claimed.attempts,
                        message, delay.total_seconds(), exc_info=not isinstance(exc, DomainError))

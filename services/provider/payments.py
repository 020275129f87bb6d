"""Payments through the registry, recorded: idempotent by request_id, one charge per payment.

    ExecutePayment(request_id) ──> payments row PENDING (with the key, one transaction)
                               ──> registry.pay(key "payments/{id}") with failover
                               ──> SUCCEEDED (provider, fee, reference) or FAILED (why)

Every provider is asked with the payment's own key, so a provider that already charged it
returns its first receipt instead of charging again. A repeat of the request (the caller
timed out, or the service restarted half-way) finds the row and drives it on from where it
is; concurrent repeats in this process share one drive. No grpc here.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Connection, insert, select, update

from services.domain.clock import utcnow
from services.domain.errors import FailedPrecondition, NotFound, ServiceUnavailable
from services.domain.money import Money
from services.runtime.db import Database, as_utc
from services.runtime.idempotency import run_idempotent, stored_response

from .adapters import QuoteRequest
from .registry import Attempt, Failure, ProviderRegistry, Selection
from .tables import idempotency_keys, payments

log = logging.getLogger("diboas.payments")

PENDING, SUCCEEDED, FAILED = "PENDING", "SUCCEEDED", "FAILED"


@dataclass(frozen=True)
class Payment:
    id: str
    direction: str
    amount: Money
    wallet: str
    transaction: str
    preferred_provider: str
    state: str
    provider: str
    fee: Money | None
    provider_reference: str
    attempts: list[Attempt]
    failure_reason: str
    created_at: dt.datetime
    completed_at: dt.datetime | None

    @property
    def name(self) -> str:
        return f"payments/{self.id}"


def _attempts_json(attempts: list[Attempt]) -> str:
    return json.dumps([{"provider": a.provider, "start": a.started_at.isoformat(), "end": a.ended_at.isoformat(),
                        "failure": [a.failure.reason, a.failure.message] if a.failure else None} for a in attempts])


def _attempts(text: str) -> list[Attempt]:
    return [Attempt(a["provider"], dt.datetime.fromisoformat(a["start"]), dt.datetime.fromisoformat(a["end"]),
                    Failure(a["provider"], *a["failure"]) if a["failure"] else None) for a in json.loads(text)]


def _row(row) -> Payment:
    return Payment(row.id, row.direction, Money(row.currency, row.amount), row.wallet, row.transaction,
                   row.preferred_provider, row.state, row.provider,
                   Money(row.currency, row.fee) if row.fee is not None else None, row.provider_reference,
                   _attempts(row.attempts), row.failure_reason, as_utc(row.created_at), as_utc(row.completed_at))


class PaymentService:
    def __init__(self, db: Database, registry: ProviderRegistry, clock: Callable[[], dt.datetime] = utcnow,
                 ids: Callable[[], str] = lambda: uuid.uuid4().hex):
        self.db, self.registry, self._clock, self._ids = db, registry, clock, ids
        self._drives: dict[str, asyncio.Task] = {}

    def _stored(self, operation: str, request_id: str, fingerprint: str) -> bytes | None:
        with self.db.reading() as connection:
            return stored_response(connection, idempotency_keys, operation, request_id, fingerprint)

    # --- selection ------------------------------------------------------------------------------

    async def select(self, request_id: str, fingerprint: str, request: QuoteRequest, exclude: frozenset[str],
                     encode: Callable[[Selection], bytes]) -> bytes:
        """The optimal provider now; a repeated request_id returns the first answer."""
        first = await self.db.run(self._stored, "SelectProvider", request_id, fingerprint)
        if first is not None:
            return first
        for name in exclude:
            self.registry.adapter(name)          # NOT_FOUND for a provider that does not exist
        selection = await self.registry.select(request, exclude)
        return await self.db.run(run_idempotent, self.db, idempotency_keys, "SelectProvider", request_id, fingerprint,
                                 lambda connection, now: selection, encode, self._clock)

    # --- payments -------------------------------------------------------------------------------

    async def execute(self, request_id: str, fingerprint: str, request: QuoteRequest, wallet: str, transaction: str,
                      provider: str) -> Payment:
        """Record the payment, then pay it with failover. With nothing recorded: FailedPrecondition
        NO_PROVIDER_ABLE when no provider's terms allow it, ServiceUnavailable NO_PROVIDER_AVAILABLE
        when none that could is healthy now."""
        first = await self.db.run(self._stored, "ExecutePayment", request_id, fingerprint)
        if first is None:
            if provider:
                self.registry.require_able(provider, request)
            if not provider or not self.registry.health[provider].healthy:
                await self.registry.select(request)          # raises before anything is recorded
            first = await self.db.run(run_idempotent, self.db, idempotency_keys, "ExecutePayment", request_id,
                                      fingerprint, lambda connection, now: self._open(connection, now, request,
                                                                                     wallet, transaction, provider),
                                      lambda payment_id: payment_id.encode(), self._clock)
        return await self._drive(first.decode())

    def _open(self, connection: Connection, now: dt.datetime, request: QuoteRequest, wallet: str, transaction: str,
              provider: str) -> str:
        payment_id = self._ids()
        connection.execute(insert(payments).values(
            id=payment_id, direction=request.direction, currency=request.amount.currency, amount=request.amount.amount,
            wallet=wallet, transaction=transaction, preferred_provider=provider, state=PENDING, provider="", fee=None,
            provider_reference="", attempts="[]", failure_reason="", created_at=now, completed_at=None))
        return payment_id

    async def _drive(self, payment_id: str) -> Payment:
        """One drive per payment at a time; it survives the caller giving up (the payment goes on)."""
        task = self._drives.get(payment_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._settle(payment_id))
            self._drives[payment_id] = task
            task.add_done_callback(lambda _: self._drives.pop(payment_id, None))
        return await asyncio.shield(task)

    async def _settle(self, payment_id: str) -> Payment:
        payment = await self.get(payment_id)
        if payment.state != PENDING:
            return payment
        request = QuoteRequest(payment.direction, payment.amount)

        async def record(attempts: list[Attempt]) -> None:
            await self.db.run(self._record, payment_id, attempts)
        try:
            outcome = await self.registry.pay(request, payment.name, provider=payment.preferred_provider or None,
                                              history=payment.attempts, record=record)
        except (ServiceUnavailable, FailedPrecondition) as exc:     # nothing was ever tried: nothing was charged
            return await self.db.run(self._close, payment_id, None, [], exc.message)
        if outcome.pending:
            log.warning("%s is pending: a provider did not answer and may have charged; it is asked again "
                        "with the same key when the payment is asked for again", payment.name)
            return await self.get(payment_id)
        if outcome.receipt is None:
            log.warning("%s failed: %s", payment.name, outcome.failure_reason)
        return await self.db.run(self._close, payment_id, outcome.receipt, outcome.attempts, outcome.failure_reason)

    def _record(self, payment_id: str, attempts: list[Attempt]) -> None:
        with self.db.transaction() as connection:
            connection.execute(update(payments).where(payments.c.id == payment_id, payments.c.state == PENDING)
                               .values(attempts=_attempts_json(attempts)))

    def _close(self, payment_id: str, receipt, attempts: list[Attempt], reason: str) -> Payment:
        with self.db.transaction() as connection:
            now = self._clock()
            values = dict(state=SUCCEEDED if receipt else FAILED, attempts=_attempts_json(attempts),
                          failure_reason=reason, completed_at=now)
            if receipt:
                values.update(provider=receipt.provider, fee=receipt.fee.amount, provider_reference=receipt.reference)
            connection.execute(update(payments).where(payments.c.id == payment_id, payments.c.state == PENDING)
                               .values(**values))
            return _row(connection.execute(select(payments).where(payments.c.id == payment_id)).one())

    async def get(self, payment_id: str) -> Payment:
        def read() -> Payment | None:
            with self.db.reading() as connection:
                row = connection.execute(select(payments).where(payments.c.id == payment_id)).first()
            return _row(row) if row else None
        payment = await self.db.run(read)
        if payment is None:
            raise NotFound(f"payment payments/{payment_id} does not exist", reason="PAYMENT_NOT_FOUND")
        return payment

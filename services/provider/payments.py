"""Payments through the registry, recorded: idempotent by request_id, one charge per payment.

    ExecutePayment(request_id) ──> payments row PENDING (with the key, one unit of work)
                               ──> registry.pay(key "payments/{id}") with failover
                               ──> SUCCEEDED (provider, fee, reference) or FAILED (why)

Every provider is asked with the payment's own key, so a provider that already charged it
returns its first receipt instead of charging again. A repeat of the request (the caller
timed out, or the service restarted half-way) finds the payment and drives it on from where it
is; concurrent repeats in this process share one drive. The use cases are units of work over
the PaymentRepository (repository.py); the payment and its states are payment.py's. No grpc.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from typing import Callable

from services.domain.clock import utcnow
from services.domain.errors import FailedPrecondition, NotFound, ServiceUnavailable
from services.runtime.db import Database
from services.runtime.unit_of_work import UnitOfWork, UnitsOfWork

from .adapters import QuoteRequest, Receipt
from .payment import PENDING, Attempt, Payment
from .registry import ProviderRegistry, Selection
from .repository import PaymentRepository
from .tables import idempotency_keys

log = logging.getLogger("diboas.payments")

SELECT, EXECUTE = "SelectProvider", "ExecutePayment"     # the operations its idempotency records name


class PaymentService:
    """`units`: the units of work to use instead of ones over `db` (the unit tests pass a fake,
    and None for `db`)."""

    def __init__(self, db: Database | None, registry: ProviderRegistry, clock: Callable[[], dt.datetime] = utcnow,
                 ids: Callable[[], str] = lambda: uuid.uuid4().hex, *,
                 units: UnitsOfWork[PaymentRepository] | None = None):
        self.registry, self._ids = registry, ids
        self.units = units or UnitsOfWork(db, PaymentRepository, idempotency=idempotency_keys, clock=clock)
        self._drives: dict[str, asyncio.Task] = {}

    # --- selection ------------------------------------------------------------------------------

    async def select(self, request_id: str, fingerprint: str, request: QuoteRequest, exclude: frozenset[str],
                     encode: Callable[[Selection], bytes]) -> bytes:
        """The optimal provider now; a repeated request_id returns the first answer."""
        first = await self.units.run(self.units.stored, SELECT, request_id, fingerprint)
        if first is not None:
            return first
        for name in exclude:
            self.registry.adapter(name)          # NOT_FOUND for a provider that does not exist
        selection = await self.registry.select(request, exclude)
        return await self.units.run(self.units.idempotent, SELECT, request_id, fingerprint, lambda unit: selection,
                                    encode)

    # --- payments -------------------------------------------------------------------------------

    async def execute(self, request_id: str, fingerprint: str, request: QuoteRequest, wallet: str, transaction: str,
                      provider: str) -> Payment:
        """Record the payment, then pay it with failover. With nothing recorded: FailedPrecondition
        NO_PROVIDER_ABLE when no provider's terms allow it, ServiceUnavailable NO_PROVIDER_AVAILABLE
        when none that could is healthy now."""
        first = await self.units.run(self.units.stored, EXECUTE, request_id, fingerprint)
        if first is None:
            if provider:
                self.registry.require_able(provider, request)
            if not provider or not self.registry.health[provider].healthy:
                await self.registry.select(request)          # raises before anything is recorded

            def open_payment(unit: UnitOfWork[PaymentRepository]) -> str:
                payment = Payment.open(self._ids(), request.direction, request.amount, wallet, transaction, provider,
                                       unit.now)
                unit.repo.add(payment)
                return payment.id
            first = await self.units.run(self.units.idempotent, EXECUTE, request_id, fingerprint, open_payment,
                                         lambda payment_id: payment_id.encode())
        return await self._drive(first.decode())

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
            await self.units.run(self._record, payment_id, attempts)
        try:
            outcome = await self.registry.pay(request, payment.name, provider=payment.preferred_provider or None,
                                              history=payment.attempts, record=record)
        except (ServiceUnavailable, FailedPrecondition) as exc:     # nothing was ever tried: nothing was charged
            return await self.units.run(self._close, payment_id, None, [], exc.message)
        if outcome.pending:
            log.warning("%s is pending: a provider did not answer and may have charged; it is asked again "
                        "with the same key when the payment is asked for again", payment.name)
            return await self.get(payment_id)
        if outcome.receipt is None:
            log.warning("%s failed: %s", payment.name, outcome.failure_reason)
        return await self.units.run(self._close, payment_id, outcome.receipt, outcome.attempts,
                                    outcome.failure_reason)

    def _record(self, payment_id: str, attempts: list[Attempt]) -> None:
        with self.units.begin() as unit:
            unit.repo.save_attempts(payment_id, attempts)

    def _close(self, payment_id: str, receipt: Receipt | None, attempts: list[Attempt], reason: str) -> Payment:
        """The payment as it ended; one that another drive closed first stays as that one left it."""
        with self.units.begin() as unit:
            payment = unit.repo.get(payment_id)
            if payment.state != PENDING:
                return payment
            closed = (payment.succeeded(receipt.provider, receipt.fee, receipt.reference, attempts, unit.now)
                      if receipt else payment.failed(attempts, reason, unit.now))
            unit.repo.close(closed)
            return unit.repo.get(payment_id)

    async def get(self, payment_id: str) -> Payment:
        def read() -> Payment | None:
            with self.units.reading() as unit:
                return unit.repo.get(payment_id)
        payment = await self.units.run(read)
        if payment is None:
            raise NotFound(f"payment payments/{payment_id} does not exist", reason="PAYMENT_NOT_FOUND")
        return payment

"""Reading and writing the payments table, inside a transaction the caller owns (a unit of
work): rows to domain Payments and back (the attempts as a JSON list, in order)."""
from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import Connection, insert, select, update

from services.domain.money import Money
from services.runtime.db import as_utc

from .payment import PENDING, Attempt, Failure, Payment
from .tables import payments

p = payments.c


def _attempts_json(attempts: list[Attempt]) -> str:
    return json.dumps([{"provider": a.provider, "start": a.started_at.isoformat(), "end": a.ended_at.isoformat(),
                        "failure": [a.failure.reason, a.failure.message] if a.failure else None} for a in attempts])


def _attempts(text: str) -> list[Attempt]:
    return [Attempt(a["provider"], dt.datetime.fromisoformat(a["start"]), dt.datetime.fromisoformat(a["end"]),
                    Failure(a["provider"], *a["failure"]) if a["failure"] else None) for a in json.loads(text)]


def _payment(row) -> Payment:
    return Payment(row.id, row.direction, Money(row.currency, row.amount), row.wallet, row.transaction,
                   row.preferred_provider, row.state, row.provider,
                   Money(row.currency, row.fee) if row.fee is not None else None, row.provider_reference,
                   _attempts(row.attempts), row.failure_reason, as_utc(row.created_at), as_utc(row.completed_at))


class PaymentRepository:
    def __init__(self, connection: Connection):
        self.c = connection

    def add(self, payment: Payment) -> None:
        self.c.execute(insert(payments).values(
            id=payment.id, direction=payment.direction, currency=payment.amount.currency,
            amount=payment.amount.amount, wallet=payment.wallet, transaction=payment.transaction,
            preferred_provider=payment.preferred_provider, state=payment.state, provider=payment.provider,
            fee=payment.fee.amount if payment.fee else None, provider_reference=payment.provider_reference,
            attempts=_attempts_json(payment.attempts), failure_reason=payment.failure_reason,
            created_at=payment.created_at, completed_at=payment.completed_at))

    def get(self, payment_id: str) -> Payment | None:
        row = self.c.execute(select(payments).where(p.id == payment_id)).first()
        return _payment(row) if row else None

    def save_attempts(self, payment_id: str, attempts: list[Attempt]) -> None:
        """The attempts so far, while the payment is PENDING (a closed one keeps its own)."""
        self.c.execute(update(payments).where(p.id == payment_id, p.state == PENDING)
                       .values(attempts=_attempts_json(attempts)))

    def close(self, payment: Payment) -> None:
        """Write how the payment ended, unless the stored one has already ended."""
        self.c.execute(update(payments).where(p.id == payment.id, p.state == PENDING).values(
            state=payment.state, provider=payment.provider, fee=payment.fee.amount if payment.fee else None,
            provider_reference=payment.provider_reference, attempts=_attempts_json(payment.attempts),
            failure_reason=payment.failure_reason, completed_at=payment.completed_at))

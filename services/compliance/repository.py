"""Reading and writing the compliance service's tables, inside a transaction the caller owns.
The repository is also the domain's History port, so the user's past is read in the very
transaction that writes the screening (after lock_user)."""
from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from sqlalchemy import Connection, func, insert, select, text, update

from services.domain.money import EXACT, Money
from services.runtime.db import as_utc, param
from services.runtime.prepared import Prepared

from .domain import HELD, REJECTED, Decision, Subject
from .screening import Review, Screening, findings_of
from .tables import screenings

s = screenings.c
# PostgreSQL: one transaction-scoped advisory lock per user (the first key names this service's
# locks), so one user's screenings and reviews are decided one at a time. SQLite's BEGIN
# IMMEDIATE already lets one writer at a time.
LOCK_USER = text("SELECT pg_advisory_xact_lock(hashtext('diboas.compliance'), hashtext(:user))")
# Every screening runs these: compiled once, run with their values (runtime/prepared.py).
AMOUNTS_SINCE = Prepared(select(s.amount).where(s.user_id == param(s.user_id), s.currency == param(s.currency),
                                                s.screened_at > param(s.screened_at), s.decision != REJECTED))
COUNT_SINCE = Prepared(select(func.count()).select_from(screenings).where(s.user_id == param(s.user_id),
                                                                          s.screened_at > param(s.screened_at)))
OF_TRANSACTION = Prepared(select(screenings).where(s.transaction == param(s.transaction)))
GET = Prepared(select(screenings).where(s.id == param(s.id)))
ADD = Prepared(insert(screenings))


def _screening(row) -> Screening:
    subject = Subject(row.transaction, row.type, row.user_id, Money(row.currency, row.amount), as_utc(row.screened_at),
                      row.source_owner, row.destination_owner, row.destination_address)
    decision = Decision(HELD if row.reviewed_at else row.decision, row.rule, row.explanation, row.reason,
                        findings_of(json.loads(row.findings)))
    review = (Review(row.review_decision, row.review_reason, row.reviewer, as_utc(row.reviewed_at))
              if row.reviewed_at else None)
    return Screening(row.id, subject, decision, review)


class ScreeningRepository:
    def __init__(self, connection: Connection):
        self.c = connection
        self._postgres = connection.dialect.name == "postgresql"

    def lock_user(self, user: str) -> None:
        """Until this transaction ends, no other one screens or reviews for `user`."""
        if self._postgres:
            self.c.execute(LOCK_USER, {"user": user})

    # the History port
    def total_since(self, user: str, currency: str, since: dt.datetime) -> Money:
        amounts = AMOUNTS_SINCE.run(self.c, {"screenings_user_id": user, "screenings_currency": currency,
                                             "screenings_screened_at": since}).scalars()
        total = Decimal(0)
        for amount in amounts:
            total = EXACT.add(total, amount)
        return Money(currency, total)

    def count_since(self, user: str, since: dt.datetime) -> int:
        return COUNT_SINCE.run(self.c, {"screenings_user_id": user, "screenings_screened_at": since}).scalar_one()

    # screenings
    def add(self, screening: Screening) -> None:
        subject, decision = screening.subject, screening.decision
        ADD.run(self.c, dict(
            id=screening.id, transaction=subject.transaction, type=subject.type, user_id=subject.user,
            currency=subject.amount.currency, amount=subject.amount.amount, source_owner=subject.source_owner,
            destination_owner=subject.destination_owner, destination_address=subject.destination_address,
            decision=decision.outcome, rule=decision.rule, explanation=decision.explanation, reason=decision.reason,
            findings=json.dumps([f.__dict__ for f in decision.findings]), screened_at=subject.at,
            review_decision="", review_reason="", reviewer="", reviewed_at=None))

    def save_review(self, screening: Screening) -> None:
        review = screening.review
        self.c.execute(update(screenings).where(s.id == screening.id).values(
            decision=review.decision, review_decision=review.decision, review_reason=review.reason,
            reviewer=review.reviewer, reviewed_at=review.at))

    def get(self, screening_id: str) -> Screening | None:
        row = GET.run(self.c, {"screenings_id": screening_id}).first()
        return _screening(row) if row else None

    def of_transaction(self, transaction: str) -> Screening | None:
        row = OF_TRANSACTION.run(self.c, {"screenings_transaction": transaction}).first()
        return _screening(row) if row else None

    def newest(self, decision: str | None, user: str | None, before_seq: int | None,
               limit: int) -> list[tuple[int, Screening]]:
        query = select(screenings).order_by(s.seq.desc()).limit(limit)
        if decision:
            query = query.where(s.decision == decision)
        if user:
            query = query.where(s.user_id == user)
        if before_seq is not None:
            query = query.where(s.seq < before_seq)
        return [(row.seq, _screening(row)) for row in self.c.execute(query)]

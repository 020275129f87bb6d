"""Hand-written fakes for the compliance domain's tests: a History over a list of earlier
screenings, and subjects with defaults."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from services.compliance.domain import REJECTED, Subject
from services.domain.money import Money

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


@dataclass
class Past:
    user: str
    at: dt.datetime
    amount: Money
    outcome: str = "APPROVED"


@dataclass
class FakeHistory:
    """The History port over `screenings`, as the service's storage is meant to answer it:
    `since` exclusive, totals without rejected ones, counts with them."""
    screenings: list[Past] = field(default_factory=list)

    def total_since(self, user: str, currency: str, since: dt.datetime) -> Money:
        total = Money.zero(currency)
        for past in self.screenings:
            if past.user == user and past.amount.currency == currency and past.at > since and past.outcome != REJECTED:
                total = total + past.amount
        return total

    def count_since(self, user: str, since: dt.datetime) -> int:
        return sum(1 for past in self.screenings if past.user == user and past.at > since)


def money(amount: str, currency: str = "USD") -> Money:
    return Money.parse(currency, amount)


def subject(amount: str = "100.00", currency: str = "USD", *, type: str = "DEPOSIT", user: str = "alice",
            at: dt.datetime = NOW, **parties) -> Subject:
    return Subject("transactions/t1", type, user, money(amount, currency), at, **parties)

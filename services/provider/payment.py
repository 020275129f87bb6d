"""A payment through a provider, and its states. No grpc, no protobuf, no SQL.

    PENDING ──> SUCCEEDED   (one provider executed it: its fee and reference)
       │
       └──────> FAILED      (no provider executed it, and none may have: nothing was charged)

The attempts are the providers asked, in order; a PENDING payment whose last attempt never
answered may have been charged, so it is asked again with the same key, never failed over.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from services.domain.errors import FailedPrecondition
from services.domain.money import Money

PENDING, SUCCEEDED, FAILED = "PENDING", "SUCCEEDED", "FAILED"


@dataclass(frozen=True)
class Failure:
    provider: str
    reason: str                              # TIMEOUT, ERROR, UNHEALTHY, UNSUPPORTED, CIRCUIT_OPEN
    message: str


@dataclass(frozen=True)
class Attempt:
    provider: str
    started_at: dt.datetime
    ended_at: dt.datetime
    failure: Failure | None = None          # None: this provider executed the payment

    @property
    def unknown(self) -> bool:
        """The provider may have charged: it never answered (or the attempt was cut short)."""
        return self.failure is not None and self.failure.reason == "TIMEOUT"


@dataclass(frozen=True)
class Payment:
    id: str
    direction: str                           # PAY_IN, PAY_OUT
    amount: Money
    wallet: str                              # "wallets/{id}"
    transaction: str                         # "transactions/{id}", or empty
    preferred_provider: str                  # asked for first, or empty
    state: str
    provider: str                            # the one that executed it; empty unless SUCCEEDED
    fee: Money | None
    provider_reference: str
    attempts: list[Attempt]
    failure_reason: str
    created_at: dt.datetime
    completed_at: dt.datetime | None

    @property
    def name(self) -> str:
        return f"payments/{self.id}"

    @classmethod
    def open(cls, payment_id: str, direction: str, amount: Money, wallet: str, transaction: str,
             preferred_provider: str, now: dt.datetime) -> Payment:
        """A new payment: PENDING, nothing tried yet."""
        return cls(payment_id, direction, amount, wallet, transaction, preferred_provider, PENDING, "", None, "", [],
                   "", now, None)

    def succeeded(self, provider: str, fee: Money, reference: str, attempts: list[Attempt],
                  now: dt.datetime) -> Payment:
        """Executed by `provider`, which charged `fee`."""
        return dataclasses.replace(self._closing(), state=SUCCEEDED, provider=provider, fee=fee,
                                   provider_reference=reference, attempts=attempts, completed_at=now)

    def failed(self, attempts: list[Attempt], reason: str, now: dt.datetime) -> Payment:
        """Executed by no provider."""
        return dataclasses.replace(self._closing(), state=FAILED, attempts=attempts, failure_reason=reason,
                                   completed_at=now)

    def _closing(self) -> Payment:
        if self.state != PENDING:
            raise FailedPrecondition(f"{self.name} is {self.state.lower()}; it cannot close again",
                                     reason=f"PAYMENT_{self.state}")
        return self

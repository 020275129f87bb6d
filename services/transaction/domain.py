"""Transactions and their state machine. No grpc, no SQL.

    PENDING ──> PROCESSING ──> COMPLETED
       │            │
       └────────────┴───────> FAILED

A SEND is created PENDING and queued; processing reserves the money on the source wallet (a
hold) and completes, or fails. DEPOSIT, WITHDRAW and BRIDGE use the same states (their sagas
come with the provider and blockchain services).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from services.domain.money import Money
from services.runtime.errors import FailedPrecondition

SEND, DEPOSIT, WITHDRAW, BRIDGE = "SEND", "DEPOSIT", "WITHDRAW", "BRIDGE"
PENDING, PROCESSING, COMPLETED, FAILED = "PENDING", "PROCESSING", "COMPLETED", "FAILED"
TERMINAL = frozenset({COMPLETED, FAILED})
_NEXT = {PENDING: {PROCESSING, COMPLETED, FAILED}, PROCESSING: {COMPLETED, FAILED}, COMPLETED: set(), FAILED: set()}


@dataclass
class Transaction:
    id: str
    type: str
    state: str
    source_wallet: str          # "wallets/{id}"
    destination_wallet: str
    amount: Money
    hold: str                   # "wallets/{id}/holds/{id}" once reserved
    failure_reason: str
    created_at: dt.datetime
    updated_at: dt.datetime
    completed_at: dt.datetime | None

    @property
    def name(self) -> str:
        return f"transactions/{self.id}"

    def move_to(self, state: str, now: dt.datetime, *, hold: str = "", reason: str = "") -> None:
        if state not in _NEXT[self.state]:
            raise FailedPrecondition(f"{self.name} is {self.state.lower()}; it cannot become {state.lower()}",
                                     reason=f"TRANSACTION_{self.state}")
        self.state, self.updated_at = state, now
        if hold:
            self.hold = hold
        if reason:
            self.failure_reason = reason
        if state in TERMINAL:
            self.completed_at = now

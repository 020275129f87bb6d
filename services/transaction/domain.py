"""Transactions and their state machine. No grpc, no SQL.

    PENDING ──> PROCESSING ──> COMPLETED
       │            │
       └────────────┴───────> FAILED

Every transaction is created PENDING and queued; a worker screens it (compliance) and then
runs the saga of its type (one module each in sagas/: send.py, deposit.py, withdraw.py,
bridge.py). Each step is idempotent by a key derived from the transaction id, so a retried step
(after a crash or a timeout) never does its work twice. A transaction held by screening stays
PENDING until an operator's review; one rejected goes to FAILED before any money moved.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from services.domain.errors import FailedPrecondition
from services.domain.money import Money

SEND, DEPOSIT, WITHDRAW, BRIDGE = "SEND", "DEPOSIT", "WITHDRAW", "BRIDGE"
PENDING, PROCESSING, COMPLETED, FAILED = "PENDING", "PROCESSING", "COMPLETED", "FAILED"
TERMINAL = frozenset({COMPLETED, FAILED})
APPROVED, REJECTED, HELD = "APPROVED", "REJECTED", "HELD"      # screening decisions
# Not screened: in flight when screening was introduced (its saga may have held or paid already,
# and a refusal now could not undo that), so it finishes unscreened (transaction migration 0009).
EXEMPT = "EXEMPT"
_NEXT = {PENDING: {PROCESSING, COMPLETED, FAILED}, PROCESSING: {COMPLETED, FAILED}, COMPLETED: set(), FAILED: set()}


@dataclass(frozen=True)
class Parked:
    """The saga was given up on retrying (every attempt ended without knowing whether its step
    happened): it waits for an operator's replay, and whatever it holds stays held."""
    reason: str                 # MAX_ATTEMPTS or MAX_AGE
    last_error: str
    attempts: int
    parked_at: dt.datetime
    dead_letter: int            # its id among the dead letters, for a replay


@dataclass(frozen=True)
class Screened:
    """What compliance screening decided about the transaction, as its user may see it."""
    screening: str              # "screenings/{id}"
    decision: str               # APPROVED, REJECTED, HELD, or EXEMPT (no screening)
    reason: str                 # for the user: empty when approved; never a rule's internals


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
    provider: str = ""                  # "providers/{id}": asked for, then the one that executed
    provider_payment: str = ""          # "payments/{id}"
    source_chain: str = ""              # "chains/{id}"
    target_chain: str = ""
    destination_address: str = ""
    cross_chain_transfer: str = ""      # "crossChainTransfers/{id}"
    chain_transactions: list[tuple[str, str, int]] = field(default_factory=list)   # (chain, hash, block)
    parked: Parked | None = None        # its saga, while parked
    source_owner: str = ""              # owners of the wallets, as the wallet service said at creation
    destination_owner: str = ""
    compliance: Screened | None = None  # once screened

    @property
    def name(self) -> str:
        return f"transactions/{self.id}"

    @property
    def initiator(self) -> str:
        """The user whose transaction it is: the owner of the wallet it takes money from, or for a
        DEPOSIT the owner of the wallet it brings money to."""
        return self.destination_owner if self.type == DEPOSIT else self.source_owner

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

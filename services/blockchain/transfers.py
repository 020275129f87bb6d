"""Cross-chain transfers and their states. No grpc, no SQL.

    PENDING ──> IN_PROGRESS ──> COMPLETED
                     │
                     └── a step failed: compensating (still IN_PROGRESS) ──> COMPENSATED
                                                                       └──> FAILED (needs an operator)

IN_PROGRESS carries the step running now (or the one that failed). `compensating` is set when
a step has failed for good and the done steps are being undone; `outcome_unknown` when the
failed step may still have taken effect (it timed out), so it is undone too.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from services.domain.money import Money

from .adapters import BRIDGE, SOURCE, TARGET, ChainTx

PENDING, IN_PROGRESS, COMPLETED, COMPENSATED, FAILED = "PENDING", "IN_PROGRESS", "COMPLETED", "COMPENSATED", "FAILED"
TERMINAL = frozenset({COMPLETED, COMPENSATED, FAILED})
NO_STEP = "UNSPECIFIED"


@dataclass(frozen=True)
class Compensation:
    step: str                 # the step undone: SOURCE or BRIDGE
    transaction: ChainTx      # the undo on the chain (refund, cancelled bridge message)
    reason: str               # the later step's failure
    created_at: dt.datetime


@dataclass
class Transfer:
    id: str
    source_chain: str          # chain names, e.g. "ethereum"
    target_chain: str
    amount: Money
    destination_address: str
    transaction: str           # "transactions/{id}" or ""
    state: str
    current_step: str          # SOURCE, BRIDGE, TARGET or UNSPECIFIED
    created_at: dt.datetime
    updated_at: dt.datetime
    completed_at: dt.datetime | None = None
    source_tx: ChainTx | None = None
    bridge_tx: ChainTx | None = None
    target_tx: ChainTx | None = None
    compensations: list[Compensation] = field(default_factory=list)
    failure_reason: str = ""
    compensating: bool = False
    outcome_unknown: bool = False
    last_error: str = ""       # the latest problem while IN_PROGRESS (for operators; not a failure)
    attempts: int = 0          # drives so far

    @property
    def name(self) -> str:
        return f"crossChainTransfers/{self.id}"

    def key(self, step: str) -> str:
        """The idempotency key of a step on its chain (its compensation uses the same key)."""
        return f"{self.id}:{step.lower()}"

    def chain_of(self, step: str) -> str:
        return self.target_chain if step == TARGET else self.source_chain

    def done(self, step: str) -> ChainTx | None:
        return {SOURCE: self.source_tx, BRIDGE: self.bridge_tx, TARGET: self.target_tx}[step]

    def record(self, step: str, tx: ChainTx, now: dt.datetime) -> None:
        setattr(self, {SOURCE: "source_tx", BRIDGE: "bridge_tx", TARGET: "target_tx"}[step], tx)
        self.last_error, self.updated_at = "", now

    def start(self, step: str, now: dt.datetime) -> None:
        self.state, self.current_step, self.updated_at = IN_PROGRESS, step, now

    def fail_step(self, reason: str, outcome_unknown: bool, now: dt.datetime) -> None:
        """The current step failed for good: undo what was done (and the step itself when it may
        have taken effect)."""
        self.compensating, self.outcome_unknown, self.failure_reason = True, outcome_unknown, reason
        self.updated_at = now

    def to_undo(self) -> list[str]:
        """The steps to compensate, in order: the latest first."""
        return [step for step in (BRIDGE, SOURCE)
                if self.done(step) is not None or (self.outcome_unknown and self.current_step == step)]

    def compensated(self, step: str) -> bool:
        return any(c.step == step for c in self.compensations)

    def finish(self, state: str, now: dt.datetime, reason: str = "") -> None:
        assert state in TERMINAL and self.state not in TERMINAL
        self.state, self.updated_at, self.completed_at = state, now, now
        if reason:
            self.failure_reason = reason
        if state == COMPLETED:
            self.last_error = ""

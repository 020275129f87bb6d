"""Cross-chain transfers: their steps, their states and the rules of the saga that moves them.
No grpc, no SQL, no I/O: the use cases (saga.py) call the chains and store what is decided here.

A transfer is three steps, each one call on a chain, each idempotent by its key "{id}:{step}":

    SOURCE  lock the amount on the source chain
    BRIDGE  relay the bridge message on the source chain
    TARGET  mint the amount to the destination on the target chain (the pivot)

    PENDING ──> IN_PROGRESS ──> COMPLETED
                     │
                     └── a step failed: compensating (still IN_PROGRESS) ──> COMPENSATED
                                                                       └──> FAILED (needs an operator)

IN_PROGRESS carries the step running now (or the one that failed). A step that failed for good
sets `compensating`: the done steps are undone, latest first (cancel the bridge message, refund
the lock). A step that timed out may have happened: it is asked once more with the same key
first, and when it stays unanswered it counts as maybe done (`outcome_unknown`), so it is undone
too. The mint is never undone: when it may have happened the transfer waits, IN_PROGRESS, and
the mint is asked again later with the same key.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from services.domain.money import Money

SOURCE, BRIDGE, TARGET = "SOURCE", "BRIDGE", "TARGET"
STEPS = (SOURCE, BRIDGE, TARGET)

PENDING, IN_PROGRESS, COMPLETED, COMPENSATED, FAILED = "PENDING", "IN_PROGRESS", "COMPLETED", "COMPENSATED", "FAILED"
TERMINAL = frozenset({COMPLETED, COMPENSATED, FAILED})
NO_STEP = "UNSPECIFIED"


@dataclass(frozen=True)
class ChainTx:
    """A transaction on a chain (diboas.common.v1.ChainTransactionRef without the transport)."""

    chain: str          # the chain's name, e.g. "ethereum"
    hash: str           # chain-specific format; the simulators use "0x" + 64 hex digits
    block: int          # block that includes it (or will, within one block time); 0 if unknown


@dataclass(frozen=True)
class StepOutcome:
    """What one call of a step on its chain came to: a transaction, or why not."""

    tx: ChainTx | None = None
    message: str = ""
    rejected: bool = False        # the chain refused for good: nothing was done under the key
    timed_out: bool = False       # no answer: it may have taken effect
    unknown: bool = False         # no transaction, and the step may have taken effect anyway

    @property
    def answered(self) -> bool:
        """A transaction or a refusal: the chain said what happened under the key."""
        return self.tx is not None or self.rejected

    def asked_again(self, second: StepOutcome) -> StepOutcome:
        """This outcome (a timeout) after the step was asked once more with the same key."""
        if second.answered:
            return second
        return StepOutcome(message=f"{self.message}, and again when asked once more ({second.message})", unknown=True)


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

    def next_step(self) -> str | None:
        """The first step not done yet; None once all are."""
        return next((step for step in STEPS if self.done(step) is None), None)

    def interrupted_step(self) -> str | None:
        """The step a former drive started and did not see through (it crashed, or got no answer):
        it may have taken effect, so failing now without an answer does not prove it did not."""
        return self.current_step if self.state == IN_PROGRESS and not self.compensating else None

    def start(self, step: str, now: dt.datetime) -> bool:
        """Mark `step` as the one running; False when it already was (nothing changed)."""
        if (self.state, self.current_step) == (IN_PROGRESS, step):
            return False
        self.state, self.current_step, self.updated_at = IN_PROGRESS, step, now
        return True

    def record(self, step: str, tx: ChainTx, now: dt.datetime) -> None:
        setattr(self, {SOURCE: "source_tx", BRIDGE: "bridge_tx", TARGET: "target_tx"}[step], tx)
        self.last_error, self.updated_at = "", now

    def step_failed(self, step: str, outcome: StepOutcome, now: dt.datetime) -> bool:
        """`step` got no transaction. True: compensate now. False: the mint may have happened, so
        nothing is undone and the transfer waits to ask again."""
        if step == TARGET and outcome.unknown:
            self.last_error = (f"the mint on chains/{self.target_chain} is unconfirmed ({outcome.message}); it may "
                               "have happened, so nothing is refunded: it is asked again later with the same key")
            self.updated_at = now
            return False
        self.compensating, self.outcome_unknown = True, outcome.unknown
        self.failure_reason = f"{step} step on chains/{self.chain_of(step)} failed: {outcome.message}"
        self.updated_at = now
        return True

    def to_undo(self) -> list[str]:
        """The steps still to compensate, in order: the latest first."""
        return [step for step in (BRIDGE, SOURCE)
                if (self.done(step) is not None or (self.outcome_unknown and self.current_step == step))
                and not self.compensated(step)]

    def compensated(self, step: str) -> bool:
        return any(c.step == step for c in self.compensations)

    def undone(self, step: str, tx: ChainTx | None, now: dt.datetime) -> None:
        """The compensation of `step` went through (`tx` None: nothing had been done under its key)."""
        if tx is not None:
            self.compensations.append(Compensation(step, tx, self.failure_reason, now))
        self.updated_at = now

    def undo_failed(self, step: str, tries: int, error: str, now: dt.datetime) -> None:
        """Compensating `step` failed `tries` times: FAILED, for an operator to finish."""
        what = "cancelling the bridge message" if step == BRIDGE else "refunding the lock"
        self.finish(FAILED, now,
                    f"{self.failure_reason}; then {what} {self.key(step)} on chains/{self.source_chain} failed "
                    f"{tries} times ({error}): {self.amount} may still be locked on chains/{self.source_chain}, "
                    "an operator must finish the compensation")

    def finish(self, state: str, now: dt.datetime, reason: str = "") -> None:
        if state not in TERMINAL or self.state in TERMINAL:
            raise ValueError(f"{self.name} cannot go from {self.state} to {state}")
        self.state, self.updated_at, self.completed_at = state, now, now
        if reason:
            self.failure_reason = reason
        if state == COMPLETED:
            self.last_error = ""

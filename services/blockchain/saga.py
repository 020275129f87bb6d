"""The cross-chain transfer saga: takes one transfer through its steps on the chains, and
compensates when a step fails, storing every change as soon as it is made. The rules are the
transfer's (transfers.py); this calls the chains and the store (ports, below). No grpc, no SQL.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Awaitable, Callable, Protocol, TypeVar

from services.domain.clock import utcnow
from services.domain.errors import ServiceUnavailable

from .adapters import ChainAdapter, ChainError, ChainRejected, ChainTimeout
from .transfers import BRIDGE, COMPENSATED, COMPLETED, SOURCE, ChainTx, StepOutcome, Transfer

log = logging.getLogger("diboas.blockchain")
T = TypeVar("T")


class ChainCalls(Protocol):
    """The chains, by name (registry.py: ChainRegistry)."""

    async def call(self, name: str, operation: Callable[[ChainAdapter], Awaitable[T]], timeout: float | None = None,
                   guarded: bool = True) -> T:
        """`operation` on chain `name` within `timeout` (TimeoutError), through the chain's breaker
        when `guarded` (ServiceUnavailable at once while it is open)."""


class TransferStore(Protocol):
    async def save(self, t: Transfer) -> None:
        """Store the transfer's changes; once this returns, a crash resumes from them."""


def _step_call(t: Transfer, step: str) -> Callable[[ChainAdapter], Awaitable[ChainTx]]:
    key = t.key(step)
    if step == SOURCE:
        return lambda chain: chain.lock(t.amount, key)
    if step == BRIDGE:
        return lambda chain: chain.relay(t.amount, key, t.target_chain)
    return lambda chain: chain.mint(t.amount, key, t.destination_address)


def _undo_call(t: Transfer, step: str) -> Callable[[ChainAdapter], Awaitable[ChainTx | None]]:
    key = t.key(step)
    if step == BRIDGE:
        return lambda chain: chain.revert_relay(key)
    return lambda chain: chain.unlock(key)


# An undo is tried COMPENSATION_ATTEMPTS times, pausing from COMPENSATION_BACKOFF seconds,
# doubling, up to COMPENSATION_MAX_PAUSE: about 9 s in all. A refund left undone needs a
# person, so it outlasts a burst of chain errors: at a 20 % error rate, 5 tries within 0.75 s
# all failed in an e2e run; 10 all fail about once in 10 million.
COMPENSATION_ATTEMPTS = 10
COMPENSATION_BACKOFF = 0.05
COMPENSATION_MAX_PAUSE = 2.0


class TransferSaga:
    def __init__(self, chains: ChainCalls, store: TransferStore, *, step_timeout: float = 1.0,
                 compensation_attempts: int = COMPENSATION_ATTEMPTS, compensation_backoff: float = COMPENSATION_BACKOFF,
                 clock: Callable[[], dt.datetime] = utcnow, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self._chains, self._store = chains, store
        self.step_timeout = step_timeout
        self.compensation_attempts, self.compensation_backoff = compensation_attempts, compensation_backoff
        self._clock, self._sleep = clock, sleep

    async def advance(self, t: Transfer) -> Transfer:
        """Take a transfer that is not terminal as far as it can go now: terminal, or IN_PROGRESS
        waiting for a target chain that did not answer. The caller makes sure no other drive of
        the same transfer runs meanwhile."""
        interrupted = t.interrupted_step()
        t.attempts += 1
        if not t.compensating:
            while (step := t.next_step()) is not None:
                if t.start(step, self._clock()):
                    await self._store.save(t)
                outcome = await self._perform(t, step, maybe_done=interrupted == step)
                if outcome.tx is not None:
                    t.record(step, outcome.tx, self._clock())
                    await self._store.save(t)
                    continue
                compensate = t.step_failed(step, outcome, self._clock())
                await self._store.save(t)
                if not compensate:
                    log.warning("%s: %s", t.name, t.last_error, extra={"transfer": t.id})
                    return t
                log.info("%s: %s; compensating", t.name, t.failure_reason, extra={"transfer": t.id})
                break
            else:
                t.finish(COMPLETED, self._clock())
                await self._store.save(t)
                return t
        return await self._compensate(t)

    async def _attempt(self, t: Transfer, step: str) -> StepOutcome:
        chain = t.chain_of(step)
        try:
            return StepOutcome(tx=await self._chains.call(chain, _step_call(t, step), self.step_timeout))
        except ChainRejected as exc:
            return StepOutcome(message=str(exc), rejected=True)
        except (ChainTimeout, TimeoutError) as exc:
            return StepOutcome(message=str(exc) or f"chains/{chain} gave no answer within {self.step_timeout:g}s",
                               timed_out=True)
        except ChainError as exc:
            return StepOutcome(message=str(exc) or f"chains/{chain} failed")
        except ServiceUnavailable as exc:                  # the chain's breaker is open: nothing was sent
            return StepOutcome(message=exc.message)

    async def _perform(self, t: Transfer, step: str, maybe_done: bool) -> StepOutcome:
        """One step: a transaction, or why not (and whether it may have happened anyway). A
        timeout is ambiguous: the step is asked once more with the same key before giving up."""
        first = await self._attempt(t, step)
        if first.answered:
            return first
        if first.timed_out:
            return first.asked_again(await self._attempt(t, step))
        return StepOutcome(message=first.message, unknown=maybe_done)

    async def _compensate(self, t: Transfer) -> Transfer:
        """Undo the done steps, latest first, each tried `compensation_attempts` times with a
        doubling pause (at most COMPENSATION_MAX_PAUSE), not through the breaker (a refund is tried
        even while the chain looks down); COMPENSATED, or FAILED for an operator."""
        for step in t.to_undo():
            undo, error = _undo_call(t, step), ""
            for attempt in range(self.compensation_attempts):
                if attempt:
                    await self._sleep(min(self.compensation_backoff * 2 ** (attempt - 1), COMPENSATION_MAX_PAUSE))
                try:
                    tx = await self._chains.call(t.source_chain, undo, self.step_timeout, guarded=False)
                except (ChainError, TimeoutError) as exc:
                    error = str(exc) or f"chains/{t.source_chain} gave no answer within {self.step_timeout:g}s"
                    continue
                error = ""
                break
            if error:
                t.undo_failed(step, self.compensation_attempts, error, self._clock())
                await self._store.save(t)
                log.error("%s: %s", t.name, t.failure_reason, extra={"transfer": t.id, "alert": "compensation_failed"})
                return t
            t.undone(step, tx, self._clock())
            if tx is not None:
                await self._store.save(t)
        t.finish(COMPENSATED, self._clock())
        await self._store.save(t)
        return t

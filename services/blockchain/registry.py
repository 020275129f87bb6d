"""The chain registry: the chains by name, the health of each (checks on an interval, and the
outcome of every call), a circuit breaker per chain, and the consolidated status of a
transaction hash over every chain at once. No grpc.

  call      one call to a chain under a timeout, through its breaker; the outcome counts
            toward its health (a revert is the chain working)
  status    every chain (or the ones asked) at once, each under its own timeout; a chain that
            fails or hangs is reported beside the others and makes the answer partial, never an error
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, TypeVar

from services.domain.clock import utcnow
from services.domain.errors import InvalidArgument, NotFound, ServiceUnavailable
from services.runtime.breaker import CLOSED, OPEN, AsyncCircuitBreaker
from services.runtime.loops import repeat
from services.runtime.outcomes import CallOutcomes

from .adapters import NOT_FOUND, ChainAdapter, ChainError, ChainRejected, TxStatus

log = logging.getLogger("diboas.blockchain")
T = TypeVar("T")

# Chain health (ChainRegistry.state) and consolidated statuses beyond a chain's own (adapters.py).
UNCHECKED, HEALTHY, DEGRADED, UNAVAILABLE = "UNSPECIFIED", "HEALTHY", "DEGRADED", "UNAVAILABLE"
UNKNOWN = "UNKNOWN"


@dataclass
class ChainHealth(CallOutcomes):
    checked: bool = False                    # a check has run
    answered: bool = False                   # the last check got an answer
    latest_block: int = 0                    # as of the last answered check
    last_check: dt.datetime | None = None
    last_check_latency: float = 0.0


@dataclass(frozen=True)
class ChainAnswer:
    """What one chain said about a hash (answered=False: it failed or timed out; see error)."""

    chain: str
    answered: bool
    error: str
    status: TxStatus
    required_confirmations: int


@dataclass(frozen=True)
class StatusReport:
    transaction_hash: str
    status: str                   # a chain's status (adapters.py) when found; else NOT_FOUND or UNKNOWN
    chain: str                    # the chain that holds it; "" when none
    confirmations: int
    required_confirmations: int
    finalized: bool
    answers: list[ChainAnswer]    # every chain asked, in the order asked
    partial: bool                 # some chain could not answer


def _failure(exc: BaseException) -> bool:
    """What counts against a chain's breaker: it failed or did not answer (a revert is an answer)."""
    return isinstance(exc, (ChainError, TimeoutError)) and not isinstance(exc, ChainRejected)


class ChainRegistry:
    def __init__(self, adapters: Iterable[ChainAdapter], *, call_timeout: float = 1.0, slow_seconds: float = 0.5,
                 breaker_fail_max: int = 5, breaker_reset_seconds: float = 10.0):
        self.adapters: dict[str, ChainAdapter] = {a.name: a for a in adapters}
        self.call_timeout, self.slow_seconds = call_timeout, slow_seconds
        self.health = {name: ChainHealth() for name in self.adapters}
        self.breakers = {name: AsyncCircuitBreaker(f"chain {name}", breaker_fail_max, breaker_reset_seconds,
                                                   is_failure=_failure) for name in self.adapters}

    @property
    def names(self) -> list[str]:
        return sorted(self.adapters)

    def adapter(self, name: str) -> ChainAdapter:
        try:
            return self.adapters[name]
        except KeyError:
            raise NotFound(f"chain chains/{name} does not exist (known: {', '.join(self.names)})",
                           reason="CHAIN_NOT_FOUND") from None

    def state(self, name: str) -> str:
        """HEALTHY, DEGRADED (slow, or some calls fail), UNAVAILABLE (no answer, breaker open) or UNSPECIFIED."""
        health, breaker = self.health[name], self.breakers[name]
        if not health.checked:
            return UNCHECKED
        if not health.answered or breaker.state == OPEN:
            return UNAVAILABLE
        if health.last_check_latency > self.slow_seconds or health.success_rate < 0.9 or breaker.state != CLOSED:
            return DEGRADED
        return HEALTHY

    async def call(self, name: str, operation: Callable[[ChainAdapter], Awaitable[T]], timeout: float | None = None,
                   guarded: bool = True) -> T:
        """One call to a chain under a timeout (TimeoutError), through its breaker when `guarded`
        (ServiceUnavailable at once while it is open); the outcome counts toward its health."""
        adapter, health = self.adapter(name), self.health[name]
        timeout = timeout or self.call_timeout
        started = time.monotonic()
        try:
            if guarded:
                async with self.breakers[name].guard():
                    result = await asyncio.wait_for(operation(adapter), timeout)
            else:
                result = await asyncio.wait_for(operation(adapter), timeout)
        except ChainRejected:
            health.record(True, time.monotonic() - started)       # a revert is the chain working
            raise
        except (ChainError, TimeoutError) as exc:
            health.record(False, message=str(exc) or f"no answer within {timeout:g}s")
            raise
        health.record(True, time.monotonic() - started)
        return result

    # --- health ---------------------------------------------------------------------------------

    async def check(self, name: str, timeout: float | None = None) -> ChainHealth:
        """Ask one chain for its latest block now and record the answer."""
        adapter, health = self.adapter(name), self.health[name]
        timeout = timeout or self.call_timeout
        started = time.monotonic()
        try:
            block = await asyncio.wait_for(adapter.latest_block(), timeout)
        except (ChainError, TimeoutError) as exc:
            health.answered, health.message = False, str(exc) or f"no answer within {timeout:g}s"
            health.consecutive_failures += 1
            log.warning("chain %s is unavailable: %s", name, health.message, extra={"chain": name})
        else:
            health.answered, health.latest_block, health.message = True, block, ""
            health.consecutive_failures = 0
        health.checked, health.last_check = True, utcnow()
        health.last_check_latency = time.monotonic() - started
        return health

    async def check_unchecked(self, names: Iterable[str] | None = None) -> None:
        """Check, at once, the chains that were never checked."""
        await asyncio.gather(*(self.check(n) for n in (self.adapters if names is None else names)
                               if not self.health[n].checked))

    async def watch(self, stop: asyncio.Event, interval: float = 5.0) -> None:
        """Check every chain every `interval` seconds until `stop` is set."""
        await repeat(stop, interval, lambda: asyncio.gather(*(self.check(name) for name in self.adapters)),
                     failure="could not check the chains", logger=log)

    # --- consolidated status --------------------------------------------------------------------

    async def _ask(self, name: str, tx_hash: str, timeout: float) -> ChainAnswer:
        required = self.adapters[name].required_confirmations
        try:
            status = await self.call(name, lambda a: a.status(tx_hash), timeout)
        except TimeoutError:
            error = f"chains/{name} gave no answer within {timeout:g}s"
        except ChainError as exc:
            error = str(exc) or f"chains/{name} failed"
        except ServiceUnavailable as exc:                 # its breaker is open
            error = exc.message
        else:
            return ChainAnswer(name, True, "", status, required)
        return ChainAnswer(name, False, error, TxStatus(False, NOT_FOUND, 0, 0), required)

    async def transaction_status(self, tx_hash: str, chains: Iterable[str] = (), timeout: float | None = None) -> StatusReport:
        """Ask every chain (or `chains`) about `tx_hash` at once and consolidate: found somewhere ->
        that chain's status; else NOT_FOUND when some chain answered, UNKNOWN when none could."""
        if not tx_hash:
            raise InvalidArgument.field("transaction_hash", "is required")
        if len(tx_hash) > 128:
            raise InvalidArgument.field("transaction_hash", f"is {len(tx_hash)} characters long; at most 128")
        names = list(dict.fromkeys(chains)) or self.names
        for name in names:
            self.adapter(name)
        answers = await asyncio.gather(*(self._ask(n, tx_hash, timeout or self.call_timeout) for n in names))
        partial = not all(a.answered for a in answers)
        found = next((a for a in answers if a.status.found), None)
        if found is None:
            status = NOT_FOUND if any(a.answered for a in answers) else UNKNOWN
            return StatusReport(tx_hash, status, "", 0, 0, False, answers, partial)
        confirmations = found.status.confirmations
        return StatusReport(tx_hash, found.status.status, found.chain, confirmations, found.required_confirmations,
                            found.status.block_number > 0 and confirmations >= found.required_confirmations,
                            answers, partial)

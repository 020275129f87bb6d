"""The provider registry of the spec: health, concurrent quotes, selection of the optimal
healthy provider, and payment with failover. No grpc.

  quotes     every healthy provider at once, each under its own timeout; a slow or failing one
             is reported beside the others, never fails the request
  select     lowest total cost to the user, then success rate, then latency; with the reason.
             A payment that no provider's terms allow (currency, direction, minimum, maximum),
             whatever their health, is refused as such (FAILED_PRECONDITION NO_PROVIDER_ABLE),
             not as a provider being away
  pay        on the selected provider; when it fails for sure it is marked unhealthy and the next
             best one is tried with the same idempotency key (no provider charges twice for one
             payment). When a provider does not answer, even when asked again, the payment may
             have happened there: no failover then, the payment waits (PENDING) and that provider
             is asked again first next time. A circuit breaker per provider stops calls to one
             that keeps failing
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from services.domain.clock import utcnow
from services.domain.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceUnavailable
from services.runtime.breaker import AsyncCircuitBreaker
from services.runtime.loops import repeat
from services.runtime.outcomes import CallOutcomes

from .adapters import ProviderAdapter, ProviderError, ProviderTimeout, Quote, QuoteRequest, Receipt
from .payment import Attempt, Failure

log = logging.getLogger("diboas.providers")


@dataclass
class Health(CallOutcomes):
    healthy: bool = True
    last_check: dt.datetime | None = None
    last_check_latency: float = 0.0


@dataclass(frozen=True)
class Selection:
    quote: Quote
    candidates: list[Quote]
    failures: list[Failure]
    explanation: str


@dataclass(frozen=True)
class PaymentOutcome:
    receipt: Receipt | None                  # None: not paid (see pending)
    attempts: list[Attempt]                  # in order
    pending: bool = False                    # not paid yet, and it may have been: ask again later

    @property
    def failure_reason(self) -> str:
        if self.receipt is not None:
            return ""
        return "payment failed on every provider: " + "; ".join(
            f"{a.provider}: {a.failure.message}" for a in self.attempts if a.failure)


IN_FLIGHT = "asked; no answer yet"


def _failure(name: str, exc: BaseException) -> Failure:
    if isinstance(exc, (TimeoutError, ProviderTimeout)):
        return Failure(name, "TIMEOUT", f"{name} did not answer in time")
    if isinstance(exc, ServiceUnavailable):          # its breaker is open
        return Failure(name, "CIRCUIT_OPEN", exc.message)
    return Failure(name, "ERROR", str(exc) or f"{name} failed")


@dataclass
class ProviderRegistry:
    adapters: dict[str, ProviderAdapter]
    quote_timeout: float = 2.0
    breaker_fail_max: int = 3
    breaker_reset_seconds: float = 15.0
    health: dict[str, Health] = field(default_factory=dict)
    breakers: dict[str, AsyncCircuitBreaker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.adapters:
            self.health.setdefault(name, Health())
            self.breakers.setdefault(name, AsyncCircuitBreaker(
                f"provider {name}", self.breaker_fail_max, self.breaker_reset_seconds,
                is_failure=lambda exc: isinstance(exc, (ProviderError, TimeoutError))))

    def adapter(self, name: str) -> ProviderAdapter:
        try:
            return self.adapters[name]
        except KeyError:
            raise NotFound(f"provider providers/{name} does not exist (known: {', '.join(sorted(self.adapters))})",
                           reason="PROVIDER_NOT_FOUND") from None

    def require_able(self, name: str, request: QuoteRequest) -> None:
        """NOT_FOUND for an unknown provider, INVALID_ARGUMENT for one that cannot take the request."""
        refusal = self.adapter(name).limits.refuses(request)
        if refusal:
            raise InvalidArgument.field("provider", f"providers/{name} {refusal}")

    def require_some_able(self, request: QuoteRequest) -> None:
        """FAILED_PRECONDITION NO_PROVIDER_ABLE, naming each provider's reason, when no provider's
        terms allow the request: asking again later would not help."""
        refusals = {name: adapter.limits.refuses(request) for name, adapter in self.adapters.items()}
        if self.adapters and all(refusals.values()):
            raise FailedPrecondition(
                f"no provider takes {request.direction} of {request.amount}: "
                + "; ".join(f"{name} {why}" for name, why in refusals.items()),
                reason="NO_PROVIDER_ABLE", metadata={"direction": request.direction, "amount": request.amount.text,
                                                     "currency": request.amount.currency})

    # --- health ---------------------------------------------------------------------------------

    async def check(self, name: str, timeout: float | None = None) -> Health:
        """Ask one provider now and record the answer. The check goes through the provider's
        breaker like a payment: failing checks open it, and once it is open the check after the
        reset timeout is its trial call (a passing check closes it again)."""
        adapter, health = self.adapter(name), self.health[name]
        started = time.monotonic()
        try:
            async with self.breakers[name].guard():
                await asyncio.wait_for(adapter.check(), timeout or self.quote_timeout)
        except (ProviderError, TimeoutError, ServiceUnavailable) as exc:
            ok, message = False, getattr(exc, "message", None) or str(exc) or "no answer in time"
        else:
            ok, message = True, ""
        health.last_check, health.last_check_latency = utcnow(), time.monotonic() - started
        health.healthy, health.message = ok, message
        if ok:
            health.consecutive_failures = 0
        else:
            health.consecutive_failures += 1
            log.warning("provider %s is unhealthy: %s", name, message, extra={"provider": name})
        return health

    async def watch(self, stop: asyncio.Event, interval: float = 5.0) -> None:
        """Check every provider every `interval` seconds until `stop` is set."""
        await repeat(stop, interval, lambda: asyncio.gather(*(self.check(name) for name in self.adapters)),
                     failure="could not check the providers", logger=log)

    # --- quotes and selection -------------------------------------------------------------------

    async def _quote(self, name: str, request: QuoteRequest, timeout: float) -> Quote | Failure:
        adapter, health = self.adapters[name], self.health[name]
        refusal = adapter.limits.refuses(request)
        if refusal:
            return Failure(name, "UNSUPPORTED", f"{name} {refusal}")
        if not health.healthy:
            return Failure(name, "UNHEALTHY", f"{name} is unhealthy: {health.message}")
        started = time.monotonic()
        try:
            quote = await asyncio.wait_for(adapter.quote(request), timeout)
        except TimeoutError:
            health.record(False, timeout, "no quote in time")
            return Failure(name, "TIMEOUT", f"{name} gave no quote within {timeout:g}s")
        except ProviderError as exc:
            health.record(False, time.monotonic() - started, str(exc))
            return Failure(name, "ERROR", str(exc))
        health.record(True, time.monotonic() - started)
        return quote

    async def quotes(self, request: QuoteRequest, timeout: float | None = None) -> tuple[list[Quote], list[Failure]]:
        results = await asyncio.gather(*(self._quote(n, request, timeout or self.quote_timeout) for n in self.adapters))
        return ([r for r in results if isinstance(r, Quote)], [r for r in results if isinstance(r, Failure)])

    def _rank(self, quote: Quote):
        health = self.health[quote.provider]
        return (quote.total_cost.amount, -health.success_rate, health.latency, quote.provider)

    async def select(self, request: QuoteRequest, exclude: frozenset[str] = frozenset(),
                     timeout: float | None = None) -> Selection:
        self.require_some_able(request)
        quotes, failures = await self.quotes(request, timeout)
        candidates = sorted((q for q in quotes if q.provider not in exclude), key=self._rank)
        if not candidates:
            why = "; ".join(f.message for f in failures) or "no provider is configured"
            raise ServiceUnavailable(f"no healthy provider can take {request.direction} of {request.amount}: {why}",
                                     reason="NO_PROVIDER_AVAILABLE")
        best = candidates[0]
        health = self.health[best.provider]
        explanation = (f"{best.provider}: lowest total cost {best.total_cost} (fee {best.fee}, spread "
                       f"{best.spread * 100:.2f}%), success rate {health.success_rate:.0%}, latency "
                       f"{health.latency * 1000:.0f} ms")
        if len(candidates) > 1:
            explanation += "; then " + ", ".join(f"{q.provider} {q.total_cost}" for q in candidates[1:])
        if failures:
            explanation += "; left out " + ", ".join(f"{f.provider} ({f.reason.lower()})" for f in failures)
        return Selection(best, candidates, failures, explanation)

    # --- payments -------------------------------------------------------------------------------

    async def pay(self, request: QuoteRequest, idempotency_key: str, provider: str | None = None,
                  timeout: float | None = None, history: list[Attempt] | tuple = (),
                  record: Callable[[list[Attempt]], Awaitable[None]] | None = None) -> PaymentOutcome:
        """Pay on the given provider (when it is healthy and able), else on the best one, failing
        over to the next best on a certain failure; every provider gets the same idempotency key.
        `history`: the attempts of an earlier drive of this payment (providers whose outcome is
        unknown are asked again first); `record` is given every attempt before and after it is
        made. Raises ServiceUnavailable NO_PROVIDER_AVAILABLE (none able is healthy now) or
        FailedPrecondition NO_PROVIDER_ABLE (none's terms allow it) only when nothing was ever tried."""
        if request.amount.amount <= 0:
            raise InvalidArgument.field("amount.amount", "must be greater than zero")
        if provider and not history:
            self.require_able(provider, request)
        if not history:
            self.require_some_able(request)
        attempts: list[Attempt] = list(history)
        timeout = timeout or self.quote_timeout

        async def attempt(name: str) -> tuple[Attempt, Receipt | None]:
            started = utcnow()
            if record:                  # before the call: a crash now leaves "may have happened"
                await record([*attempts, Attempt(name, started, started, Failure(name, "TIMEOUT", IN_FLIGHT))])
            clock, receipt = time.monotonic(), None
            try:
                receipt = await self._execute(name, request, idempotency_key, timeout)
                made = Attempt(name, started, utcnow())
                self.health[name].record(True, time.monotonic() - clock)
            except (ProviderError, TimeoutError, ServiceUnavailable) as exc:
                made = Attempt(name, started, utcnow(), _failure(name, exc))
                health = self.health[name]
                health.healthy, health.message = False, made.failure.message     # not offered again for now
                health.record(False, message=made.failure.message)
                log.warning("payment %s: %s on %s (%s)", idempotency_key,
                            "no answer" if made.unknown else "failed", name, made.failure.message,
                            extra={"provider": name})
            attempts.append(made)
            if record:
                await record(attempts)
            return made, receipt

        for name in dict.fromkeys(a.provider for a in history if a.unknown):
            if name in self.adapters:
                made, receipt = await attempt(name)
                if receipt is not None:
                    return PaymentOutcome(receipt, attempts)
                if made.unknown:
                    return PaymentOutcome(None, attempts, pending=True)
            else:                       # gone from providers.yaml: nobody can say what happened
                return PaymentOutcome(None, attempts, pending=True)
        tried = {a.provider for a in attempts}
        while len(tried) < len(self.adapters):
            if (provider and provider not in tried and provider in self.adapters and self.health[provider].healthy
                    and not self.adapters[provider].limits.refuses(request)):
                name = provider
            else:
                try:
                    name = (await self.select(request, exclude=frozenset(tried), timeout=timeout)).quote.provider
                except (ServiceUnavailable, FailedPrecondition):
                    if not attempts:
                        raise
                    break           # the others cannot take it: failed, and nothing was charged
            tried.add(name)
            made, receipt = await attempt(name)
            if receipt is not None:
                return PaymentOutcome(receipt, attempts)
            if made.unknown:        # it may have charged: never fail over now
                return PaymentOutcome(None, attempts, pending=True)
        return PaymentOutcome(None, attempts)

    async def _execute(self, name: str, request: QuoteRequest, key: str, timeout: float) -> Receipt:
        """Execute under the provider's breaker. A timeout leaves the outcome unknown (the provider may
        have charged): ask once more with the same idempotency key, which returns the first receipt if
        there was a charge, before the caller fails over to another provider."""
        async with self.breakers[name].guard():
            try:
                return await asyncio.wait_for(self.adapters[name].execute(request, key), timeout)
            except (TimeoutError, ProviderTimeout):
                return await asyncio.wait_for(self.adapters[name].execute(request, key), timeout)

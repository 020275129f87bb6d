"""Simulated on/off-ramp providers: each with its own fee schedule, exchange spread, latency
distribution, currencies and limits, and faults that can be switched on and off at run time
(errors, timeouts, slowness, flapping). They stand in for the real providers we cannot reach
here, and they keep books: every charge, so tests can prove nothing was charged twice. With
a books file, the books are the provider's own world: they outlive our service (a restarted
provider service still cannot make it charge one key twice), and tests read them from outside.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from services.config_files import ConfigError
from services.domain.clock import utcnow
from services.domain.money import EXACT, Money
from services.runtime.catalog import refuse_unknown
from services.simulation import Books, Faults, FaultSwitch, latency_settings

from .adapters import Limits, ProviderAdapter, ProviderError, ProviderTimeout, Quote, QuoteRequest, Receipt, charge, decimals


@dataclass
class FeeSchedule:
    fixed: dict[str, Decimal]                  # per currency
    percent: Decimal                            # of the amount, e.g. 0.0149
    spread: Decimal                             # conversion spread, e.g. 0.004


@dataclass
class SimulatedProvider(ProviderAdapter, FaultSwitch):
    name: str
    display_name: str
    limits: Limits
    fees: FeeSchedule
    latency: float = 0.05                       # mean seconds per call
    latency_jitter: float = 0.02
    faults: Faults = field(default_factory=Faults)
    quote_ttl: dt.timedelta = dt.timedelta(seconds=30)
    rng: random.Random = field(default_factory=random.Random)
    charges: dict[str, Receipt] = field(default_factory=dict)   # idempotency key -> receipt: the books
    books: Books | None = None                  # where the books are kept, if anywhere

    def open_books(self, books: Books) -> None:
        """Keep the books there, and take back what they say was charged."""
        self.books = books
        for entry in books.read():
            self.charges[entry["key"]] = Receipt(self.name, entry["reference"],
                                                 Money.parse(entry["currency"], entry["fee"]), entry["key"])

    def _record(self, receipt: Receipt, request: QuoteRequest) -> None:
        if self.books is not None:
            self.books.write({"key": receipt.idempotency_key, "reference": receipt.reference,
                              "direction": request.direction, "currency": request.amount.currency,
                              "amount": request.amount.text, "fee": receipt.fee.text})

    @classmethod
    def from_settings(cls, name: str, settings: dict) -> "SimulatedProvider":
        settings = dict(settings)
        limits = Limits.from_settings(settings)
        fees = settings.pop("fees", None)
        if not isinstance(fees, dict) or set(fees) - {"fixed", "percent", "spread"}:
            raise ConfigError("fees: must be {fixed: {CUR: amount}, percent: decimal, spread: decimal}")
        try:
            schedule = FeeSchedule(decimals(fees.get("fixed", {}), "fees.fixed"), Decimal(str(fees.get("percent", "0"))),
                                   Decimal(str(fees.get("spread", "0"))))
        except ArithmeticError:
            raise ConfigError(f"fees: percent and spread must be exact decimals, got {fees}") from None
        display_name = str(settings.pop("display_name", name))
        latency, jitter = latency_settings(settings, 0.05, 0.02)
        refuse_unknown(settings, "the simulated provider", ["currencies", "directions", "minimum", "maximum", "fees",
                                                            "latency_seconds", "latency_jitter_seconds", "display_name"])
        return cls(name, display_name, limits, schedule, latency=latency, latency_jitter=jitter)

    async def _call(self) -> float:
        """Behave like a remote call: latency, and the faults switched on now."""
        started = time.monotonic()
        if self.faults.down_now(time.time()):
            raise ProviderError(f"{self.name} is down (flapping)")
        if self.rng.random() < self.faults.timeout_rate:
            await asyncio.sleep(3600)            # hangs: the caller's timeout ends it
            raise ProviderTimeout(f"{self.name} did not answer")
        delay = max(0.0, self.rng.gauss(self.latency, self.latency_jitter)) + self.faults.extra_latency
        await asyncio.sleep(delay)
        if self.rng.random() < self.faults.error_rate:
            raise ProviderError(f"{self.name} answered with an error")
        return time.monotonic() - started

    def price(self, request: QuoteRequest) -> tuple[Money, Money, Money]:
        """(fee, total cost, what arrives) for the request, in its currency."""
        currency, amount = request.amount.currency, request.amount.amount
        fee = charge(EXACT.add(self.fees.fixed.get(currency, Decimal(0)), EXACT.multiply(amount, self.fees.percent)),
                     currency)
        spread_cost = charge(EXACT.multiply(amount, self.fees.spread), currency)
        total = EXACT.add(fee, spread_cost)
        return Money(currency, fee), Money(currency, total), Money(currency, max(Decimal(0), EXACT.subtract(amount, total)))

    async def quote(self, request: QuoteRequest) -> Quote:
        refusal = self.limits.refuses(request)
        if refusal:
            raise ProviderError(f"{self.name} {refusal}")
        await self._call()
        fee, total, receive = self.price(request)
        return Quote(self.name, fee, self.fees.spread, total, receive, dt.timedelta(seconds=self.latency),
                     utcnow() + self.quote_ttl)

    async def execute(self, request: QuoteRequest, idempotency_key: str) -> Receipt:
        refusal = self.limits.refuses(request)
        if refusal:
            raise ProviderError(f"{self.name} {refusal}")
        if idempotency_key in self.charges:     # a real provider dedupes on its idempotency header
            return self.charges[idempotency_key]
        await self._call()
        if idempotency_key in self.charges:     # a concurrent call with the same key charged meanwhile
            return self.charges[idempotency_key]
        fee, _, _ = self.price(request)
        receipt = Receipt(self.name, f"{self.name}-{uuid.uuid4().hex[:12]}", fee, idempotency_key)
        self._record(receipt, request)
        self.charges[idempotency_key] = receipt
        return receipt

    async def check(self) -> None:
        await self._call()


def default_providers(seed: int | None = None, books_dir: Path | None = None) -> list[SimulatedProvider]:
    """The simulated providers of the repository's providers.yaml (books in `books_dir`)."""
    from .catalog import DEFAULT_PROVIDERS_FILE, load_providers
    return load_providers(DEFAULT_PROVIDERS_FILE, books_dir, seed)

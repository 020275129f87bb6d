"""The provider registry over simulated providers (real asyncio timing, real faults)."""
from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from services.domain.money import Money
from services.provider.adapters import PAY_IN, QuoteRequest
from services.provider.registry import ProviderRegistry
from services.provider.simulator import default_providers
from services.runtime.errors import ServiceUnavailable


def registry(**kwargs) -> ProviderRegistry:
    providers = {p.name: p for p in default_providers(seed=3)}
    for p in providers.values():
        p.latency_jitter = 0.0
    return ProviderRegistry(providers, quote_timeout=0.5, **kwargs)


def usd(text: str) -> QuoteRequest:
    return QuoteRequest(PAY_IN, Money.parse("USD", text))


async def test_quotes_from_every_healthy_provider_and_the_cheapest_is_selected():
    reg = registry()
    quotes, failures = await reg.quotes(usd("100"))
    assert {q.provider for q in quotes} == {"alpha-pay", "beta-ramp", "gamma-exchange"} and not failures
    for q in quotes:  # total cost = fee + spread cost, and what arrives is the rest
        assert q.total_cost.amount == q.fee.amount + (Decimal("100") * q.spread).quantize(Decimal("0.01"))
        assert q.receive_amount.amount == Decimal("100.00") - q.total_cost.amount
    selection = await reg.select(usd("100"))
    cheapest = min(quotes, key=lambda q: q.total_cost.amount)
    assert selection.quote.provider == cheapest.provider
    assert selection.explanation.startswith(f"{cheapest.provider}: lowest total cost")


async def test_a_hanging_provider_does_not_hold_up_the_quotes():
    reg = registry()
    reg.adapters["beta-ramp"].faults.timeout_rate = 1.0
    started = time.monotonic()
    quotes, failures = await reg.quotes(usd("100"), timeout=0.3)
    assert time.monotonic() - started < 0.6
    assert {q.provider for q in quotes} == {"alpha-pay", "gamma-exchange"}
    assert [(f.provider, f.reason) for f in failures] == [("beta-ramp", "TIMEOUT")]


async def test_limits_and_currencies_are_respected():
    reg = registry()
    quotes, failures = await reg.quotes(QuoteRequest(PAY_IN, Money.parse("BRL", "100")))
    assert [q.provider for q in quotes] == ["beta-ramp"]
    assert {f.reason for f in failures} == {"UNSUPPORTED"}
    _, failures = await reg.quotes(usd("20"))      # under gamma-exchange's minimum of 50
    assert [f.provider for f in failures] == ["gamma-exchange"]


async def test_failover_pays_once_on_the_backup_when_the_cheapest_fails():
    reg = registry()
    cheapest = (await reg.select(usd("100"))).quote.provider
    reg.adapters[cheapest].faults.error_rate = 1.0          # it breaks after it was selected
    outcome = await reg.pay(usd("100"), "pay-1", provider=cheapest)
    assert outcome.attempts[0][0] == cheapest and outcome.attempts[-1][1] == "ok"
    backup = outcome.receipt.provider
    assert backup != cheapest
    assert len(reg.adapters[backup].charges) == 1 and reg.adapters[cheapest].charges == {}
    assert not reg.health[cheapest].healthy       # marked unhealthy: not offered again until a check passes
    again = await reg.pay(usd("100"), "pay-1", provider=backup)
    assert again.receipt == outcome.receipt and len(reg.adapters[backup].charges) == 1   # idempotent


async def test_no_healthy_provider_is_a_clear_unavailable():
    reg = registry()
    for p in reg.adapters.values():
        p.faults.error_rate = 1.0
    for name in reg.adapters:
        await reg.check(name)
    with pytest.raises(ServiceUnavailable) as caught:
        await reg.pay(usd("100"), "pay-2")
    assert caught.value.reason == "NO_PROVIDER_AVAILABLE"
    assert all(not p.charges for p in reg.adapters.values())


async def test_the_breaker_stops_calls_to_a_failing_provider_and_recovers():
    one = {p.name: p for p in default_providers(seed=1) if p.name == "alpha-pay"}
    reg = ProviderRegistry(one, quote_timeout=0.5, breaker_fail_max=2, breaker_reset_seconds=0.3)
    adapter = one["alpha-pay"]
    adapter.faults.error_rate = 1.0
    for n in range(2):
        with pytest.raises(ServiceUnavailable, match="ALL_PROVIDERS_FAILED|failed on every provider"):
            await reg.pay(usd("100"), f"p{n}", provider="alpha-pay")
    assert reg.breakers["alpha-pay"].state == "open"
    with pytest.raises(ServiceUnavailable, match="circuit breaker open"):
        await reg.pay(usd("100"), "p3", provider="alpha-pay")
    adapter.faults.error_rate = 0.0
    await reg.check("alpha-pay")
    await asyncio.sleep(0.35)
    outcome = await reg.pay(usd("100"), "p4", provider="alpha-pay")
    assert outcome.receipt.provider == "alpha-pay" and reg.breakers["alpha-pay"].state == "closed"

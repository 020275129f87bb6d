"""The provider registry over simulated providers (real asyncio timing, real faults)."""
from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import pytest

from services.domain.errors import ServiceUnavailable
from services.domain.money import Money
from services.provider.adapters import PAY_IN, QuoteRequest
from services.provider.registry import ProviderRegistry
from services.provider.simulator import default_providers


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
    assert outcome.attempts[0].provider == cheapest and outcome.attempts[0].failure.reason == "ERROR"
    assert outcome.attempts[-1].failure is None
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
        reg.health["alpha-pay"].healthy = True              # as if a health check had just passed
        failed = await reg.pay(usd("100"), f"p{n}", provider="alpha-pay")
        assert failed.receipt is None and "failed on every provider" in failed.failure_reason
    assert reg.breakers["alpha-pay"].state == "open"
    reg.health["alpha-pay"].healthy = True
    refused = await reg.pay(usd("100"), "p3", provider="alpha-pay")
    assert refused.receipt is None and refused.attempts[0].failure.reason == "CIRCUIT_OPEN"
    assert adapter.charges == {}
    adapter.faults.error_rate = 0.0
    await asyncio.sleep(0.35)
    await reg.check("alpha-pay")                              # the trial call: it passes
    outcome = await reg.pay(usd("100"), "p4", provider="alpha-pay")
    assert outcome.receipt.provider == "alpha-pay" and reg.breakers["alpha-pay"].state == "closed"


# --- recorded payments (PaymentService over a real database) ---------------------------------------

@pytest.fixture
def payment_service(database_url, tmp_path):
    from services.provider.app import MIGRATIONS
    from services.provider.payments import PaymentService
    from services.runtime.db import Database
    db = Database(database_url, MIGRATIONS)
    db.migrate()
    providers = {p.name: p for p in default_providers(seed=5, books_dir=tmp_path / "books")}
    yield PaymentService(db, ProviderRegistry(providers, quote_timeout=0.5))
    db.close()


async def _recorded(service, request_id: str, provider: str) -> str:
    """A payment of 100 USD recorded PENDING under `request_id`, as ExecutePayment records it
    before any provider is asked; its id."""
    from services.provider.payment import Payment

    def open_payment(unit) -> str:
        payment = Payment.open(uuid.uuid4().hex, PAY_IN, usd("100").amount, "wallets/w", "", provider, unit.now)
        unit.repo.add(payment)
        return payment.id
    units = service.units
    return (await units.run(units.idempotent, "ExecutePayment", request_id, "fp", open_payment, str.encode)).decode()


async def test_concurrent_repeats_of_one_payment_charge_once(payment_service):
    from services.provider.payment import SUCCEEDED
    results = await asyncio.gather(*(payment_service.execute("k1", "fp", usd("100"), "wallets/w", "", "")
                                     for _ in range(5)))
    assert {r.id for r in results} == {results[0].id} and results[0].state == SUCCEEDED
    charged = [key for p in payment_service.registry.adapters.values() for key in p.charges]
    assert charged == [results[0].name]


async def test_a_payment_interrupted_after_the_charge_resumes_without_charging_again(payment_service, tmp_path):
    """The service recorded the payment, the provider charged, and the service died before it wrote
    SUCCEEDED: the repeat of the request finds the charge by key (from the provider's own books)."""
    from services.provider.payment import PENDING, SUCCEEDED
    from services.provider.payments import PaymentService
    registry = payment_service.registry
    payment_id = await _recorded(payment_service, "k2", "beta-ramp")
    assert (await payment_service.get(payment_id)).state == PENDING
    first = await registry.adapters["beta-ramp"].execute(usd("100"), f"payments/{payment_id}")   # charged, then crash
    # A new process: the provider's books come back from its file.
    restarted = {p.name: p for p in default_providers(seed=6, books_dir=tmp_path / "books")}
    service = PaymentService(payment_service.units.db, ProviderRegistry(restarted, quote_timeout=0.5))
    payment = await service.execute("k2", "fp", usd("100"), "wallets/w", "", "beta-ramp")
    assert payment.state == SUCCEEDED and payment.provider_reference == first.reference
    assert sum(len(p.charges) for p in restarted.values()) == 1


async def test_failing_health_checks_open_the_breaker_and_a_passing_trial_closes_it():
    one = {p.name: p for p in default_providers(seed=1) if p.name == "alpha-pay"}
    reg = ProviderRegistry(one, quote_timeout=0.5, breaker_fail_max=2, breaker_reset_seconds=0.3)
    one["alpha-pay"].faults.error_rate = 1.0
    for _ in range(2):
        assert not (await reg.check("alpha-pay")).healthy
    assert reg.breakers["alpha-pay"].state == "open"
    started = time.monotonic()
    refused = await reg.check("alpha-pay")                    # not even asked while open
    assert time.monotonic() - started < 0.05 and "circuit breaker open" in refused.message
    one["alpha-pay"].faults.error_rate = 0.0
    await asyncio.sleep(0.35)
    assert (await reg.check("alpha-pay")).healthy and reg.breakers["alpha-pay"].state == "closed"


async def test_a_provider_that_does_not_answer_keeps_the_payment_pending_and_never_fails_over(payment_service):
    from services.provider.payment import PENDING, SUCCEEDED
    registry = payment_service.registry
    cheapest = (await registry.select(usd("100"))).quote.provider
    registry.adapters[cheapest].faults.timeout_rate = 1.0          # it hangs: it may have charged
    first = await payment_service.execute("k3", "fp", usd("100"), "wallets/w", "", cheapest)
    assert first.state == PENDING and [a.provider for a in first.attempts] == [cheapest]
    assert first.attempts[0].unknown                              # recorded as "may have happened"
    assert all(not p.charges for p in registry.adapters.values())  # and no one else was asked
    registry.adapters[cheapest].faults.timeout_rate = 0.0
    registry.health[cheapest].healthy = True
    again = await payment_service.execute("k3", "fp", usd("100"), "wallets/w", "", cheapest)
    assert again.state == SUCCEEDED and again.provider == cheapest
    assert [a.provider for a in again.attempts] == [cheapest, cheapest]
    assert sum(len(p.charges) for p in registry.adapters.values()) == 1


async def test_a_drive_cut_short_mid_call_asks_that_provider_first_when_resumed(payment_service, tmp_path):
    """alpha failed for sure, then beta was asked and the process died before beta's answer was
    written: resumed, the payment must ask beta again (it had charged), never a third provider."""
    import datetime as dt

    from sqlalchemy import update

    from services.provider.payment import SUCCEEDED, Attempt, Failure
    from services.provider.payments import PaymentService
    from services.provider.registry import IN_FLIGHT
    from services.provider.repository import _attempts_json
    from services.provider.tables import payments
    db, now = payment_service.units.db, dt.datetime.now(dt.timezone.utc)
    payment_id = await _recorded(payment_service, "k4", "")
    history = [Attempt("alpha-pay", now, now, Failure("alpha-pay", "ERROR", "declined")),
               Attempt("beta-ramp", now, now, Failure("beta-ramp", "TIMEOUT", IN_FLIGHT))]
    with db.transaction() as connection:
        connection.execute(update(payments).where(payments.c.id == payment_id).values(attempts=_attempts_json(history)))
    charged = await payment_service.registry.adapters["beta-ramp"].execute(usd("100"), f"payments/{payment_id}")
    restarted = {p.name: p for p in default_providers(seed=7, books_dir=tmp_path / "books")}
    payment = await PaymentService(db, ProviderRegistry(restarted, quote_timeout=0.5)).execute(
        "k4", "fp", usd("100"), "wallets/w", "", "")
    assert payment.state == SUCCEEDED and payment.provider == "beta-ramp"
    assert payment.provider_reference == charged.reference
    assert [a.provider for a in payment.attempts] == ["alpha-pay", "beta-ramp", "beta-ramp"]
    assert sum(len(p.charges) for p in restarted.values()) == 1     # alpha and gamma never charged

"""PaymentService on the real ProviderRegistry over hand-written providers (each with its own
books and a switch that makes it fail), an in-memory unit of work and a fake clock: a payment
is charged once, on one provider; a failing provider fails over once; a repeated request_id
returns the first answer; a payment no provider takes is refused with nothing charged."""
from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
import transaction_fakes
from transaction_fakes import T0, Clock

from services.domain.errors import AlreadyExists, FailedPrecondition
from services.domain.money import Money
from services.provider.adapters import PAY_IN, Limits, ProviderAdapter, ProviderError, Quote, QuoteRequest, Receipt
from services.provider.payment import FAILED, SUCCEEDED, Payment
from services.provider.payments import PaymentService
from services.provider.registry import ProviderRegistry


@dataclasses.dataclass(eq=False)
class FakeProvider(ProviderAdapter):
    """A provider with its own books: one charge per idempotency key. `failing`: it declines
    every payment (a certain failure: nothing is charged)."""
    name: str
    fee: Decimal
    limits: Limits = dataclasses.field(default_factory=lambda: Limits(frozenset({"USD"})))
    failing: bool = False
    display_name: str = "fake"
    charges: dict[str, Receipt] = dataclasses.field(default_factory=dict)
    asked: int = 0

    async def quote(self, request: QuoteRequest) -> Quote:
        fee = Money(request.amount.currency, self.fee)
        return Quote(self.name, fee, Decimal(0), fee, request.amount - fee, dt.timedelta(seconds=1),
                     T0 + dt.timedelta(minutes=1))

    async def execute(self, request: QuoteRequest, idempotency_key: str) -> Receipt:
        self.asked += 1
        if self.failing:
            raise ProviderError(f"{self.name} declined the payment")
        if idempotency_key not in self.charges:
            self.charges[idempotency_key] = Receipt(self.name, f"{self.name}-{len(self.charges) + 1}",
                                                    Money(request.amount.currency, self.fee), idempotency_key)
        return self.charges[idempotency_key]

    async def check(self) -> None:
        pass


@dataclasses.dataclass
class State:
    payments: dict[str, Payment] = dataclasses.field(default_factory=dict)
    responses: dict[str, tuple[str, str, bytes]] = dataclasses.field(default_factory=dict)


class FakeRepository:
    def __init__(self, state: State):
        self._state = state

    def add(self, payment: Payment) -> None:
        assert payment.id not in self._state.payments
        self._state.payments[payment.id] = payment

    def get(self, payment_id: str) -> Payment | None:
        return self._state.payments.get(payment_id)

    def save_attempts(self, payment_id: str, attempts) -> None:
        payment = self._state.payments[payment_id]
        if payment.state == "PENDING":
            self._state.payments[payment_id] = dataclasses.replace(payment, attempts=list(attempts))

    def close(self, payment: Payment) -> None:
        if self._state.payments[payment.id].state == "PENDING":
            self._state.payments[payment.id] = payment


@dataclasses.dataclass
class FakeUnit:
    repo: FakeRepository
    now: dt.datetime


class FakeUnits(transaction_fakes.FakeUnits):
    """The transaction tests' in-memory units of work (a unit whose block raises leaves the
    state as it was; request_ids answered once), over the payments."""

    def __init__(self, clock: Clock):
        super().__init__(clock)
        self.state = State()

    def _unit(self, state: State) -> FakeUnit:
        return FakeUnit(FakeRepository(state), self._clock())


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def providers():
    return {p.name: p for p in (FakeProvider("cheap", Decimal("0.10")), FakeProvider("dear", Decimal("0.50")),
                                FakeProvider("dearest", Decimal("0.90")))}


@pytest.fixture
def units(clock):
    return FakeUnits(clock)


@pytest.fixture
def service(providers, units, clock):
    ids = iter(f"p{n}" for n in range(1, 100))
    return PaymentService(None, ProviderRegistry(providers), clock, lambda: next(ids), units=units)


def pay_in(amount: str, currency: str = "USD") -> QuoteRequest:
    return QuoteRequest(PAY_IN, Money.parse(currency, amount))


def charges(providers) -> dict[str, list[str]]:
    return {name: sorted(p.charges) for name, p in providers.items() if p.charges}


async def test_a_payment_succeeds_on_the_cheapest_provider_charged_once(service, providers, units, clock):
    payment = await service.execute("r1", "fp", pay_in("100"), "wallets/w", "transactions/t", "")
    assert (payment.id, payment.state, payment.provider) == ("p1", SUCCEEDED, "cheap")
    assert payment.fee == Money.parse("USD", "0.10") and payment.provider_reference == "cheap-1"
    assert payment.completed_at == clock() and [a.provider for a in payment.attempts] == ["cheap"]
    assert charges(providers) == {"cheap": ["payments/p1"]}
    assert units.state.payments["p1"] == payment == await service.get("p1")


async def test_a_failing_provider_fails_over_once_to_the_next_which_charges_once(service, providers, units):
    providers["cheap"].failing = True
    payment = await service.execute("r1", "fp", pay_in("100"), "wallets/w", "", "")
    assert payment.state == SUCCEEDED and payment.provider == "dear"
    assert [(a.provider, a.failure.reason if a.failure else None) for a in payment.attempts] == [
        ("cheap", "ERROR"), ("dear", None)]
    assert charges(providers) == {"dear": ["payments/p1"]}
    assert [p.asked for p in providers.values()] == [1, 1, 0]          # the dearest was never asked
    assert units.state.payments["p1"].attempts == payment.attempts    # the failover is recorded


async def test_every_provider_failing_fails_the_payment_with_nothing_charged(service, providers):
    for provider in providers.values():
        provider.failing = True
    payment = await service.execute("r1", "fp", pay_in("100"), "wallets/w", "", "")
    assert payment.state == FAILED and payment.provider == "" and payment.fee is None
    assert [a.provider for a in payment.attempts] == ["cheap", "dear", "dearest"]
    assert "every provider" in payment.failure_reason and charges(providers) == {}


async def test_a_repeated_request_id_returns_the_first_answer_and_charges_nothing_more(service, providers, units):
    first = await service.execute("r1", "fp", pay_in("100"), "wallets/w", "", "")
    providers["cheap"].failing = True                   # the repeat would fail over, were it paid again
    again = await service.execute("r1", "fp", pay_in("100"), "wallets/w", "", "")
    assert again == first and list(units.state.payments) == ["p1"]
    assert charges(providers) == {"cheap": ["payments/p1"]} and [p.asked for p in providers.values()] == [1, 0, 0]
    with pytest.raises(AlreadyExists):
        await service.execute("r1", "another request", pay_in("5"), "wallets/w", "", "")


async def test_a_repeated_selection_returns_the_first_answer(service, providers):
    first = await service.select("s1", "fp", pay_in("100"), frozenset(), lambda s: s.quote.provider.encode())
    providers["cheap"].fee = Decimal("5")               # now the dear one would be chosen
    assert await service.select("s1", "fp", pay_in("100"), frozenset(), lambda s: s.quote.provider.encode()) == first
    assert first == b"cheap"
    assert await service.select("s2", "fp", pay_in("100"), frozenset(), lambda s: s.quote.provider.encode()) == b"dear"


async def test_no_provider_able_is_failed_precondition_with_nothing_charged_or_recorded(service, providers, units):
    with pytest.raises(FailedPrecondition) as refused:
        await service.execute("r1", "fp", pay_in("100", "EUR"), "wallets/w", "", "")
    assert refused.value.reason == "NO_PROVIDER_ABLE"
    assert charges(providers) == {} and [p.asked for p in providers.values()] == [0, 0, 0]
    assert units.state == State()                       # no payment, and the request_id is free again


def test_a_payment_closes_once():
    opened = Payment.open("p1", PAY_IN, Money.parse("USD", "100"), "wallets/w", "", "", T0)
    paid = opened.succeeded("cheap", Money.parse("USD", "0.10"), "cheap-1", [], T0)
    assert (opened.state, paid.state, paid.completed_at) == ("PENDING", SUCCEEDED, T0)
    for close in (lambda: paid.failed([], "late", T0), lambda: opened.failed([], "none", T0).failed([], "again", T0)):
        with pytest.raises(FailedPrecondition) as refused:
            close()
        assert refused.value.reason in ("PAYMENT_SUCCEEDED", "PAYMENT_FAILED")

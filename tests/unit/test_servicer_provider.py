"""ProviderServicer on a fake registry and a fake payment service: providers with their health and
faults, quotes and selections, payments with their attempts, each bad field named, and domain
errors passed through."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from diboas.common.v1 import common_pb2
from diboas.provider.v1 import provider_pb2
from services.domain.errors import NotFound
from services.domain.money import Money
from services.provider.adapters import PAY_IN, PAY_OUT, Limits, Quote, QuoteRequest
from services.provider.payment import Attempt, Failure
from services.provider.payments import Payment
from services.provider.registry import Health, Selection
from services.provider.servicer import ProviderServicer
from services.simulation import Faults, FaultSwitch

from servicing import Recorder, Served

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
P = provider_pb2


def usd(amount: str) -> common_pb2.Money:
    return common_pb2.Money(currency_code="USD", amount=amount)


def money(amount: str) -> Money:
    return Money("USD", Decimal(amount))


def a_quote(provider: str, total: str) -> Quote:
    return Quote(provider, money("0.30"), Decimal("0.004"), money(total), money("99.70"), dt.timedelta(seconds=2),
                 NOW + dt.timedelta(minutes=1))


@dataclass
class RealProvider:
    """A provider adapter that is not a simulator: its faults cannot be switched."""

    display_name: str
    limits: Limits


@dataclass
class SimulatedProvider(RealProvider, FaultSwitch):
    faults: Faults = field(default_factory=Faults)


@dataclass
class Breaker:
    state: str = "closed"


class FakeRegistry(Recorder):
    """The ProviderRegistry the servicer reads: adapters, health and breakers by name; `check`
    and `quotes` are recorded."""

    def __init__(self):
        super().__init__()
        self.adapters = {
            "stripe": SimulatedProvider("Stripe", Limits(frozenset({"USD", "EUR"}))),
            "bank": RealProvider("Bank", Limits(frozenset({"USD"}), frozenset({PAY_OUT}))),
        }
        self.health = {"stripe": Health(), "bank": Health(healthy=False, consecutive_failures=3, message="down")}
        self.breakers = {"stripe": Breaker(), "bank": Breaker("open")}
        self.answer: tuple[list[Quote], list[Failure]] = ([], [])

    def adapter(self, name):
        if name not in self.adapters:
            raise NotFound(f"provider providers/{name} does not exist", reason="PROVIDER_NOT_FOUND")
        return self.adapters[name]

    async def check(self, name, timeout=None):
        self.record("check", name=name)
        return self.health[name]

    async def quotes(self, request, timeout=None):
        self.record("quotes", request=request, timeout=timeout)
        return self.answer


class FakePayments(Recorder):
    """The PaymentService methods the servicer calls."""

    def __init__(self):
        super().__init__()
        self.payment = Payment(
            "p1", PAY_IN, money("100"), "wallets/w1", "transactions/t1", "", "SUCCEEDED", "stripe", money("0.30"),
            "ch_1", [Attempt("bank", NOW, NOW, Failure("bank", "ERROR", "declined")), Attempt("stripe", NOW, NOW)],
            "", NOW, NOW)

    async def select(self, request_id, fingerprint, request, exclude, encode):
        self.record("select", request_id=request_id, request=request, exclude=exclude)
        return encode(Selection(a_quote("stripe", "0.70"), [a_quote("stripe", "0.70")],
                                [Failure("bank", "UNHEALTHY", "down")], "lowest total cost"))

    async def execute(self, request_id, fingerprint, request, wallet, transaction, provider):
        self.record("execute", request_id=request_id, request=request, wallet=wallet, transaction=transaction,
                    provider=provider)
        return self.payment

    async def get(self, payment_id):
        self.record("get", payment_id=payment_id)
        return self.payment


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def payments() -> FakePayments:
    return FakePayments()


@pytest.fixture
def served(registry, payments) -> Served:
    return Served(P.DESCRIPTOR.services_by_name["ProviderService"], ProviderServicer(registry, payments))


def test_providers_are_listed_by_name_with_terms_health_and_faults(served, registry):
    registry.adapters["stripe"].faults = Faults(error_rate=0.25, flap_period=4.0)
    registry.health["stripe"].recent.extend([True] * 8 + [False] * 2)         # 80 % success: degraded
    bank, stripe = served.call("ListProviders", P.ListProvidersRequest()).providers
    assert (bank.name, stripe.name, stripe.display_name) == ("providers/bank", "providers/stripe", "Stripe")
    assert list(stripe.supported_currency_codes) == ["EUR", "USD"]
    assert list(bank.supported_directions) == [P.PAYMENT_DIRECTION_PAY_OUT]
    assert (stripe.health.state, stripe.health.circuit_state) == (
        P.PROVIDER_HEALTH_STATE_DEGRADED, P.CIRCUIT_STATE_CLOSED)
    assert (bank.health.state, bank.health.circuit_state, bank.health.consecutive_failures, bank.health.message) == (
        P.PROVIDER_HEALTH_STATE_UNHEALTHY, P.CIRCUIT_STATE_OPEN, 3, "down")
    assert (stripe.faults.error_rate_percent, stripe.faults.flapping, stripe.faults.flap_period.seconds) == (25, True, 4)
    assert not bank.HasField("faults")


def test_health_is_asked_for_now_and_an_unknown_provider_is_not_found(served, registry):
    health = served.call("GetProviderHealth", P.GetProviderHealthRequest(provider="providers/stripe")).health
    assert registry.names() == ["check"] and registry.last("check") == {"name": "stripe"}
    assert health.state == P.PROVIDER_HEALTH_STATE_HEALTHY
    refused = served.refusal("GetProvider", P.GetProviderRequest(name="providers/paypal"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "PROVIDER_NOT_FOUND")


def test_quotes_are_asked_with_direction_amount_and_timeout_and_answered_cheapest_first(served, registry):
    registry.answer = ([a_quote("stripe", "0.90"), a_quote("wise", "0.40")],
                       [Failure("bank", "TIMEOUT", "no answer in 2s")])
    reply = served.call("GetQuotes", P.GetQuotesRequest(direction=P.PAYMENT_DIRECTION_PAY_IN, amount=usd("100"),
                                                        provider_timeout=Duration(seconds=3)))
    assert registry.last("quotes") == {"request": QuoteRequest(PAY_IN, money("100")), "timeout": 3.0}
    assert [(q.provider, q.total_cost.amount) for q in reply.quotes] == [("providers/wise", "0.40"),
                                                                         ("providers/stripe", "0.90")]
    assert reply.quotes[0].spread == "0.004" and reply.quotes[0].receive_amount == usd("99.70")
    [failure] = reply.failures
    assert (failure.provider, failure.kind) == ("providers/bank", P.PROVIDER_FAILURE_KIND_TIMEOUT)
    assert reply.partial


def test_each_bad_field_is_named(served):
    pay_in = dict(direction=P.PAYMENT_DIRECTION_PAY_IN, amount=usd("10"))
    assert served.misnamed({
        "a negative page size": ("ListProviders", P.ListProvidersRequest(page_size=-1), "page_size"),
        "a page token": ("ListProviders", P.ListProvidersRequest(page_token="abc"), "page_token"),
        "a name of another collection": ("GetProvider", P.GetProviderRequest(name="chains/stripe"), "name"),
        "no direction": ("GetQuotes", P.GetQuotesRequest(amount=usd("10")), "direction"),
        "no amount": ("GetQuotes", P.GetQuotesRequest(direction=P.PAYMENT_DIRECTION_PAY_IN), "amount"),
        "another settlement currency": ("GetQuotes", P.GetQuotesRequest(**pay_in, settlement_currency_code="EUR"),
                                        "settlement_currency_code"),
        "a timeout over 30 s": ("GetQuotes", P.GetQuotesRequest(**pay_in, provider_timeout=Duration(seconds=31)),
                                "provider_timeout"),
        "an excluded name of another collection": ("SelectProvider", P.SelectProviderRequest(
            request_id="r", **pay_in, exclude_providers=["stripe"]), "exclude_providers"),
        "a selection without a request id": ("SelectProvider", P.SelectProviderRequest(**pay_in), "request_id"),
        "a payment to no wallet": ("ExecutePayment", P.ExecutePaymentRequest(request_id="r", **pay_in, wallet="w1"),
                                   "wallet"),
        "a payment for no transaction": ("ExecutePayment", P.ExecutePaymentRequest(
            request_id="r", **pay_in, wallet="wallets/w1", transaction="t1"), "transaction"),
        "an error rate over 100 %": ("SetProviderFaults", P.SetProviderFaultsRequest(
            request_id="r", provider="providers/stripe", faults=P.ProviderFaults(error_rate_percent=101)),
            "faults.error_rate_percent"),
    }) == {}


def test_faults_are_switched_on_a_simulator_only(served, registry):
    reply = served.call("SetProviderFaults", P.SetProviderFaultsRequest(
        request_id="r-1", provider="providers/stripe", faults=P.ProviderFaults(timeout_rate_percent=50)))
    assert registry.adapters["stripe"].faults == Faults(timeout_rate=0.5)
    assert reply.provider.faults.timeout_rate_percent == 50
    refused = served.refusal("SetProviderFaults", P.SetProviderFaultsRequest(
        request_id="r-2", provider="providers/bank", faults=P.ProviderFaults(timeout_rate_percent=50)))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FAULTS_NOT_SUPPORTED")


def test_a_selection_excludes_providers_by_id_and_answers_the_choice_with_its_reasons(served, payments):
    reply = served.call("SelectProvider", P.SelectProviderRequest(
        request_id="r-1", direction=P.PAYMENT_DIRECTION_PAY_OUT, amount=usd("100"),
        exclude_providers=["providers/bank", "providers/wise"]))
    asked = payments.last("select")
    assert asked["exclude"] == frozenset({"bank", "wise"}) and asked["request"] == QuoteRequest(PAY_OUT, money("100"))
    assert (reply.provider, reply.quote.total_cost, reply.explanation) == (
        "providers/stripe", usd("0.70"), "lowest total cost")
    assert [(f.provider, f.kind) for f in reply.failures] == [("providers/bank", P.PROVIDER_FAILURE_KIND_UNHEALTHY)]


def test_a_payment_is_executed_for_its_wallet_and_transaction_and_answered_with_its_attempts(served, payments):
    reply = served.call("ExecutePayment", P.ExecutePaymentRequest(
        request_id="r-1", direction=P.PAYMENT_DIRECTION_PAY_IN, amount=usd("100"), wallet="wallets/w1",
        transaction="transactions/t1", provider="providers/bank"))
    asked = payments.last("execute")
    assert (asked["wallet"], asked["transaction"], asked["provider"]) == ("wallets/w1", "transactions/t1", "bank")
    payment = reply.payment
    assert (payment.name, payment.state, payment.provider, payment.fee) == (
        "payments/p1", P.PAYMENT_STATE_SUCCEEDED, "providers/stripe", usd("0.30"))
    failed, paid = payment.attempts
    assert (failed.succeeded, failed.failure.kind, failed.failure.message) == (False, P.PROVIDER_FAILURE_KIND_ERROR,
                                                                              "declined")
    assert paid.succeeded and not paid.HasField("failure")


def test_a_payment_is_read_by_its_id(served, payments):
    reply = served.call("GetPayment", P.GetPaymentRequest(name="payments/p1"))
    assert payments.last("get") == {"payment_id": "p1"} and reply.payment.provider_reference == "ch_1"

"""The provider service as a real mTLS server: providers, health, quotes with a hanging
provider, run-time faults, and bad input."""
from __future__ import annotations

import json
import time

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from diboas.common.v1 import common_pb2
from diboas.provider.v1 import provider_pb2, provider_pb2_grpc
from services.provider.app import build as provider_app

from conftest import operator_calls


@pytest.fixture
async def providers(topology, start_server):
    server = await start_server(topology, "provider", provider_app)
    call, channel = operator_calls(topology, server.port, "provider", provider_pb2_grpc.ProviderServiceStub)
    yield call
    await channel.close()


def usd(amount: str) -> common_pb2.Money:
    return common_pb2.Money(currency_code="USD", amount=amount)


async def test_providers_are_listed_with_their_health(providers):
    listed = (await providers("ListProviders", provider_pb2.ListProvidersRequest())).providers
    assert [p.name for p in listed] == ["providers/alpha-pay", "providers/beta-ramp", "providers/gamma-exchange"]
    health = (await providers("GetProviderHealth", provider_pb2.GetProviderHealthRequest(
        provider="providers/alpha-pay"))).health
    assert health.state == provider_pb2.PROVIDER_HEALTH_STATE_HEALTHY and health.HasField("last_check_time")


async def test_quotes_come_back_within_the_timeout_when_a_provider_hangs(providers):
    await providers("SetProviderFaults", provider_pb2.SetProviderFaultsRequest(
        provider="providers/beta-ramp", faults=provider_pb2.ProviderFaults(timeout_rate_percent=100), request_id="f1"))
    started = time.monotonic()
    reply = await providers("GetQuotes", provider_pb2.GetQuotesRequest(
        direction=provider_pb2.PAYMENT_DIRECTION_PAY_IN, amount=usd("100.00"),
        provider_timeout=Duration(nanos=300_000_000)))
    assert time.monotonic() - started < 1.0
    assert reply.partial
    assert {q.provider for q in reply.quotes} == {"providers/alpha-pay", "providers/gamma-exchange"}
    assert [(f.provider, f.kind) for f in reply.failures] == [("providers/beta-ramp", provider_pb2.PROVIDER_FAILURE_KIND_TIMEOUT)]
    costs = [float(q.total_cost.amount) for q in reply.quotes]
    assert costs == sorted(costs)                    # cheapest first


@pytest.mark.parametrize("request_,field", [
    (provider_pb2.GetQuotesRequest(amount=usd("1.00")), "direction"),
    (provider_pb2.GetQuotesRequest(direction=provider_pb2.PAYMENT_DIRECTION_PAY_IN, amount=usd("1.001")), "amount.amount"),
    (provider_pb2.GetQuotesRequest(direction=provider_pb2.PAYMENT_DIRECTION_PAY_IN), "amount"),
])
async def test_bad_quote_requests_name_the_field(providers, request_, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await providers("GetQuotes", request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and caught.value.details().startswith(field)


async def test_faults_are_validated_and_unknown_providers_are_not_found(providers):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await providers("SetProviderFaults", provider_pb2.SetProviderFaultsRequest(
            provider="providers/alpha-pay", faults=provider_pb2.ProviderFaults(error_rate_percent=150), request_id="x"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await providers("GetProvider", provider_pb2.GetProviderRequest(name="providers/nobody"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_provider_says_what_it_takes(providers):
    alpha = (await providers("GetProvider", provider_pb2.GetProviderRequest(name="providers/alpha-pay"))).provider
    assert [(m.currency_code, m.amount) for m in alpha.minimum_amounts] == [("USD", "10")]
    assert [(m.currency_code, m.amount) for m in alpha.maximum_amounts] == [("EUR", "20000"), ("GBP", "15000"),
                                                                           ("USD", "20000")]
    beta = (await providers("GetProvider", provider_pb2.GetProviderRequest(name="providers/beta-ramp"))).provider
    assert list(beta.minimum_amounts) == []


def books(topology, provider: str) -> list[dict]:
    """A simulated provider's own record of what it charged (outside our service's database)."""
    path = topology.state_dir / "simulators" / "providers" / f"{provider}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def pay_in(amount: str, request_id: str, **fields) -> provider_pb2.ExecutePaymentRequest:
    fields.setdefault("wallet", "wallets/w1")
    return provider_pb2.ExecutePaymentRequest(direction=provider_pb2.PAYMENT_DIRECTION_PAY_IN, amount=usd(amount),
                                              request_id=request_id, **fields)


async def test_select_explains_the_cheapest_healthy_choice_and_is_idempotent(providers):
    ask = provider_pb2.SelectProviderRequest(direction=provider_pb2.PAYMENT_DIRECTION_PAY_IN, amount=usd("100.00"),
                                             request_id="s1")
    first = await providers("SelectProvider", ask)
    costs = [float(q.total_cost.amount) for q in first.candidates]
    assert first.provider == first.candidates[0].provider and costs == sorted(costs)
    assert "lowest total cost" in first.explanation
    assert await providers("SelectProvider", ask) == first
    excluded = await providers("SelectProvider", provider_pb2.SelectProviderRequest(
        direction=provider_pb2.PAYMENT_DIRECTION_PAY_IN, amount=usd("100.00"), request_id="s2",
        exclude_providers=[first.provider]))
    assert excluded.provider != first.provider


async def test_a_payment_fails_over_once_to_the_backup_and_is_charged_once(providers, topology):
    cheapest = (await providers("SelectProvider", provider_pb2.SelectProviderRequest(
        direction=provider_pb2.PAYMENT_DIRECTION_PAY_IN, amount=usd("100.00"), request_id="s"))).provider
    await providers("SetProviderFaults", provider_pb2.SetProviderFaultsRequest(
        provider=cheapest, faults=provider_pb2.ProviderFaults(error_rate_percent=100), request_id="f"))
    payment = (await providers("ExecutePayment", pay_in("100.00", "p1", provider=cheapest))).payment
    assert payment.state == provider_pb2.PAYMENT_STATE_SUCCEEDED and payment.provider != cheapest
    assert [a.provider for a in payment.attempts] == [cheapest, payment.provider]
    assert not payment.attempts[0].succeeded and payment.attempts[1].succeeded
    again = (await providers("ExecutePayment", pay_in("100.00", "p1", provider=cheapest))).payment
    assert again == payment                                  # the first answer, nothing charged again
    assert (await providers("GetPayment", provider_pb2.GetPaymentRequest(name=payment.name))).payment == payment
    charged = books(topology, payment.provider.removeprefix("providers/"))
    assert [(c["key"], c["amount"]) for c in charged] == [(payment.name, "100.00")]
    assert books(topology, cheapest.removeprefix("providers/")) == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:      # the same key for another payment
        await providers("ExecutePayment", pay_in("5.00", "p1"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_no_healthy_provider_is_unavailable_and_records_nothing(providers, topology):
    for name in ("alpha-pay", "beta-ramp", "gamma-exchange"):
        await providers("SetProviderFaults", provider_pb2.SetProviderFaultsRequest(
            provider=f"providers/{name}", faults=provider_pb2.ProviderFaults(error_rate_percent=100),
            request_id=f"f-{name}"))
        await providers("GetProviderHealth", provider_pb2.GetProviderHealthRequest(provider=f"providers/{name}"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await providers("ExecutePayment", pay_in("100.00", "p2"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "no healthy provider" in caught.value.details()
    assert all(books(topology, n) == [] for n in ("alpha-pay", "beta-ramp", "gamma-exchange"))


@pytest.mark.parametrize("request_,code,field", [
    (pay_in("100.00", ""), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    (pay_in("100.00", "b1", wallet="w1"), grpc.StatusCode.INVALID_ARGUMENT, "wallet"),
    (pay_in("100.00", "b2", provider="providers/nobody"), grpc.StatusCode.NOT_FOUND, "provider"),
    (pay_in("5.00", "b3", provider="providers/gamma-exchange"), grpc.StatusCode.INVALID_ARGUMENT, "provider"),
    (provider_pb2.GetPaymentRequest(name="payments/none"), grpc.StatusCode.NOT_FOUND, "payment"),
])
async def test_bad_payment_requests_are_refused_and_change_nothing(providers, topology, request_, code, field):
    method = "GetPayment" if isinstance(request_, provider_pb2.GetPaymentRequest) else "ExecutePayment"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await providers(method, request_)
    assert caught.value.code() == code and field in caught.value.details()
    assert all(books(topology, n) == [] for n in ("alpha-pay", "beta-ramp", "gamma-exchange"))


async def test_flapping_without_a_period_uses_the_contracts_five_seconds(providers):
    reply = await providers("SetProviderFaults", provider_pb2.SetProviderFaultsRequest(
        provider="providers/alpha-pay", faults=provider_pb2.ProviderFaults(flapping=True), request_id="flap"))
    assert reply.provider.faults.flapping and reply.provider.faults.flap_period.seconds == 5

"""The provider service as a real mTLS server: providers, health, quotes with a hanging
provider, run-time faults, and bad input."""
from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from diboas.common.v1 import common_pb2
from diboas.provider.v1 import provider_pb2, provider_pb2_grpc
from services.provider.app import build as provider_app

from conftest import bearer, client_channel, service_token


@pytest.fixture
async def providers(topology, start_server):
    server = await start_server(topology, "provider", provider_app)
    channel = client_channel(topology, "operator", server.port, "provider")
    stub = provider_pb2_grpc.ProviderServiceStub(channel)
    metadata = bearer(service_token(topology, "operator", "provider"))

    async def call(method: str, request):
        return await getattr(stub, method)(request, metadata=metadata, timeout=10)
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


async def test_payments_say_they_are_not_built_yet(providers):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await providers("ExecutePayment", provider_pb2.ExecutePaymentRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

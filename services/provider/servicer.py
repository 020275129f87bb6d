"""ProviderService over gRPC: the registry's providers, their health, quotes, selection,
recorded payments with failover, and run-time faults of the simulators."""
from __future__ import annotations

from diboas.provider.v1 import provider_pb2, provider_pb2_grpc
from services.domain.errors import InvalidArgument
from services.runtime.requests import fingerprint, foreign_page_token, money, page_size, request_id, resource_id
from services.runtime.wire import amount_pb, duration, money_pb, seconds_of, timestamp
from services.simulation import Faults, fault_settings, fault_switch, faults_of

from .adapters import PAY_IN, PAY_OUT, Quote, QuoteRequest
from .payment import Failure
from .payments import Payment, PaymentService
from .registry import ProviderRegistry, Selection

_DIRECTIONS = {provider_pb2.PAYMENT_DIRECTION_PAY_IN: PAY_IN, provider_pb2.PAYMENT_DIRECTION_PAY_OUT: PAY_OUT}
_BREAKER = {"closed": provider_pb2.CIRCUIT_STATE_CLOSED, "open": provider_pb2.CIRCUIT_STATE_OPEN,
            "half-open": provider_pb2.CIRCUIT_STATE_HALF_OPEN}


def _amounts(limits: dict) -> list:
    """A provider's limits per currency, as configured (providers.yaml), in currency order."""
    return [amount_pb(currency, amount) for currency, amount in sorted(limits.items())]


def quote_pb(q: Quote) -> provider_pb2.Quote:
    return provider_pb2.Quote(provider=f"providers/{q.provider}", fee=money_pb(q.fee), exchange_rate="1",
                              spread=f"{q.spread:f}", total_cost=money_pb(q.total_cost),
                              receive_amount=money_pb(q.receive_amount),
                              estimated_latency=duration(q.estimated_latency.total_seconds()),
                              expire_time=timestamp(q.expires_at))


def failure_pb(f: Failure) -> provider_pb2.ProviderFailure:
    return provider_pb2.ProviderFailure(provider=f"providers/{f.provider}", message=f.message,
                                        kind=provider_pb2.ProviderFailureKind.Value(f"PROVIDER_FAILURE_KIND_{f.reason}"))


def selection_pb(s: Selection) -> provider_pb2.SelectProviderResponse:
    return provider_pb2.SelectProviderResponse(
        provider=f"providers/{s.quote.provider}", quote=quote_pb(s.quote), candidates=[quote_pb(q) for q in s.candidates],
        failures=[failure_pb(f) for f in s.failures], explanation=s.explanation)


def payment_pb(p: Payment) -> provider_pb2.Payment:
    return provider_pb2.Payment(
        name=p.name, direction=provider_pb2.PaymentDirection.Value(f"PAYMENT_DIRECTION_{p.direction}"),
        amount=money_pb(p.amount), wallet=p.wallet, transaction=p.transaction,
        state=provider_pb2.PaymentState.Value(f"PAYMENT_STATE_{p.state}"),
        provider=f"providers/{p.provider}" if p.provider else "",
        attempts=[provider_pb2.PaymentAttempt(provider=f"providers/{a.provider}", succeeded=a.failure is None,
                                              failure=failure_pb(a.failure) if a.failure else None,
                                              start_time=timestamp(a.started_at), end_time=timestamp(a.ended_at))
                  for a in p.attempts],
        fee=money_pb(p.fee) if p.fee else None, provider_reference=p.provider_reference,
        failure_reason=p.failure_reason, create_time=timestamp(p.created_at), complete_time=timestamp(p.completed_at))


def quote_request(request) -> QuoteRequest:
    """Direction and amount of a GetQuotes, SelectProvider or ExecutePayment request."""
    direction = _DIRECTIONS.get(request.direction)
    if direction is None:
        raise InvalidArgument.field("direction", "is required: PAYMENT_DIRECTION_PAY_IN or PAYMENT_DIRECTION_PAY_OUT")
    amount = money(request.amount, request.HasField("amount"), "amount")
    if getattr(request, "settlement_currency_code", "") not in ("", amount.currency):
        raise InvalidArgument.field("settlement_currency_code", "conversion between currencies is not offered yet")
    return QuoteRequest(direction, amount)


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    def __init__(self, registry: ProviderRegistry, payments: PaymentService):
        self._registry, self._payments = registry, payments

    def _health_pb(self, name: str) -> provider_pb2.ProviderHealth:
        health, breaker = self._registry.health[name], self._registry.breakers[name]
        state = (provider_pb2.PROVIDER_HEALTH_STATE_HEALTHY if health.healthy and health.success_rate >= 0.9
                 else provider_pb2.PROVIDER_HEALTH_STATE_DEGRADED if health.healthy
                 else provider_pb2.PROVIDER_HEALTH_STATE_UNHEALTHY)
        return provider_pb2.ProviderHealth(
            provider=f"providers/{name}", state=state, circuit_state=_BREAKER.get(breaker.state, 0),
            consecutive_failures=health.consecutive_failures, last_check_latency=duration(health.last_check_latency),
            last_check_time=timestamp(health.last_check), message=health.message)

    def _provider_pb(self, name: str) -> provider_pb2.Provider:
        adapter = self._registry.adapter(name)
        faults = faults_of(adapter)
        return provider_pb2.Provider(
            name=f"providers/{name}", display_name=adapter.display_name,
            supported_currency_codes=sorted(adapter.limits.currencies),
            supported_directions=[d for d, value in _DIRECTIONS.items() if value in adapter.limits.directions],
            minimum_amounts=_amounts(adapter.limits.minimum), maximum_amounts=_amounts(adapter.limits.maximum),
            health=self._health_pb(name),
            faults=provider_pb2.ProviderFaults(
                error_rate_percent=round(faults.error_rate * 100), timeout_rate_percent=round(faults.timeout_rate * 100),
                extra_latency=duration(faults.extra_latency), flapping=faults.flap_period > 0,
                flap_period=duration(faults.flap_period)) if faults else None)

    async def ListProviders(self, request, context):
        page_size(request.page_size)            # every provider fits in one page; the size is still checked
        if request.page_token:                  # so no token is one it gave out
            raise foreign_page_token()
        return provider_pb2.ListProvidersResponse(providers=[self._provider_pb(n) for n in sorted(self._registry.adapters)])

    async def GetProvider(self, request, context):
        return provider_pb2.GetProviderResponse(provider=self._provider_pb(resource_id(request.name, "providers", "name")))

    async def GetProviderHealth(self, request, context):
        name = resource_id(request.provider, "providers", "provider")
        self._registry.adapter(name)
        await self._registry.check(name)          # synchronous: ask the provider now
        return provider_pb2.GetProviderHealthResponse(health=self._health_pb(name))

    async def GetQuotes(self, request, context):
        quote = quote_request(request)
        timeout = seconds_of(request.provider_timeout) if request.HasField("provider_timeout") else None
        if timeout is not None and not 0 < timeout <= 30:
            raise InvalidArgument.field("provider_timeout", "must be more than 0 and at most 30 seconds")
        quotes, failures = await self._registry.quotes(quote, timeout)
        quotes.sort(key=lambda q: q.total_cost.amount)
        return provider_pb2.GetQuotesResponse(quotes=[quote_pb(q) for q in quotes],
                                              failures=[failure_pb(f) for f in failures],
                                              partial=any(f.reason in ("TIMEOUT", "ERROR") for f in failures))

    async def SetProviderFaults(self, request, context):
        request_id(request)
        name = resource_id(request.provider, "providers", "provider")
        switch = fault_switch(self._registry.adapter(name), f"providers/{name}")
        switch.faults = Faults(*fault_settings(request.faults))
        return provider_pb2.SetProviderFaultsResponse(provider=self._provider_pb(name))

    async def SelectProvider(self, request, context):
        rid, quote = request_id(request), quote_request(request)
        exclude = frozenset(resource_id(p, "providers", "exclude_providers") for p in request.exclude_providers)
        data = await self._payments.select(rid, fingerprint(request), quote, exclude,
                                           lambda chosen: selection_pb(chosen).SerializeToString())
        return provider_pb2.SelectProviderResponse.FromString(data)

    async def ExecutePayment(self, request, context):
        rid, quote = request_id(request), quote_request(request)
        wallet = f"wallets/{resource_id(request.wallet, 'wallets', 'wallet')}"
        transaction = (f"transactions/{resource_id(request.transaction, 'transactions', 'transaction')}"
                       if request.transaction else "")
        provider = resource_id(request.provider, "providers", "provider") if request.provider else ""
        payment = await self._payments.execute(rid, fingerprint(request), quote, wallet, transaction, provider)
        return provider_pb2.ExecutePaymentResponse(payment=payment_pb(payment))

    async def GetPayment(self, request, context):
        payment = await self._payments.get(resource_id(request.name, "payments", "name"))
        return provider_pb2.GetPaymentResponse(payment=payment_pb(payment))

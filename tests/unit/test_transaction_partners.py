"""The transaction service's clients of the provider and blockchain services: looking up a
provider or chain a new transaction names, over stand-in stubs."""
from __future__ import annotations

from decimal import Decimal

import pytest

from diboas.common.v1 import common_pb2
from diboas.provider.v1 import provider_pb2
from services.domain.errors import DeadlineExceeded, NotFound, PermissionDenied, ServiceUnavailable
from services.transaction.partners import LOOKUP_TIMEOUT, ChainClient, ProviderClient
from services.transaction.ports import ProviderTerms


class Stub:
    """A generated stub's stand-in: every method records its request and raises `error` (or answers)."""

    def __init__(self, error: Exception | None, answer=None):
        self.error, self.requests, self.answer = error, [], answer

    def __getattr__(self, method):
        async def call(request, timeout=None):
            self.requests.append((method, request.name, timeout))
            if self.error is not None:
                raise self.error
            return self.answer if self.answer is not None else object()
        return call


class Upstream:
    def __init__(self, stub: Stub):
        self._stub = stub

    def stub(self, _cls):
        return self._stub


@pytest.mark.parametrize("client,method,name", [(ProviderClient, "GetProvider", "providers/alpha-pay"),
                                                (ChainClient, "GetChain", "chains/ethereum")])
async def test_a_lookup_raises_not_found_and_nothing_else_it_cannot_answer(client, method, name):
    found = Stub(None, provider_pb2.GetProviderResponse(provider=provider_pb2.Provider(name=name)))
    await client(Upstream(found)).require(name)
    assert found.requests == [(method, name, LOOKUP_TIMEOUT)]
    with pytest.raises(NotFound):
        await client(Upstream(Stub(NotFound(f"{name} does not exist", reason="X_NOT_FOUND")))).require(name)
    # Down or slow: no answer, the saga finds out later.
    for away in (ServiceUnavailable("down", reason="UPSTREAM_UNAVAILABLE"), DeadlineExceeded("slow", reason="X")):
        await client(Upstream(Stub(away))).require(name)
    # Anything else is not swallowed.
    with pytest.raises(PermissionDenied):
        await client(Upstream(Stub(PermissionDenied("no", reason="X")))).require(name)


async def test_a_provider_lookup_answers_what_the_provider_takes():
    answer = provider_pb2.GetProviderResponse(provider=provider_pb2.Provider(
        name="providers/alpha-pay", supported_currency_codes=["USD", "EUR"],
        supported_directions=[provider_pb2.PAYMENT_DIRECTION_PAY_IN],
        minimum_amounts=[common_pb2.Money(currency_code="USD", amount="10")],
        maximum_amounts=[common_pb2.Money(currency_code="USD", amount="20000"),
                         common_pb2.Money(currency_code="EUR", amount="not a number")]))
    terms = await ProviderClient(Upstream(Stub(None, answer))).require("providers/alpha-pay")
    assert terms == ProviderTerms("providers/alpha-pay", frozenset({"USD", "EUR"}), frozenset({"PAY_IN"}),
                                  {"USD": Decimal("10")}, {"USD": Decimal("20000")})   # what does not read is left out
    assert await ProviderClient(Upstream(Stub(ServiceUnavailable("down", reason="UPSTREAM_UNAVAILABLE")))).require(
        "providers/alpha-pay") is None

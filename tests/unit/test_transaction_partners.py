"""The transaction service's clients of the provider and blockchain services: looking up a
provider or chain a new transaction names, over stand-in stubs."""
from __future__ import annotations

import pytest

from services.domain.errors import DeadlineExceeded, NotFound, PermissionDenied, ServiceUnavailable
from services.transaction.partners import LOOKUP_TIMEOUT, ChainClient, ProviderClient


class Stub:
    """A generated stub's stand-in: every method records its request and raises `error` (or answers)."""

    def __init__(self, error: Exception | None):
        self.error, self.requests = error, []

    def __getattr__(self, method):
        async def call(request, timeout=None):
            self.requests.append((method, request.name, timeout))
            if self.error is not None:
                raise self.error
            return object()
        return call


class Upstream:
    def __init__(self, stub: Stub):
        self._stub = stub

    def stub(self, _cls):
        return self._stub


@pytest.mark.parametrize("client,method,name", [(ProviderClient, "GetProvider", "providers/alpha-pay"),
                                                (ChainClient, "GetChain", "chains/ethereum")])
async def test_a_lookup_raises_not_found_and_nothing_else_it_cannot_answer(client, method, name):
    found = Stub(None)
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

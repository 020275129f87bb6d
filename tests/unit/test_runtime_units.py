"""Unit tests of runtime pieces that a real client cannot easily provoke."""
from __future__ import annotations

import math
import time

import grpc
import pytest

from services.config_files import ConfigError
from services.domain.errors import PermissionDenied, ServiceUnavailable, Unauthenticated
from services.runtime.breaker import AsyncCircuitBreaker
from services.runtime.calls import call_timeout
from services.runtime.client import Caller
from services.runtime.config import load_topology
from services.runtime.context import current_deadline, within
from services.runtime.guard import ServerGuard, _Method
from services.runtime.status import upstream_error
from services.runtime.tls import load_identity
from services.runtime.tracing import RpcTracing

from conftest import service_token


class Aborted(Exception):
    pass


class FakeContext:
    """Just enough of grpc.aio.ServicerContext for the server guard."""

    def __init__(self, topology, remaining):
        self._pem = load_identity(topology.certs_dir, "transaction").cert
        self._spiffe = topology.identities()["transaction"].encode()
        self._token = service_token(topology, "transaction", "wallet")
        self._remaining = remaining
        self.status = None

    def auth_context(self):
        return {"peer_spiffe_id": [self._spiffe], "x509_pem_cert": [self._pem]}

    def peer_identities(self):
        return [self._spiffe, b"localhost", b"transaction"]

    def invocation_metadata(self):
        return (("authorization", f"Bearer {self._token}"),)

    def time_remaining(self):
        return self._remaining

    def code(self):
        return self.status.code if self.status else None

    async def abort_with_status(self, status):
        self.status = status
        raise Aborted()


async def _serve(topology, remaining):
    guard = ServerGuard(topology, topology.services["wallet"], default_deadline=5, tracing=RpcTracing(False))
    ran = []

    async def behavior(request, context):
        ran.append(request)
        return "reply"

    serve = guard._unary(_Method(topology.services["wallet"], "/diboas.wallet.v1.WalletService/GetWallet"), behavior)
    context = FakeContext(topology, remaining)
    try:
        result = await serve("request", context)
    except Aborted:
        result = None
    return result, ran, context


async def test_call_arriving_after_its_deadline_is_refused_unhandled(topology):
    result, ran, context = await _serve(topology, remaining=-0.01)
    assert ran == []
    assert context.status.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "already passed" in context.status.details


async def test_call_with_time_left_runs(topology):
    result, ran, context = await _serve(topology, remaining=1.0)
    assert result == "reply" and ran == ["request"] and context.status is None


async def test_breaker_counts_only_failures_that_mean_down():
    class Down(Exception):
        pass

    breaker = AsyncCircuitBreaker("wallet", fail_max=2, reset_timeout=60,
                                  is_failure=lambda exc: isinstance(exc, Down))
    for _ in range(5):                    # "the upstream said no" never opens it
        with pytest.raises(ValueError):
            async with breaker.guard():
                raise ValueError("not found")
    assert breaker.state == "closed"
    for _ in range(2):
        with pytest.raises(Down):
            async with breaker.guard():
                raise Down()
    assert breaker.state == "open"
    with pytest.raises(ServiceUnavailable, match="next trial call in"):
        async with breaker.guard():
            pass


async def test_breaker_opens_on_consecutive_failures_only():
    class Down(Exception):
        pass

    breaker = AsyncCircuitBreaker("wallet", fail_max=2, reset_timeout=60,
                                  is_failure=lambda exc: isinstance(exc, Down))

    async def attempt(fail: bool):
        try:
            async with breaker.guard():
                if fail:
                    raise Down()
        except Down:
            pass

    for fail in (True, False, True, False, True):   # a success in between resets the count
        await attempt(fail)
    assert breaker.state == "closed"
    await attempt(True)                              # second failure in a row
    assert breaker.state == "open"


async def test_a_cancelled_trial_does_not_close_the_breaker():
    import asyncio

    class Down(Exception):
        pass

    breaker = AsyncCircuitBreaker("wallet", fail_max=1, reset_timeout=0.05,
                                  is_failure=lambda exc: isinstance(exc, Down))
    with pytest.raises(Down):
        async with breaker.guard():
            raise Down()
    assert breaker.state == "open"
    await asyncio.sleep(0.06)
    with pytest.raises(asyncio.CancelledError):
        async with breaker.guard():            # the trial, cancelled by its caller (no deadline passed)
            raise asyncio.CancelledError()
    assert breaker.state == "open"
    async with breaker.guard():                # the next trial may go, and succeeds
        pass
    assert breaker.state == "closed"


async def test_a_call_cancelled_by_its_deadline_counts_as_a_failure():
    import asyncio
    import time

    breaker = AsyncCircuitBreaker("wallet", fail_max=1, reset_timeout=60, is_failure=lambda exc: False)
    with pytest.raises(asyncio.CancelledError):
        async with breaker.guard(deadline=time.monotonic() - 0.001):
            raise asyncio.CancelledError()
    assert breaker.state == "open"


def test_metrics_listen_on_loopback_unless_explicitly_made_public():
    with pytest.raises(ConfigError) as refused:
        load_topology(env={"DIBOAS_WALLET_METRICS": "0.0.0.0:9101"})
    assert "services.wallet.metrics (DIBOAS_WALLET_METRICS) must be on loopback, got 0.0.0.0" in str(refused.value)
    assert "DIBOAS_PUBLIC_METRICS=on" in str(refused.value)
    public = load_topology(env={"DIBOAS_WALLET_METRICS": "0.0.0.0:9101", "DIBOAS_PUBLIC_METRICS": "on"})
    assert public.services["wallet"].metrics.host == "0.0.0.0"
    assert load_topology(env={"DIBOAS_WALLET_METRICS": "[::1]:9101"}).services["wallet"].metrics.host == "::1"
    with pytest.raises(ConfigError, match="DIBOAS_PUBLIC_METRICS\\): 'maybe' is not on/off"):
        load_topology(env={"DIBOAS_PUBLIC_METRICS": "maybe"})
    with pytest.raises(ConfigError, match="gateway.admin .* must be on loopback"):
        load_topology(env={"DIBOAS_GATEWAY_ADMIN": "0.0.0.0:9901"})


def test_a_deadline_block_bounds_the_calls_in_it_and_ends_with_it():
    assert current_deadline() is None
    with within(0.5):
        assert 0.4 < call_timeout(None, 5.0, "wallet") <= 0.5
        assert call_timeout(0.1, 5.0, "wallet") == 0.1        # a call's own shorter timeout wins
        with within(10):
            assert call_timeout(None, 5.0, "wallet") <= 0.5   # an inner block cannot extend the outer
    assert current_deadline() is None
    assert call_timeout(None, 5.0, "wallet") == 5.0
    with within(0.01):
        time.sleep(0.02)
        with pytest.raises(Exception, match="no time left to call wallet: the deadline has passed"):
            call_timeout(None, 5.0, "wallet")


@pytest.mark.parametrize("seconds", [0, -1, math.inf, math.nan, "2"])
def test_a_deadline_is_a_positive_finite_number(seconds):
    with pytest.raises(ValueError, match="greater than zero"):
        with within(seconds):
            pass


def test_refusals_are_masked_for_a_services_caller_and_not_for_a_client_program():
    masked = upstream_error(grpc.StatusCode.PERMISSION_DENIED, "reporting may not call wallet.CreateWallet",
                            "CALLER_NOT_PERMITTED", "wallet")
    assert masked.reason == "UPSTREAM_REFUSED"
    seen = upstream_error(grpc.StatusCode.PERMISSION_DENIED, "reporting may not call wallet.CreateWallet",
                          "CALLER_NOT_PERMITTED", "wallet", mask_refusals=False)
    assert isinstance(seen, PermissionDenied) and seen.reason == "CALLER_NOT_PERMITTED"
    assert seen.message == "wallet: reporting may not call wallet.CreateWallet"
    expired = upstream_error(grpc.StatusCode.UNAUTHENTICATED, "service token expired", "TOKEN_EXPIRED", "wallet",
                             mask_refusals=False)
    assert isinstance(expired, Unauthenticated) and expired.reason == "TOKEN_EXPIRED"


def test_a_caller_is_an_identity_of_the_topology_with_its_files(topology):
    me = Caller.load(topology, "operator")
    assert me.issuer.identity == "spiffe://diboas.local/client/operator" and me.files.name == "operator"
    with pytest.raises(ConfigError, match="'ops' is not an identity of this mesh .known: blockchain, compliance, gateway, operator"):
        Caller.load(topology, "ops")

"""Unit tests of runtime pieces that a real client cannot easily provoke."""
from __future__ import annotations

import asyncio
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

    def __init__(self, topology, remaining, identity="transaction"):
        self._pem = load_identity(topology.certs_dir, identity).cert
        self._spiffe = topology.identities()[identity].encode()
        self._dns = identity.encode()
        self._token = service_token(topology, "transaction", "wallet")
        self._remaining = remaining
        self.status = None

    def auth_context(self):
        return {"peer_spiffe_id": [self._spiffe], "x509_pem_cert": [self._pem]}

    def peer_identities(self):
        return [self._spiffe, b"localhost", self._dns]

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


async def test_past_max_concurrent_calls_an_outside_call_is_refused_at_once_a_services_and_health_run(topology):
    guard = ServerGuard(topology, topology.services["wallet"], default_deadline=5, tracing=RpcTracing(False),
                        max_concurrent_calls=2)
    release, ran = asyncio.Event(), []

    async def slow(request, context):
        ran.append(request)
        await release.wait()
        if request == "fails":
            raise ServiceUnavailable("down", reason="DOWN")
        return "reply"

    wallet = topology.services["wallet"]
    serve = guard._unary(_Method(wallet, "/diboas.wallet.v1.WalletService/GetWallet"), slow)
    health = guard._unary(_Method(wallet, "/grpc.health.v1.Health/Check"), slow)
    busy = [asyncio.create_task(serve(r, FakeContext(topology, 1.0))) for r in ("ok", "fails")]
    await asyncio.sleep(0)
    assert guard.calls_in_progress == 2
    refused = FakeContext(topology, 1.0, identity="gateway")
    with pytest.raises(Aborted):
        await serve("third", refused)
    # Refused before anything else ran: the handler never saw it, and the caller hears when to retry.
    assert ran == ["ok", "fails"] and refused.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "serving 2 calls" in refused.status.details and "again in 1 s" in refused.status.details
    assert ("retry-after", "1") in refused.status.trailing_metadata
    checked = asyncio.create_task(health("probe", FakeContext(topology, 1.0)))   # not counted: it runs
    from_the_mesh = asyncio.create_task(serve("delivery", FakeContext(topology, 1.0)))  # counted, not refused
    await asyncio.sleep(0)
    assert ran == ["ok", "fails", "probe", "delivery"] and guard.calls_in_progress == 3
    release.set()
    outcomes = await asyncio.gather(*busy, checked, from_the_mesh, return_exceptions=True)
    assert outcomes[0] == "reply" and isinstance(outcomes[1], Aborted) and outcomes[2:] == ["reply", "reply"]
    assert guard.calls_in_progress == 0                  # a failed call gives its place back too
    assert await serve("again", FakeContext(topology, 1.0)) == "reply"
    cancelled = asyncio.create_task(serve("cancelled", FakeContext(topology, 1.0)))
    release.clear()
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert guard.calls_in_progress == 0                  # and so does one its caller gave up on


def test_max_concurrent_calls_is_configured_or_refused_by_name():
    assert load_topology(env={}).defaults.max_concurrent_calls == 256
    assert load_topology(env={"DIBOAS_MAX_CONCURRENT_CALLS": "64"}).defaults.max_concurrent_calls == 64
    named = r"defaults.max_concurrent_calls \(or DIBOAS_MAX_CONCURRENT_CALLS\): (must be a whole|.many. is not a number)"
    for bad in ("0", "1.5", "many"):
        with pytest.raises(ConfigError, match=named):
            load_topology(env={"DIBOAS_MAX_CONCURRENT_CALLS": bad})


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

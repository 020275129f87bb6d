"""Deadlines, retries, circuit breakers and error mapping across a real two-hop call
(client -> transaction -> wallet), every hop over mTLS with service JWTs."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.domain import errors
from services.runtime.config import Address, BreakerPolicy, RetryPolicy
from services.runtime.status import error_info

from conftest import bearer, client_channel, service_token, user_token, with_service
from fakes import EchoWallets, transaction_build, wallet_build


async def _two_hops(topology, start_server, wallets: EchoWallets, **defaults):
    if defaults:
        topology = dataclasses.replace(topology, defaults=dataclasses.replace(topology.defaults, **defaults))
    wallet = await start_server(topology, "wallet", wallet_build(wallets))
    topology = with_service(topology, "wallet", address=Address("127.0.0.1", wallet.port))
    holder: dict = {}
    transaction = await start_server(topology, "transaction", transaction_build(holder))
    return topology, wallet, transaction, holder["runtime"].upstreams["wallet"]


async def _get_transaction(topology, port, name, timeout=None):
    async with client_channel(topology, "gateway", port, "transaction") as channel:
        stub = transaction_pb2_grpc.TransactionServiceStub(channel)
        return await stub.GetTransaction(transaction_pb2.GetTransactionRequest(name=name), timeout=timeout,
                                         metadata=bearer(user_token(topology)))


async def test_remaining_deadline_reaches_the_next_hop(topology, start_server):
    wallets = EchoWallets()
    topology, _, transaction, _ = await _two_hops(topology, start_server, wallets)
    reply = await _get_transaction(topology, transaction.port, "wallets/w1", timeout=2.0)
    assert reply.transaction.name == "wallets/w1"
    (remaining,) = wallets.seen_deadlines
    # The wallet saw the caller's 2 s budget, less what the first hop used: not the 5 s default.
    assert remaining is not None and 1.0 < remaining < 2.0


async def test_call_without_deadline_gets_the_default_at_the_next_hop(topology, start_server):
    wallets = EchoWallets()
    topology, _, transaction, _ = await _two_hops(topology, start_server, wallets, deadline_seconds=3.0)
    await _get_transaction(topology, transaction.port, "wallets/w1", timeout=None)
    (remaining,) = wallets.seen_deadlines
    assert remaining is not None and 2.0 < remaining <= 3.0


async def test_handler_running_past_the_default_deadline_is_stopped(topology, start_server):
    wallets = EchoWallets()
    topology = dataclasses.replace(topology, defaults=dataclasses.replace(topology.defaults, deadline_seconds=0.3))
    wallet = await start_server(topology, "wallet", wallet_build(wallets))
    async with client_channel(topology, "transaction", wallet.port, "wallet") as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wallet_pb2_grpc.WalletServiceStub(channel).GetWallet(
                wallet_pb2.GetWalletRequest(name="wallets/slow-3"),
                metadata=bearer(service_token(topology, "transaction", "wallet")))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_info(caught.value).reason == "DEFAULT_DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 2


async def test_unavailable_is_retried_by_grpc(topology, start_server):
    wallets = EchoWallets()
    wallets.fail_next_unavailable = 2
    topology, _, transaction, _ = await _two_hops(topology, start_server, wallets)
    reply = await _get_transaction(topology, transaction.port, "wallets/w1", timeout=5)
    assert reply.transaction.name == "wallets/w1"
    assert wallets.calls == 3  # two UNAVAILABLE answers, then success, within one logical call


async def test_upstream_errors_keep_their_code_and_reason(topology, start_server):
    wallets = EchoWallets()
    topology, _, transaction, _ = await _two_hops(topology, start_server, wallets)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get_transaction(topology, transaction.port, "wallets/missing", timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "WALLET_NOT_FOUND"
    assert "wallets/missing does not exist" in caught.value.details()


async def _failing_get_wallet(topology, start_server, name) -> grpc.aio.AioRpcError:
    """Call the wallet directly (as the transaction service) with a name that makes it fail."""
    wallet = await start_server(topology, "wallet", wallet_build(EchoWallets()))
    async with client_channel(topology, "transaction", wallet.port, "wallet") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wallet_pb2_grpc.WalletServiceStub(channel).GetWallet(
                wallet_pb2.GetWalletRequest(name=name), timeout=5,
                metadata=bearer(service_token(topology, "transaction", "wallet")))
    return caught.value


async def test_invalid_argument_carries_field_violations(topology, start_server):
    error = await _failing_get_wallet(topology, start_server, "wallets/bad")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
    assert violations == [("name", "must look like wallets/{wallet}")]


async def test_unexpected_exception_is_internal_without_details(topology, start_server):
    error = await _failing_get_wallet(topology, start_server, "wallets/boom")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "secret internal detail" not in error.details()
    assert "trace id" in error.details()


async def test_a_timeout_inside_the_handler_is_internal_not_a_deadline(topology, start_server):
    error = await _failing_get_wallet(topology, start_server, "wallets/timeout")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "a driver gave up" not in error.details()


async def test_breaker_opens_fails_fast_and_recovers(topology, start_server):
    topology = dataclasses.replace(topology, defaults=dataclasses.replace(
        topology.defaults, breaker=BreakerPolicy(fail_max=3, reset_timeout_seconds=1.0),
        retry=RetryPolicy(max_attempts=2, initial_backoff_seconds=0.01, max_backoff_seconds=0.01)))
    wallets = EchoWallets()
    wallet = await start_server(topology, "wallet", wallet_build(wallets))
    port = wallet.port
    topology = with_service(topology, "wallet", address=Address("127.0.0.1", port))
    holder: dict = {}
    await start_server(topology, "transaction", transaction_build(holder))
    upstream = holder["runtime"].upstreams["wallet"]
    stub = upstream.stub(wallet_pb2_grpc.WalletServiceStub)
    request = wallet_pb2.GetWalletRequest(name="wallets/w1")

    await stub.GetWallet(request, timeout=2)          # healthy
    await wallet.stop(grace=0)                        # the upstream goes away
    for _ in range(3):
        with pytest.raises(errors.ServiceUnavailable):
            await stub.GetWallet(request, timeout=2)
    assert upstream.breaker.state == "open"

    started = time.monotonic()
    with pytest.raises(errors.ServiceUnavailable) as caught:
        await stub.GetWallet(request, timeout=2)
    assert time.monotonic() - started < 0.05        # failed fast, no network
    assert caught.value.reason == "CIRCUIT_OPEN"
    assert "wallet is unavailable: circuit breaker open" in caught.value.message
    labels = {"service": "transaction", "upstream": "wallet"}
    assert REGISTRY.get_sample_value("diboas_circuit_breaker_open", labels) == 1

    # The upstream comes back on the same port; after the reset timeout one trial call closes it.
    wallets_again = EchoWallets()
    await start_server(with_service(topology, "wallet", address=Address("127.0.0.1", port)), "wallet",
                       wallet_build(wallets_again))
    reopened = time.monotonic()
    await asyncio.wait_for(upstream.channel.channel_ready(), timeout=5)   # reconnect backoff is capped at 2 s
    assert upstream.breaker.state == "open"
    await asyncio.sleep(max(0.0, 1.1 - (time.monotonic() - reopened)))
    calls_before = REGISTRY.get_sample_value("diboas_rpc_client_calls_total",
                                             {**labels, "method": "GetWallet", "code": "OK"}) or 0
    timed_before = REGISTRY.get_sample_value("diboas_rpc_client_latency_seconds_count",
                                             {**labels, "method": "GetWallet"}) or 0
    reply = await stub.GetWallet(request, timeout=2)
    assert reply.wallet.name == "wallets/w1"
    assert upstream.breaker.state == "closed"
    assert REGISTRY.get_sample_value("diboas_circuit_breaker_open", labels) == 0
    assert REGISTRY.get_sample_value("diboas_rpc_client_calls_total",
                                     {**labels, "method": "GetWallet", "code": "OK"}) == calls_before + 1
    # Every call, refused by the open breaker or answered, is timed per upstream method.
    assert REGISTRY.get_sample_value("diboas_rpc_client_latency_seconds_count",
                                     {**labels, "method": "GetWallet"}) == timed_before + 1


async def test_half_open_breaker_admits_one_trial_call(topology, start_server):
    topology = dataclasses.replace(topology, defaults=dataclasses.replace(
        topology.defaults, breaker=BreakerPolicy(fail_max=1, reset_timeout_seconds=0.3)))
    wallets = EchoWallets()
    wallet = await start_server(topology, "wallet", wallet_build(wallets))
    topology = with_service(topology, "wallet", address=Address("127.0.0.1", wallet.port))
    holder: dict = {}
    await start_server(topology, "transaction", transaction_build(holder))
    upstream = holder["runtime"].upstreams["wallet"]
    stub = upstream.stub(wallet_pb2_grpc.WalletServiceStub)

    wallets.fail_next_unavailable = 10                # every retry attempt fails: the call fails
    with pytest.raises(errors.ServiceUnavailable):
        await stub.GetWallet(wallet_pb2.GetWalletRequest(name="wallets/w1"), timeout=2)
    assert upstream.breaker.state == "open"
    wallets.fail_next_unavailable = 0
    await asyncio.sleep(0.35)
    calls_before = wallets.calls
    results = await asyncio.gather(
        *(stub.GetWallet(wallet_pb2.GetWalletRequest(name="wallets/slow-0.2"), timeout=2) for _ in range(5)),
        return_exceptions=True)
    succeeded = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, errors.ServiceUnavailable)]
    assert len(succeeded) == 1 and len(refused) == 4
    assert all("trial call is in flight" in r.message for r in refused)
    assert wallets.calls - calls_before == 1
    assert upstream.breaker.state == "closed"


@pytest.mark.parametrize("caller_timeout", [0.5, None])   # the caller's deadline, or the default one
async def test_breaker_opens_for_an_upstream_that_hangs(topology, start_server, caller_timeout):
    wallets = EchoWallets()
    topology, _, transaction, upstream = await _two_hops(
        topology, start_server, wallets, deadline_seconds=0.5,
        breaker=BreakerPolicy(fail_max=3, reset_timeout_seconds=30))
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _get_transaction(topology, transaction.port, "wallets/slow-3", timeout=caller_timeout)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert upstream.breaker.state == "open"
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get_transaction(topology, transaction.port, "wallets/w1", timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "CIRCUIT_OPEN"
    assert time.monotonic() - started < 0.2


async def test_an_upstream_refusing_this_service_is_internal_to_the_caller(topology, start_server):
    # A policy mistake inside the mesh: the wallet does not let the transaction service read wallets.
    topology = with_service(topology, "wallet", policy={"*": frozenset({"operator"})})
    topology, _, transaction, _ = await _two_hops(topology, start_server, EchoWallets())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get_transaction(topology, transaction.port, "wallets/w1", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL            # not the end caller's 403
    assert error_info(caught.value).reason == "UPSTREAM_REFUSED"
    assert "may not call" not in caught.value.details() and dict(error_info(caught.value).metadata) == {}


async def test_past_max_concurrent_calls_a_call_from_outside_the_mesh_is_refused_with_a_retry_delay(
        topology, start_server):
    """The gateway's call past the bound is refused at once; a service's call (an event delivery, a
    saga step) still runs, and so does a health check."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    topology = dataclasses.replace(topology, defaults=dataclasses.replace(topology.defaults, max_concurrent_calls=2))
    wallets = EchoWallets()
    server = await start_server(topology, "wallet", wallet_build(wallets))
    async with client_channel(topology, "transaction", server.port, "wallet") as mesh_channel, \
            client_channel(topology, "gateway", server.port, "wallet") as edge_channel:
        from_the_mesh = wallet_pb2_grpc.WalletServiceStub(mesh_channel)
        from_the_edge = wallet_pb2_grpc.WalletServiceStub(edge_channel)
        as_service, as_user = bearer(service_token(topology, "transaction", "wallet")), bearer(user_token(topology))

        def get(stub, metadata, name: str):
            return stub.GetWallet(wallet_pb2.GetWalletRequest(name=name), metadata=metadata, timeout=5)
        slow = [asyncio.ensure_future(get(from_the_edge, as_user, "wallets/slow-0.8")) for _ in range(2)]
        deadline = time.monotonic() + 5
        while wallets.calls < 2:
            assert time.monotonic() < deadline, "the slow calls never arrived"
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get(from_the_edge, as_user, "wallets/w1")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and wallets.calls == 2   # never ran
        assert "serving 2 calls" in refused.value.details() and "send it again in 1 s" in refused.value.details()
        info = error_info(refused.value)
        assert info.reason == "TOO_MANY_CALLS" and dict(info.metadata) == {"max_concurrent_calls": "2"}
        assert dict(refused.value.trailing_metadata())["retry-after"] == "1"
        retry = next(d for d in rpc_status.from_call(refused.value).details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR))
        delay = error_details_pb2.RetryInfo()
        retry.Unpack(delay)
        assert delay.retry_delay.seconds == 1
        # At the bound, a service's call still runs, and the service still answers its probes.
        assert (await get(from_the_mesh, as_service, "wallets/m1")).wallet.name == "wallets/m1"
        health = await health_pb2_grpc.HealthStub(edge_channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                       timeout=3)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert [r.wallet.name for r in await asyncio.gather(*slow)] == ["wallets/slow-0.8"] * 2
        assert (await get(from_the_edge, as_user, "wallets/w1")).wallet.name == "wallets/w1"   # places given back

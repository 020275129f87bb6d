"""End to end through the real Envoy, each test with a gateway (and services) of its own, set up
for what it checks: the rate limit, a service stopped behind the gateway, one trace from a REST
request to settlement, and the backlog's bound as 429. (tests/e2e/test_gateway.py has the tests
that share one mesh and gateway per shape.)"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import grpc
import pytest

from diboas.common.v1 import common_pb2
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.monitor import check_gateway
from services.runtime.config import Address, load_topology

from conftest import free_port, operator_calls, user_token, with_service
from meshkit import ORDER, Mesh, Process, mesh_processes, process_env, start_mesh, wait_serving
from test_gateway import Gateway, key

pytestmark = pytest.mark.slow


async def test_the_rate_limit_is_per_user_and_requests_without_a_valid_token_share_a_smaller_one(
        topology, start_server, tmp_path):
    mesh = await start_mesh(topology, start_server, ("provider",))
    gw = Gateway(mesh.topology, mesh.ports, tmp_path, DIBOAS_GATEWAY_RATE_LIMIT="1", DIBOAS_GATEWAY_RATE_LIMIT_BURST="3",
                 DIBOAS_GATEWAY_ANONYMOUS_RATE_LIMIT="1", DIBOAS_GATEWAY_ANONYMOUS_RATE_LIMIT_BURST="2")
    await gw.start(only_provider=True)
    try:
        alice, bob, carol = (user_token(mesh.topology, u, ("user",)) for u in ("alice", "bob", "carol"))
        head, payload, signature = user_token(mesh.topology, "mallory", ("user",)).split(".")
        forged = f"{head}.{payload[:-4]}AAAA.{signature}"              # its signature no longer matches
        # A flood without a token, with garbage and with a forged one: their own budget of 2 ...
        flood = [(await gw.call("GET", "/v1/providers", token))[0] for token in (None, "garbage", forged) * 10]
        assert flood[:2] == [401, 401] and flood.count(429) >= 25, flood
        # ... which leaves every user theirs: 3 at once, then 429 with a JSON body.
        replies = [await gw.call("GET", "/v1/providers", alice) for _ in range(6)]
        assert [r[0] for r in replies[:3]] == [200, 200, 200], [r[0] for r in replies]
        limited = [r for r in replies if r[0] == 429]
        assert limited and limited[0][1]["code"] == 8 and "rate limit" in limited[0][1]["message"]
        assert limited[0][2].get("x-diboas-rate-limited") == "true"
        # alice spent hers: bob and carol are served as if she had not.
        for user in (bob, carol):
            assert [(await gw.call("GET", "/v1/providers", user))[0] for _ in range(3)] == [200, 200, 200]
    finally:
        gw.process.stop()
        await mesh.close()


async def test_a_stopped_service_is_503_quickly_and_recovers_when_it_returns(topology, start_server, tmp_path):
    from services.provider.app import build as provider_app
    port = free_port()
    topology = with_service(topology, "provider", address=Address("127.0.0.1", port))
    provider = await start_server(topology, "provider", provider_app)
    gw = Gateway(topology, {"provider": port, **{n: free_port() for n in ORDER if n != "provider"}}, tmp_path)
    await gw.start(only_provider=True)
    token = user_token(topology, "alice", ("user",))
    try:
        await provider.stop(grace=0)
        started = time.monotonic()
        status, body, _ = await gw.call("GET", "/v1/providers", token)
        assert status == 503 and body["code"] == 14, body
        assert time.monotonic() - started < 2.0
        await start_server(topology, "provider", provider_app)   # back, on the same port
        deadline = time.monotonic() + 15
        while (status := (await gw.call("GET", "/v1/providers", token))[0]) != 200:
            assert time.monotonic() < deadline, f"still {status}"
            await asyncio.sleep(0.2)
    finally:
        gw.process.stop()


async def test_a_rest_send_is_one_trace_from_the_gateway_through_the_queue_and_events_to_settlement(pki, tmp_path):
    """One REST SEND: the gateway's span, CreateTransaction, the queued saga's hold (client and
    server), the event's delivery (relay -> the wallet's event sink) and the wallet's settlement
    are one trace, each span's parent in it (the gateway's: the caller's traceparent)."""
    spans_file = tmp_path / "spans.jsonl"
    env = process_env(pki, tmp_path, DIBOAS_TRACING="on", DIBOAS_TRACE_EXPORT=f"file:{spans_file}")
    topology = load_topology(env={k: v for k, v in env.items() if k.startswith("DIBOAS_")})
    processes = [Process(name, env, tmp_path) for name in (*ORDER, "gateway")]
    for process in processes[:-1]:
        process.start()
    try:
        for name in ORDER:
            await wait_serving(topology, name)
        processes[-1].start()
        deadline = time.monotonic() + 30
        while (await check_gateway(topology, timeout=1)).status != "SERVING":
            assert time.monotonic() < deadline, "the gateway did not become ready"
            await asyncio.sleep(0.1)
        gw = Gateway.__new__(Gateway)
        gw.http = topology.gateway.http.port
        ops = user_token(topology, "ops", ("operator",))
        wallets = []
        for owner in ("alice", "bob"):
            _, created, _ = await gw.call("POST", f"/v1/wallets?requestId={key()}", ops,
                                          {"ownerId": owner, "currencyCode": "USD"})
            wallets.append(created["wallet"]["name"])
        credit, channel = operator_calls(topology, topology.services["wallet"].address.port, "wallet",
                                         wallet_pb2_grpc.WalletServiceStub)
        async with channel:
            await credit("CreditWallet", wallet_pb2.CreditWalletRequest(
                wallet=wallets[0], amount=common_pb2.Money(currency_code="USD", amount="5.00"), request_id=key()))
        trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        status, body, _ = await gw.call(
            "POST", f"/v1/transactions?requestId={key()}", ops,
            {"type": "TRANSACTION_TYPE_SEND", "sourceWallet": wallets[0], "destinationWallet": wallets[1],
             "amount": {"currencyCode": "USD", "amount": "1.00"}},
            headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
        assert status == 200, body
        deadline = time.monotonic() + 30
        while (await gw.call("GET", f"/v1/{wallets[1]}", ops))[1]["wallet"]["availableBalance"]["amount"] != "1.00":
            assert time.monotonic() < deadline, "the SEND was not settled into bob's wallet"
            await asyncio.sleep(0.1)
        expected = {("gateway", "SERVER", "ingress"),
                    ("transaction", "SERVER", "/diboas.transaction.v1.TransactionService/CreateTransaction"),
                    ("transaction", "CONSUMER", "process financial.transactions"),
                    ("transaction", "CLIENT", "/diboas.wallet.v1.WalletService/BatchCreateHolds"),
                    ("wallet", "SERVER", "/diboas.wallet.v1.WalletService/BatchCreateHolds"),
                    ("wallet", "CONSUMER", "process transaction.completed")}
        deadline = time.monotonic() + 20          # Envoy exports its spans every few seconds
        while True:
            spans = [json.loads(line) for line in spans_file.read_text().splitlines()] if spans_file.exists() else []
            ours = [s for s in spans if s["context"]["trace_id"] == f"0x{trace_id}"]
            seen = {(s["resource"]["attributes"]["service.name"], s["kind"].removeprefix("SpanKind."), s["name"])
                    for s in ours}
            if expected <= seen or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert expected <= seen, expected - seen
        by_id = {s["context"]["span_id"]: s for s in ours}
        assert {s["parent_id"] for s in ours} - set(by_id) == {f"0x{caller_span}"}       # no orphan, no other trace

        def one(service: str, kind: str, name: str) -> dict:
            [span] = [s for s in ours if (s["resource"]["attributes"]["service.name"], s["kind"], s["name"])
                      == (service, f"SpanKind.{kind}", name)]
            return span

        def parent(span: dict, service: str, kind: str, name: str) -> dict:
            found = by_id[span["parent_id"]]
            assert (found["resource"]["attributes"]["service.name"], found["kind"], found["name"]) == (
                service, f"SpanKind.{kind}", name), (span["name"], found["name"])
            return found
        # from the settlement up to the caller: wallet <- the saga's (last) attempt <- the request
        settlement = one("wallet", "CONSUMER", "process transaction.completed")
        saga = parent(settlement, "transaction", "CONSUMER", "process financial.transactions")
        create = parent(saga, "transaction", "SERVER", "/diboas.transaction.v1.TransactionService/CreateTransaction")
        gateway_span = parent(create, "gateway", "SERVER", "ingress")
        assert gateway_span["parent_id"] == f"0x{caller_span}"
        hold_client = parent(one("wallet", "SERVER", "/diboas.wallet.v1.WalletService/BatchCreateHolds"),
                             "transaction", "CLIENT", "/diboas.wallet.v1.WalletService/BatchCreateHolds")
        assert by_id[hold_client["parent_id"]]["name"] == "process financial.transactions"
        attempts = [s for s in ours if s["name"] == "process financial.transactions"]
        assert {s["parent_id"] for s in attempts} == {create["context"]["span_id"]}        # a retry too
        assert all([link["context"]["span_id"] for link in s["links"]] == [create["context"]["span_id"]]
                   for s in attempts)
        assert [link["context"]["span_id"] for link in settlement["links"]] == [saga["context"]["span_id"]]
        # the relay's call that carried the event: a trace of its own, linked to the saga's span
        deadline = time.monotonic() + 20
        while True:
            spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
            sends = [s for s in spans if s["name"] == "send wallet"
                     and saga["context"]["span_id"] in [link["context"]["span_id"] for link in s["links"]]]
            batch = {(s["resource"]["attributes"]["service.name"], s["kind"], s["name"]) for s in spans
                     if sends and s["context"]["trace_id"] == sends[0]["context"]["trace_id"]}
            if len(batch) == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert len(sends) == 1 and batch == {("transaction", "SpanKind.CLIENT", "send wallet"),
                         ("transaction", "SpanKind.CLIENT", "/diboas.events.v1.EventSinkService/DeliverEvents"),
                         ("wallet", "SpanKind.SERVER", "/diboas.events.v1.EventSinkService/DeliverEvents")}
    finally:
        for process in reversed(processes):
            process.stop()


async def test_past_the_backlog_bound_a_transaction_is_refused_with_429_and_a_retry_delay(pki, tmp_path):
    """Sagas in hand (here: two leased by another instance) fill a bound of 2: a new
    transaction is RESOURCE_EXHAUSTED with RetryInfo over gRPC and 429 with Retry-After over REST,
    with nothing written; once they finish, the same request goes through."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from diboas.transaction.v1 import transaction_pb2
    from services.runtime.db import Database
    from services.runtime.messaging.queue import WorkQueue
    from services.transaction.app import MIGRATIONS, QUEUE
    from services.transaction.tables import parked_work_items, work_items

    async with mesh_processes(pki, tmp_path, "services", DIBOAS_QUEUE_MAX_BACKLOG="2") as (topology, _):
        ports = {name: topology.services[name].address.port for name in ORDER}
        mesh, gw = Mesh(topology, ports), Gateway(topology, ports, tmp_path)
        db = Database(topology.services["transaction"].database, MIGRATIONS)
        elsewhere = WorkQueue(db, work_items, QUEUE, parked=parked_work_items)
        try:
            await gw.start()
            alice = user_token(topology, "alice", ("user",))
            _, created, _ = await gw.call("POST", f"/v1/wallets?requestId={key()}", alice, {"currencyCode": "USD"})
            deposit = {"type": "TRANSACTION_TYPE_DEPOSIT", "destinationWallet": created["wallet"]["name"],
                       "amount": {"currencyCode": "USD", "amount": "5.00"}}
            with db.transaction() as connection:
                held = [elsewhere.enqueue(connection, f"held{n}", leased=True) for n in range(2)]
            metrics, deadline = topology.services["transaction"].metrics, time.monotonic() + 10
            while _backlog(metrics) < 2:                                   # until the service has counted them
                assert time.monotonic() < deadline, "the backlog was never counted"
                await asyncio.sleep(0.05)
            request_id = key()
            status, body, headers = await gw.call("POST", f"/v1/transactions?requestId={request_id}", alice, deposit)
            assert status == 429, body
            assert body["code"] == 8 and "the bound is 2" in body["message"], body
            assert body["details"][0]["reason"] == "BACKLOG_FULL"
            retry = next(d for d in body["details"] if d["@type"].endswith("google.rpc.RetryInfo"))
            after = int(headers["retry-after"])
            assert 1 <= after <= 60 and retry["retryDelay"] == f"{after}s", (headers, body)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await mesh.transactions.CreateTransaction(transaction_pb2.CreateTransactionRequest(
                    request_id=key(), transaction=transaction_pb2.Transaction(
                        type=transaction_pb2.TRANSACTION_TYPE_DEPOSIT, destination_wallet=created["wallet"]["name"],
                        amount=common_pb2.Money(currency_code="USD", amount="5.00"))),
                    metadata=mesh.as_gateway, timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert 1 <= int(dict(refused.value.trailing_metadata())["retry-after"]) <= 60
            details = rpc_status.from_call(refused.value).details
            assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in details)
            _, listed, _ = await gw.call("GET", "/v1/transactions", alice)
            assert listed.get("transactions", []) == []                          # nothing was written

            with db.transaction() as connection:
                for claimed in held:
                    elsewhere.done(connection, claimed)
            deadline = time.monotonic() + 10
            while (answer := await gw.call("POST", f"/v1/transactions?requestId={request_id}", alice, deposit))[0] != 200:
                assert answer[0] == 429 and time.monotonic() < deadline, answer
                await asyncio.sleep(0.1)
            assert answer[1]["transaction"]["state"] == "TRANSACTION_STATE_PENDING"
        finally:
            gw.process.stop()
            await mesh.close()
            db.close()


def _backlog(metrics) -> float:
    """diboas_backlog of the transaction service, from its metrics endpoint."""
    import urllib.request
    text = urllib.request.urlopen(f"http://{metrics.host}:{metrics.port}/metrics", timeout=5).read().decode()
    line = next((line for line in text.splitlines()
                 if line.startswith('diboas_backlog{service="transaction"}')), None)
    return float(line.split()[-1]) if line else 0.0

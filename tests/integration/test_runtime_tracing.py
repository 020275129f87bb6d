"""OpenTelemetry through the real server guard and client stubs: one trace across hops, trace
ids in logs, and streaming RPCs (reflection, health Watch) traced too."""
from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from decimal import Decimal

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.runtime.config import Address
from services.runtime.logs import JsonFormatter

from conftest import bearer, client_channel, user_token, with_service
from fakes import ApprovingCompliance, EchoWallets, transaction_build, wallet_build

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)   # once per process; only this module installs one
    return exporter


@pytest.fixture
async def two_hops(topology, start_server, spans):
    spans.clear()
    wallet = await start_server(topology, "wallet", wallet_build(EchoWallets()), tracing_enabled=True)
    topology = with_service(topology, "wallet", address=Address("127.0.0.1", wallet.port))
    transaction = await start_server(topology, "transaction", transaction_build({}), tracing_enabled=True)
    return topology, wallet, transaction


async def _call(topology, port, name):
    metadata = bearer(user_token(topology)) + (
        ("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN}-01"),)
    async with client_channel(topology, "gateway", port, "transaction") as channel:
        return await transaction_pb2_grpc.TransactionServiceStub(channel).GetTransaction(
            transaction_pb2.GetTransactionRequest(name=name), metadata=metadata, timeout=5)


async def test_one_trace_spans_every_hop(two_hops, spans):
    topology, _, transaction = two_hops
    await _call(topology, transaction.port, "wallets/w1")
    finished = spans.get_finished_spans()
    by_name = {s.name: s for s in finished}
    server_tx = by_name["/diboas.transaction.v1.TransactionService/GetTransaction"]
    wallet_spans = [s for s in finished if s.name == "/diboas.wallet.v1.WalletService/GetWallet"]
    assert len(wallet_spans) == 2                       # the client span in transaction, the server span in wallet
    assert {format(s.context.trace_id, "032x") for s in finished} == {TRACE_ID}
    assert format(server_tx.parent.span_id, "016x") == PARENT_SPAN
    client_span = next(s for s in wallet_spans if s.kind == trace.SpanKind.CLIENT)
    server_span = next(s for s in wallet_spans if s.kind == trace.SpanKind.SERVER)
    assert client_span.parent.span_id == server_tx.context.span_id
    assert server_span.parent.span_id == client_span.context.span_id


async def test_failure_logs_carry_the_trace_id(two_hops):
    topology, _, transaction = two_hops
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("diboas.rpc")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await _call(topology, transaction.port, "wallets/missing")
    finally:
        logger.removeHandler(handler)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    not_found = [e for e in entries if e.get("code") == "NOT_FOUND"]
    assert not_found, entries
    assert all(e["trace_id"] == TRACE_ID for e in not_found)
    assert {e["level"] for e in not_found} == {"info"}


async def test_streaming_rpcs_work_with_tracing_on(two_hops):
    topology, wallet, _ = two_hops
    async with client_channel(topology, "operator", wallet.port, "wallet") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [r async for r in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=3)]
    names = {s.name for s in replies[0].list_services_response.service}
    assert "diboas.wallet.v1.WalletService" in names


async def test_server_streaming_upstream_calls_are_traced(two_hops, spans):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    topology, wallet, _ = two_hops
    holder: dict = {}
    from services.runtime.server import MeshServer
    caller = MeshServer(topology, "transaction", transaction_build(holder), tracing_enabled=True,
                        serve_metrics_endpoint=False, unready_seconds=0)
    await caller.start()
    try:
        stub = holder["runtime"].upstreams["wallet"].stub(health_pb2_grpc.HealthStub)
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        async for reply in stream:
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            break
        stream.cancel()
        await asyncio.sleep(0.1)
    finally:
        await caller.stop(grace=0)
    watch = [s for s in spans.get_finished_spans() if s.name == "/grpc.health.v1.Health/Watch"]
    assert {s.kind for s in watch} == {trace.SpanKind.CLIENT, trace.SpanKind.SERVER}
    client = next(s for s in watch if s.kind == trace.SpanKind.CLIENT)
    assert client.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


# --- messages: work-queue items and events continue the trace that made them ----------------------

def _hex(span_id: int) -> str:
    return format(span_id, "016x")


def _in_one_trace(finished, trace_id: int) -> list:
    """The spans of one trace, after checking that each one's parent is in it too."""
    ours = [s for s in finished if s.context.trace_id == trace_id]
    ids = {s.context.span_id for s in ours}
    orphans = [s.name for s in ours if s.parent is not None and s.parent.span_id not in ids]
    assert not orphans, f"spans whose parent is not in the trace: {orphans}"
    return ours


async def test_a_queued_saga_its_retries_and_its_event_stay_in_the_trace_that_created_it(
        topology, start_server, spans, tmp_path):
    """The real wallet (server spans on) and the transaction service's queue, worker, outbox and
    relay: the wallet is down at the saga's first attempt, so the item is retried. Every attempt,
    its hold calls, the event's delivery and the wallet's settlement are in the creating trace."""
    from sqlalchemy import select

    from services.domain.money import Money
    from services.runtime.auth import TokenIssuer
    from services.runtime.client import Upstream
    from services.runtime.config import BreakerPolicy
    from services.runtime.db import Database
    from services.runtime.messaging.queue import WorkQueue
    from services.runtime.messaging.relay import DeliveryPolicy, MeshTransport, Relay
    from services.runtime.messaging.secure import KeyRing
    from services.runtime.messaging.store import Outbox
    from services.runtime.tls import load_identity
    from services.transaction.app import MIGRATIONS, QUEUE
    from services.transaction.domain import SEND, Transaction
    from services.transaction.service import TransactionService
    from services.transaction.tables import messaging, parked_work_items, work_items
    from services.transaction.wallet_client import WalletClient
    from services.wallet.app import build as wallet_app

    from conftest import free_port
    from meshkit import Mesh

    topology = dataclasses.replace(topology, defaults=dataclasses.replace(
        topology.defaults, breaker=BreakerPolicy(fail_max=1000, reset_timeout_seconds=0.1)))
    topology = with_service(topology, "wallet", address=Address("127.0.0.1", free_port()))
    wallet = await start_server(topology, "wallet", wallet_app, tracing_enabled=True)
    mesh = Mesh(topology, {"wallet": wallet.port})
    alice, bob = await mesh.wallet("alice", "10.00"), await mesh.wallet("bob", "0")

    db = Database(f"sqlite:///{tmp_path}/transaction.db", MIGRATIONS)
    db.migrate()
    me = topology.services["transaction"]
    files = load_identity(topology.certs_dir, "transaction")
    upstream = Upstream(topology, "transaction", topology.services["wallet"], files, TokenIssuer(me.identity, files.key))
    service = TransactionService(db, WalletClient(upstream), WorkQueue(db, work_items, QUEUE, parked=parked_work_items),
                                 Outbox(messaging, me.identity, lambda topic: ["wallet"], KeyRing.load(topology.certs_dir)),
                                 compliance=ApprovingCompliance())
    relay = Relay(db, messaging, MeshTransport({"wallet": upstream}), "transaction",
                  DeliveryPolicy(initial_backoff=0.01, max_backoff=0.05))
    stop = asyncio.Event()
    worker = None
    try:
        spans.clear()
        draft = Transaction("", SEND, "", alice, bob, Money.parse("USD", "1.00"), "", "", None, None, None)
        with trace.get_tracer("test").start_as_current_span("POST /v1/transactions", kind=trace.SpanKind.SERVER) as request:
            tx_id = (await service.create("r1", "fp", draft, lambda tx: tx.id.encode())).decode()
        await wallet.stop(grace=0)                                   # the saga's first hold finds it down

        def last_error() -> str:
            with db.reading() as connection:
                return connection.execute(select(work_items.c.last_error)).scalar_one()

        async def until(condition, what: str) -> None:
            deadline = asyncio.get_running_loop().time() + 30
            while not await condition():
                assert asyncio.get_running_loop().time() < deadline, what
                await asyncio.sleep(0.02)
        worker = asyncio.create_task(service.work(stop, idle_seconds=0.01))
        await until(lambda: db.run(last_error), "the first attempt did not fail")
        await start_server(topology, "wallet", wallet_app, tracing_enabled=True)   # back, same port

        async def completed() -> bool:
            return (await service.get(tx_id)).state == "COMPLETED"
        await until(completed, "the retried saga did not complete")
        await until(relay.run_once, "the event was not delivered")
        assert await mesh.balances(bob) == (Decimal("1.00"), 0) and await mesh.balances(alice) == (Decimal("9.00"), 0)
    finally:
        stop.set()
        if worker is not None:
            await worker
        await upstream.channel.close()
        await mesh.close()
        db.close()

    ours = _in_one_trace(spans.get_finished_spans(), request.get_span_context().trace_id)
    root = request.get_span_context().span_id
    attempts = sorted((s for s in ours if s.name == f"process {QUEUE}"), key=lambda s: s.start_time)
    assert len(attempts) >= 2                                        # a failed attempt, then the one that completed
    assert all(s.parent.span_id == root and s.kind == trace.SpanKind.CONSUMER for s in attempts)
    assert [s.attributes["messaging.diboas.attempt"] for s in attempts] == list(range(1, len(attempts) + 1))
    assert all(not s.status.is_ok for s in attempts[:-1]) and attempts[-1].status.is_ok
    assert all(link.context.span_id == root for s in attempts for link in s.links)
    holds = [s for s in ours if s.name == "/diboas.wallet.v1.WalletService/BatchCreateHolds"]
    clients = [s for s in holds if s.kind == trace.SpanKind.CLIENT]
    assert {s.parent.span_id for s in clients} == {s.context.span_id for s in attempts}   # one per attempt
    # a batch of one: made for that attempt, which its span links to
    assert all([link.context.span_id for link in s.links] == [s.parent.span_id] for s in clients)
    [server] = [s for s in holds if s.kind == trace.SpanKind.SERVER]
    assert server.parent.span_id in {s.context.span_id for s in clients}
    [settle] = [s for s in ours if s.name == "process transaction.completed"]
    assert settle.parent.span_id == attempts[-1].context.span_id and settle.status.is_ok   # the event's own trace
    assert [link.context.span_id for link in settle.links] == [attempts[-1].context.span_id]
    assert settle.attributes["messaging.message.conversation_id"] == f"transactions/{tx_id}"
    # The relay's window went in one call, in a trace of its own linked to each event's creation.
    [send] = [s for s in spans.get_finished_spans() if s.name == "send wallet"]
    assert send.parent is None and send.kind == trace.SpanKind.CLIENT
    assert [link.context.span_id for link in send.links] == [attempts[-1].context.span_id]
    assert send.attributes["messaging.batch.message_count"] == 1
    batch = _in_one_trace(spans.get_finished_spans(), send.context.trace_id)
    client = next(s for s in batch if s.kind == trace.SpanKind.CLIENT and s.name.endswith("/DeliverEvents"))
    server = next(s for s in batch if s.kind == trace.SpanKind.SERVER and s.name.endswith("/DeliverEvents"))
    assert client.parent.span_id == send.context.span_id and server.parent.span_id == client.context.span_id


async def test_a_work_item_or_event_without_a_trace_context_is_handled_in_a_new_trace(spans, tmp_path, pki):
    """Items queued and events written outside any span (or with a context that does not parse)
    work as before; their handling starts a new trace."""
    from sqlalchemy import MetaData

    from diboas.common.v1 import common_pb2
    from diboas.events.v1 import events_pb2
    from services.runtime.db import Database
    from services.runtime.messaging.queue import WorkQueue
    from services.runtime.messaging.secure import KeyRing, seal
    from services.runtime.messaging.sink import EventSink
    from services.runtime.messaging.store import messaging_tables
    from services.runtime.tracing import MessageTracing
    from services.transaction.app import MIGRATIONS
    from services.transaction.tables import parked_work_items, work_items

    db = Database(f"sqlite:///{tmp_path}/queue.db", MIGRATIONS)
    db.migrate()
    queue = WorkQueue(db, work_items, "q", parked=parked_work_items)
    with db.transaction() as connection:
        queue.enqueue(connection, "untraced")
    claimed = queue.claim()
    assert (claimed.item, claimed.traceparent, claimed.tracestate) == ("untraced", "", "")
    db.close()

    metadata = MetaData()
    tables = messaging_tables(metadata)
    sink_db = Database(f"sqlite:///{tmp_path}/sink.db", migrations=None)
    metadata.create_all(sink_db.engine)
    handled = []
    sink = EventSink(sink_db, tables, "wallet", KeyRing.load(pki),
                     {"transaction.completed": lambda connection, envelope, payload, now: handled.append(envelope.id)})
    spans.clear()
    tracing = MessageTracing()
    try:
        with tracing.processing("q", str(claimed.id), claimed.traceparent, claimed.tracestate, attempt=1):
            pass
        for n, traceparent in enumerate(("", "00-not-a-trace-context-01")):
            envelope = events_pb2.EventEnvelope(id=f"e{n}", source="test", spec_version="1.0",
                                                type="transaction.completed", traceparent=traceparent)
            envelope.time.GetCurrentTime()
            seal(envelope, events_pb2.TransactionCompleted(amount=common_pb2.Money(currency_code="USD", amount="1")
                                                           ).SerializeToString(), None)
            reply = await sink.DeliverEvent(events_pb2.DeliverEventRequest(envelope=envelope, attempt=1), None)
            assert not reply.duplicate
    finally:
        sink_db.close()
    assert handled == ["e0", "e1"]
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["process q", "process transaction.completed", "process transaction.completed"]
    assert all(s.parent is None and not s.links and s.status.is_ok for s in finished)
    assert len({s.context.trace_id for s in finished}) == 3            # three new traces


class PlainWallets(wallet_pb2_grpc.WalletServiceServicer):
    """GetWallet as EchoWallets answers it, for a bare grpc.aio server."""

    async def GetWallet(self, request, context):
        if request.name == "wallets/missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "wallet wallets/missing does not exist")
        return wallet_pb2.GetWalletResponse(wallet=wallet_pb2.Wallet(name=request.name, owner_id="owner-1",
                                                                     currency_code="USD"))


def _described(span) -> dict:
    return {"name": span.name, "kind": span.kind, "status": span.status.status_code,
            "attributes": dict(span.attributes)}


async def test_the_runtimes_spans_are_those_of_opentelemetry_instrumentation_grpc(two_hops, spans):
    """The same GetWallet calls, answered OK and NOT_FOUND, made once through the runtime (the
    transaction service's upstream stub, the wallet's guard) and once through a bare grpc.aio
    client and server with opentelemetry-instrumentation-grpc's interceptors: the spans have the
    same names, kinds, statuses and rpc.* attributes (docs/decisions.md, 11)."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor

    topology, _, transaction = two_hops
    runtime = {}
    for name in ("wallets/w1", "wallets/missing"):
        spans.clear()
        try:
            await _call(topology, transaction.port, name)
        except grpc.aio.AioRpcError:
            pass
        for span in spans.get_finished_spans():
            if span.name == "/diboas.wallet.v1.WalletService/GetWallet":
                runtime[(name, span.kind)] = _described(span)

    server = grpc.aio.server(interceptors=[aio_server_interceptor()])
    wallet_pb2_grpc.add_WalletServiceServicer_to_server(PlainWallets(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    instrumented = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=aio_client_interceptors()) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            for name in ("wallets/w1", "wallets/missing"):
                spans.clear()
                try:
                    await stub.GetWallet(wallet_pb2.GetWalletRequest(name=name), timeout=5)
                except grpc.aio.AioRpcError:
                    pass
                for span in spans.get_finished_spans():
                    instrumented[(name, span.kind)] = _described(span)
    finally:
        await server.stop(None)

    assert set(runtime) == set(instrumented) == {(n, k) for n in ("wallets/w1", "wallets/missing")
                                                  for k in (trace.SpanKind.CLIENT, trace.SpanKind.SERVER)}
    for key, theirs in instrumented.items():
        ours = runtime[key]
        assert (ours["name"], ours["kind"], ours["status"]) == (theirs["name"], theirs["kind"], theirs["status"]), key
        rpc_keys = {k for k in theirs["attributes"] if k.startswith("rpc.")}
        assert {k: ours["attributes"].get(k) for k in rpc_keys} == {k: theirs["attributes"][k] for k in rpc_keys}, key
        # What the package adds beyond rpc.*: the peer's address, which the runtime leaves out.
        assert set(theirs["attributes"]) - rpc_keys <= {"net.peer.ip", "net.peer.port", "net.peer.name"}, key

"""OpenTelemetry through the real server guard and client stubs: one trace across hops, trace
ids in logs, and streaming RPCs (reflection, health Watch) traced too."""
from __future__ import annotations

import asyncio
import io
import json
import logging

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from services.runtime.config import Address
from services.runtime.logs import JsonFormatter

from conftest import bearer, client_channel, user_token, with_service
from fakes import EchoWallets, transaction_build, wallet_build

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

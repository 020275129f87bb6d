"""Spans over OTLP: a real service process, started with the standard OpenTelemetry variables,
sends its spans to an OTLP/gRPC receiver started here (the gateway's own span collector), in the
trace the caller started; a collector that is away costs a request nothing."""
from __future__ import annotations

import asyncio
import io
import json
import time

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from gateway.collector import SpanWriter
from services.runtime.tracing import make_tracer_provider

from conftest import bearer, client_channel, free_port, service_token
from meshkit import mesh_processes

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
METHOD = "/diboas.wallet.v1.WalletService/ListWallets"


async def receiver() -> tuple[grpc.aio.Server, io.StringIO, int]:
    out = io.StringIO()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(SpanWriter(out), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, out, port


async def list_wallets(topology) -> None:
    port = topology.services["wallet"].address.port
    async with client_channel(topology, "operator", port, "wallet") as channel:
        metadata = (*bearer(service_token(topology, "operator", "wallet")),
                    ("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"))
        await wallet_pb2_grpc.WalletServiceStub(channel).ListWallets(wallet_pb2.ListWalletsRequest(),
                                                                     metadata=metadata, timeout=10)


async def test_a_service_exports_its_spans_over_otlp(pki, tmp_path):
    server, out, port = await receiver()
    try:
        async with mesh_processes(pki, tmp_path, "services", ("wallet",), DIBOAS_TRACING="on",
                                  OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                                  OTEL_BSP_SCHEDULE_DELAY="100",
                                  OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test") as (topology, _):
            await list_wallets(topology)
            deadline = time.monotonic() + 20
            while METHOD not in out.getvalue():
                assert time.monotonic() < deadline, "no span reached the receiver"
                await asyncio.sleep(0.1)
    finally:
        await server.stop(0)
    spans = [json.loads(line) for line in out.getvalue().splitlines()]
    span = next(s for s in spans if s["name"] == METHOD)
    assert span["kind"] == "SpanKind.SERVER"
    assert span["context"]["trace_id"] == "0x" + TRACE_ID            # the caller's trace, continued
    assert span["resource"]["attributes"]["service.name"] == "wallet"
    assert span["resource"]["attributes"]["deployment.environment"] == "test"


async def test_without_the_variables_nothing_is_exported(pki, tmp_path, monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    provider = make_tracer_provider("wallet", "none", tmp_path)
    assert provider._active_span_processor._span_processors == ()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "payments-eu")
    assert make_tracer_provider("wallet", "none", tmp_path).resource.attributes["service.name"] == "payments-eu"


async def test_a_collector_that_is_away_costs_a_request_nothing(pki, tmp_path):
    away = f"http://127.0.0.1:{free_port()}"
    async with mesh_processes(pki, tmp_path, "services", ("wallet",), DIBOAS_TRACING="on",
                              OTEL_EXPORTER_OTLP_ENDPOINT=away, OTEL_BSP_SCHEDULE_DELAY="100") as (topology, processes):
        started = time.monotonic()
        for _ in range(20):
            await list_wallets(topology)
        assert time.monotonic() - started < 5
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 8           # the shutdown's flush gives up after 3 s; it does not hang
    assert "Traceback" not in (tmp_path / "wallet.log").read_text()


@pytest.mark.parametrize("env", [{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_TRACES_EXPORTER": "otlp"}])
def test_an_unsupported_protocol_is_refused_with_one_line(tmp_path, env, monkeypatch):
    from services.config_files import ConfigError
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        make_tracer_provider("wallet", "none", tmp_path)

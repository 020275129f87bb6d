"""Spans that go nowhere are not built: with no span processor, the runtime makes only the
context a span carries (ids, sampling flag, trace state), as the SDK would have made it."""
from __future__ import annotations

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.runtime.tracing import MessageTracing, RpcTracing, Spans, current_trace_headers

PARENT_ID = 0x0AF7651916CD43DD8448EB211C80319C
SAMPLED = {"traceparent": f"00-{PARENT_ID:032x}-b7ad6b7169203331-01", "tracestate": "vendor=value"}
UNSAMPLED = {"traceparent": f"00-{PARENT_ID:032x}-b7ad6b7169203331-00"}


def provider(ratio: float = 1.0, exporter: InMemorySpanExporter | None = None) -> TracerProvider:
    made = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    if exporter is not None:
        made.add_span_processor(SimpleSpanProcessor(exporter))
    return made


def remote(carrier: dict):
    return TraceContextTextMapPropagator().extract(carrier)


def test_a_provider_without_a_processor_gets_context_only_spans_and_one_with_a_processor_real_ones():
    assert Spans(provider().get_tracer("t")).records is False
    assert Spans(provider(exporter=InMemorySpanExporter()).get_tracer("t")).records is True
    assert Spans(trace.NoOpTracer()).records is True        # not the SDK's: it starts its own


@pytest.mark.parametrize("carrier", [SAMPLED, UNSAMPLED], ids=["sampled", "unsampled"])
def test_a_child_carries_what_the_sdk_would_give_it_without_being_recorded(carrier):
    sdk = provider(exporter=InMemorySpanExporter()).get_tracer("t")
    spans = Spans(provider().get_tracer("t"))
    parent = remote(carrier)
    built = sdk.start_span("/a.B/C", context=parent, kind=SpanKind.SERVER).get_span_context()
    made = spans.start("/a.B/C", context=parent, kind=SpanKind.SERVER)
    assert not made.is_recording()
    ctx = made.get_span_context()
    assert ctx.trace_id == built.trace_id == PARENT_ID
    assert ctx.trace_flags == built.trace_flags
    assert ctx.trace_state == built.trace_state
    assert ctx.span_id not in (0, 0xB7AD6B7169203331) and ctx.is_valid and not ctx.is_remote


@pytest.mark.parametrize("ratio, sampled", [(1.0, True), (0.0, False)])
def test_a_root_gets_a_new_trace_and_the_samplers_decision(ratio, sampled):
    spans = Spans(provider(ratio).get_tracer("t"))
    first = spans.start("root", context=otel_context.Context()).get_span_context()
    second = spans.start("root", context=otel_context.Context()).get_span_context()
    assert first.is_valid and first.trace_id != second.trace_id
    assert first.trace_flags.sampled is sampled
    assert first.trace_flags.random_trace_id    # the SDK's id generator makes random ids


def test_rpc_and_message_spans_carry_the_trace_across_hops_when_nothing_records():
    client, server, messages = (RpcTracing(tracer=provider().get_tracer("t")),
                                RpcTracing(tracer=provider().get_tracer("t")),
                                MessageTracing(tracer=provider().get_tracer("t")))
    span, headers = client.start_client("/a.B/C", {})
    sent = span.get_span_context()
    assert headers["traceparent"] == f"00-{sent.trace_id:032x}-{sent.span_id:016x}-{int(sent.trace_flags):02x}"
    assert sent.trace_flags.sampled

    served, token = server.start_server("/a.B/C", {}, headers, "ua")
    try:
        current = trace.get_current_span().get_span_context()
        assert current is served.get_span_context()
        assert current.trace_id == sent.trace_id and current.span_id != sent.span_id
        # An event written here carries this trace, and handling it continues the same trace.
        carried = current_trace_headers()
        assert carried["traceparent"].split("-")[1] == f"{sent.trace_id:032x}"
        with messages.processing("wallet.events", "m1", carried["traceparent"], "", attempt=1) as handling:
            assert handling.get_span_context().trace_id == sent.trace_id
            assert not handling.is_recording()
    finally:
        RpcTracing.detach(token)
    RpcTracing.end(served, 0, server=True)
    RpcTracing.end(span, 0)


def test_a_failure_inside_a_message_span_propagates_when_nothing_records():
    messages = MessageTracing(tracer=provider().get_tracer("t"))
    with pytest.raises(ValueError):
        with messages.processing("q", "m1", "", "", attempt=1):
            raise ValueError("boom")
    with pytest.raises(ValueError):
        with messages.sending("wallet", []):
            raise ValueError("boom")
    assert not trace.get_current_span().get_span_context().is_valid    # nothing left current


def test_with_a_processor_the_same_calls_record_spans_with_their_attributes():
    exporter = InMemorySpanExporter()
    tracer = provider(exporter=exporter).get_tracer("t")
    client, server = RpcTracing(tracer=tracer), RpcTracing(tracer=tracer)
    span, headers = client.start_client("/a.B/C", RpcTracing.attributes("/a.B/C"))
    served, token = server.start_server("/a.B/C", RpcTracing.attributes("/a.B/C"), headers, "ua")
    RpcTracing.detach(token)
    RpcTracing.end(served, 0, server=True)
    RpcTracing.end(span, 5)
    finished = {s.kind: s for s in exporter.get_finished_spans()}
    assert finished[SpanKind.SERVER].attributes["rpc.user_agent"] == "ua"
    assert finished[SpanKind.SERVER].parent.span_id == finished[SpanKind.CLIENT].context.span_id
    assert finished[SpanKind.CLIENT].attributes["rpc.grpc.status_code"] == 5

"""The gateway's span collector: Envoy exports its spans over OTLP/gRPC to this small receiver
(loopback, in the gateway process), which writes them where the services write theirs
(DIBOAS_TRACE_EXPORT: one JSON line per span in <state_dir>/traces/gateway.jsonl, a shared
file:PATH, or the console), in the same shape. So one REST request is one trace across the
gateway and every service it reached, in one place."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import TextIO

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

_KINDS = {trace_pb2.Span.SPAN_KIND_SERVER: "SpanKind.SERVER", trace_pb2.Span.SPAN_KIND_CLIENT: "SpanKind.CLIENT",
          trace_pb2.Span.SPAN_KIND_INTERNAL: "SpanKind.INTERNAL", trace_pb2.Span.SPAN_KIND_PRODUCER: "SpanKind.PRODUCER",
          trace_pb2.Span.SPAN_KIND_CONSUMER: "SpanKind.CONSUMER"}


def _value(v: common_pb2.AnyValue):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(v)


def _attributes(pairs) -> dict:
    return {a.key: _value(a.value) for a in pairs}


def span_record(span: trace_pb2.Span, resource: dict) -> dict:
    """A span in the shape of the services' JSON lines (the OpenTelemetry SDK's span JSON)."""
    return {
        "name": span.name,
        "context": {"trace_id": "0x" + span.trace_id.hex(), "span_id": "0x" + span.span_id.hex(),
                    "trace_state": span.trace_state},
        "kind": _KINDS.get(span.kind, "SpanKind.INTERNAL"),
        "parent_id": "0x" + span.parent_span_id.hex() if span.parent_span_id else None,
        "start_time_unix_nano": span.start_time_unix_nano, "end_time_unix_nano": span.end_time_unix_nano,
        "status": {"status_code": trace_pb2.Status.StatusCode.Name(span.status.code)},
        "attributes": _attributes(span.attributes),
        "resource": {"attributes": resource},
    }


class SpanWriter(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out: TextIO):
        self._out, self._lock = out, threading.Lock()

    async def Export(self, request, context):
        lines = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            resource.setdefault("service.name", "gateway")
            for scope in resource_spans.scope_spans:
                lines += [json.dumps(span_record(s, resource), separators=(",", ":")) + "\n" for s in scope.spans]
        with self._lock:
            self._out.write("".join(lines))
            self._out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def open_output(export: str, state_dir: Path) -> TextIO | None:
    """Where the gateway's spans go, by DIBOAS_TRACE_EXPORT; None for `none`."""
    kind, _, target = export.partition(":")
    if kind == "none":
        return None
    if kind == "console":
        return sys.stdout
    path = Path(target) if target else state_dir / "traces" / "gateway.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", buffering=1)


async def start_collector(out: TextIO) -> tuple[grpc.aio.Server, int]:
    """A plaintext OTLP trace receiver on a free loopback port (only Envoy, on this host, talks to it)."""
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(SpanWriter(out), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port

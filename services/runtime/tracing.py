"""OpenTelemetry tracing: a span per RPC on both sides, W3C trace context across hops.

The spans follow the gRPC semantic conventions of opentelemetry-instrumentation-grpc
(name "/package.Service/Method", kind SERVER or CLIENT, rpc.system, rpc.service,
rpc.method, rpc.grpc.status_code, and rpc.user_agent on the server; a test compares them with
the package's), but they are made inside the mesh's own call wrappers:
the instrumentation's interceptors cost about a third of a trivial RPC's throughput here
(docs/benchmarks.md), most of it in wrapping, not in the spans.

Messages that wait in a table (work-queue items, events) carry the W3C context of the span
that made them, and the span that handles one continues that trace (MessageTracing; the
choice of child over link is in docs/decisions.md).

observability.trace_export (DIBOAS_TRACE_EXPORT) chooses where finished spans go:
  none     (default) the context is propagated, no span is built or written (Spans);
  console  one JSON object per span on stderr;
  file     one JSON line per span in <state_dir>/traces/<service>.jsonl (or file:/some/path.jsonl).

Beside it, the standard OpenTelemetry variables send spans to a collector over OTLP/gRPC:
OTEL_TRACES_EXPORTER=otlp, or an OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
(unless OTEL_TRACES_EXPORTER says none), with the exporter's own variables (headers, certificate,
timeout). OTEL_SERVICE_NAME names the spans' service instead of the process name, and
OTEL_RESOURCE_ATTRIBUTES adds to the resource. OTEL_TRACES_SAMPLER (and its _ARG), when set,
replaces observability.trace_sample_ratio.
"""
from __future__ import annotations

import contextvars
import os
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased, _get_from_env_or_default
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.config_files import ConfigError

_W3C = TraceContextTextMapPropagator()
OTLP_TIMEOUT_SECONDS = 3
TRACE_HEADERS = frozenset(_W3C.fields)  # traceparent, tracestate
# UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS: the codes that mark a
# server span as an error (OpenTelemetry's gRPC conventions); others are the caller's.
SERVER_FAULTS = frozenset({2, 4, 12, 13, 14, 15})
# The contexts of the callers a batch call is made for (services/runtime/coalesce.py): its
# CLIENT span links to each one's span.
_BATCH_OF: contextvars.ContextVar[Sequence[contextvars.Context]] = contextvars.ContextVar("diboas_batch_of",
                                                                                       default=())


def batch_links(callers: Sequence[contextvars.Context]) -> None:
    """The next call made in the current context is made for these callers (a batch): its
    CLIENT span links to each one's span."""
    _BATCH_OF.set(callers)


class Spans:
    """Starts the spans of one tracer. When the tracer's provider sends spans nowhere (no span
    processor: trace_export none and no OTLP exporter, the default), a span is only what it carries
    to others: a non-recording span with the trace and span ids, sampling flag and trace state the
    SDK would have given it. Traces still cross every hop and logs still carry trace ids; what is
    not built is the span object that would be dropped when it ends (docs/benchmarks.md)."""

    __slots__ = ("tracer", "records", "_sampler", "_ids")

    def __init__(self, tracer: trace.Tracer):
        self.tracer = tracer
        # The SDK's tracer shares its provider's span processor; `_span_processors` (SDK 1.45,
        # pinned) lists what it hands spans to. Any other tracer (a proxy before a provider is
        # installed, a no-op one) starts its spans itself, as before.
        processors = getattr(getattr(tracer, "span_processor", None), "_span_processors", None)
        self.records = processors != ()
        self._sampler = getattr(tracer, "sampler", None)
        self._ids = getattr(tracer, "id_generator", None)

    def start(self, name: str, context=None, kind: SpanKind = SpanKind.INTERNAL, attributes: dict | None = None,
              links: Sequence[Link] = ()) -> trace.Span:
        if self.records:
            return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes, links=links)
        # As the SDK's Tracer.start_span decides ids and flags, without the span.
        parent = trace.get_current_span(context).get_span_context()
        root = not parent.is_valid
        trace_id = self._ids.generate_trace_id() if root else parent.trace_id
        sampling = self._sampler.should_sample(context, trace_id, name, kind, attributes, links)
        flags = TraceFlags.SAMPLED if sampling.decision.is_sampled() else TraceFlags.DEFAULT
        if self._ids.is_trace_id_random() if root else parent.trace_flags.random_trace_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        return NonRecordingSpan(SpanContext(trace_id, self._ids.generate_span_id(), is_remote=False,
                                            trace_flags=TraceFlags(flags), trace_state=sampling.trace_state))


class RpcTracing:
    """Starts and ends the spans of one side of an RPC. Cheap when tracing is off (no-op tracer)."""

    def __init__(self, enabled: bool = True, tracer: trace.Tracer | None = None):
        self.enabled = enabled
        self._spans = Spans(tracer or trace.get_tracer("diboas.mesh"))

    @staticmethod
    def attributes(full_method: str) -> dict:
        service, _, method = full_method.lstrip("/").rpartition("/")
        return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

    def start_server(self, full_method: str, attributes: dict, trace_headers: dict | None, user_agent: str = ""):
        """A SERVER span, child of the caller's context, made current; returns (span, token),
        or (None, None) when tracing is off. The caller's user agent is rpc.user_agent, as the
        instrumentation has it."""
        if not self.enabled:
            return None, None
        parent = _W3C.extract(trace_headers) if trace_headers else None
        span = self._spans.start(full_method, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        if user_agent and self._spans.records:
            span.set_attribute("rpc.user_agent", user_agent)
        return span, otel_context.attach(trace.set_span_in_context(span))

    def start_client(self, full_method: str, attributes: dict) -> tuple[trace.Span | None, dict]:
        """A CLIENT span, child of the current one (and linked to the span of every caller of a
        batch: `batch_links`); returns it and the headers that carry it (None and no headers when
        tracing is off)."""
        if not self.enabled:
            return None, {}
        callers, links = _BATCH_OF.get(), []
        if callers:
            _BATCH_OF.set(())       # the batch call is made for them; calls made after it are not
            if self._spans.records:
                links = [Link(context) for context in (caller.run(_span_context) for caller in callers)
                         if context.is_valid]
        span = self._spans.start(full_method, kind=SpanKind.CLIENT, attributes=attributes, links=links)
        headers: dict = {}
        _W3C.inject(headers, context=trace.set_span_in_context(span))
        return span, headers

    @staticmethod
    def end(span: trace.Span | None, code: int, message: str = "", server: bool = False) -> None:
        """End the span with the call's gRPC status code. An error status, as the gRPC semantic
        conventions (and the instrumentation) have it: a client's for any code but OK, a server's
        only for the codes that are its own fault (a NOT_FOUND is the caller's business)."""
        if span is None:
            return
        span.set_attribute("rpc.grpc.status_code", code)
        if code != 0 and (not server or code in SERVER_FAULTS):
            span.set_status(Status(StatusCode.ERROR, message))
        span.end()

    @staticmethod
    def detach(token) -> None:
        if token is not None:
            otel_context.detach(token)


def _span_context() -> trace.SpanContext:
    return trace.get_current_span().get_span_context()


def current_trace_headers() -> dict[str, str]:
    """W3C traceparent/tracestate of the current span (empty outside a trace), e.g. for an event."""
    headers: dict[str, str] = {}
    _W3C.inject(headers)
    return headers


def _creation_context(traceparent: str, tracestate: str):
    """The context a message carries, as an OpenTelemetry Context; None when it carries none
    (or one that does not parse: the message is handled all the same, in a new trace)."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent, "tracestate": tracestate} if tracestate else {"traceparent": traceparent}
    context = _W3C.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


class MessageTracing:
    """Spans of messages that wait in a table between the span that made them and the one that
    handles them: work-queue items and events. Both carry the W3C context of the span current
    when they were written (`current_trace_headers()`); this continues it. Nothing is done when
    tracing is off."""

    SYSTEM = "diboas"   # messaging.system: the mesh's own queue and outbox/relay

    def __init__(self, enabled: bool = True, tracer: trace.Tracer | None = None):
        self.enabled = enabled
        self._spans = Spans(tracer or trace.get_tracer("diboas.messaging"))

    def sending(self, destination: str, messages: list):
        """A context manager for one call that sends several messages (envelopes with their
        traceparent/tracestate) created elsewhere: a CLIENT span "send <destination>" in a trace
        of its own, linked to each message's creation context (the OpenTelemetry messaging
        conventions for a batch), current while the call runs. Nothing when tracing is off."""
        if not self.enabled:
            return nullcontext()
        links, attributes = [], None
        if self._spans.records:
            for message in messages:
                created = _creation_context(message.traceparent, message.tracestate)
                if created is not None:
                    links.append(Link(trace.get_current_span(created).get_span_context()))
            attributes = {"messaging.system": self.SYSTEM, "messaging.operation.type": "send",
                          "messaging.operation.name": "send", "messaging.destination.name": destination,
                          "messaging.batch.message_count": len(messages)}
        span = self._spans.start(f"send {destination}", context=otel_context.Context(), kind=SpanKind.CLIENT,
                                 attributes=attributes, links=links)
        return trace.use_span(span, end_on_exit=True, record_exception=False)

    @contextmanager
    def processing(self, destination: str, message_id: str, traceparent: str, tracestate: str, *,
                   attempt: int, conversation: str = "", consumer: str = "") -> Iterator[trace.Span | None]:
        """A CONSUMER span "process <destination>", current while one message is handled (the
        OpenTelemetry messaging conventions). Its parent is the message's creation context, or
        the current span when that already continues the same trace (an event delivered by an
        RPC that carried it); it also links to the creation context. A message without one
        (or with one that does not parse) is handled in the current trace, or a new one. A
        failure marks the span ERROR and propagates."""
        if not self.enabled:
            yield None
            return
        creation = _creation_context(traceparent, tracestate)
        links, parent = (), None
        if creation is not None:
            created = trace.get_current_span(creation).get_span_context()
            links = (Link(created),) if self._spans.records else ()
            if trace.get_current_span().get_span_context().trace_id != created.trace_id:
                parent = creation
        attributes = None
        if self._spans.records:
            attributes = {"messaging.system": self.SYSTEM, "messaging.operation.type": "process",
                          "messaging.operation.name": "process", "messaging.destination.name": destination,
                          "messaging.message.id": message_id, "messaging.diboas.attempt": attempt}
            if conversation:
                attributes["messaging.message.conversation_id"] = conversation
            if consumer:
                attributes["messaging.consumer.group.name"] = consumer
        # start and attach, not a current-span context manager: the same span, without two
        # layers of generator context managers around every message.
        span = self._spans.start(f"process {destination}", context=parent, kind=SpanKind.CONSUMER,
                                 attributes=attributes, links=links)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, getattr(exc, "message", None) or repr(exc)))
            raise
        finally:
            otel_context.detach(token)
            span.end()


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line (safe across processes)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(s.to_json(indent=None) + "\n" for s in spans)
        with self._lock:
            self._file.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def _sampler(sample_ratio: float, env) -> Sampler:
    if env.get("OTEL_TRACES_SAMPLER"):
        return _get_from_env_or_default()       # the SDK reads OTEL_TRACES_SAMPLER and its _ARG
    return ParentBased(TraceIdRatioBased(sample_ratio))


def _otlp_wanted(env) -> bool:
    exporters = {e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if "otlp" in exporters:
        return True
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return bool(endpoint) and "none" not in exporters


def _otlp_exporter(env) -> SpanExporter:
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol != "grpc":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: '{protocol}' is not supported here; use grpc")
    # Endpoint, TLS and headers come from the OTEL_EXPORTER_OTLP_* variables. The timeout too when
    # one is set; else a short one, so a collector that is away holds a stopping service back
    # by seconds, not the exporter's default ten.
    timeout = env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT")
    return OTLPSpanExporter() if timeout else OTLPSpanExporter(timeout=OTLP_TIMEOUT_SECONDS)


def make_tracer_provider(service: str, export: str, state_dir: Path, sample_ratio: float = 1.0,
                         env=os.environ) -> TracerProvider:
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; an explicit
    # OTEL_SERVICE_NAME wins over the process name.
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource, sampler=_sampler(sample_ratio, env))
    if _otlp_wanted(env):
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
    kind, _, target = export.partition(":")
    if kind == "none":
        pass
    elif kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(service_name=service)))
    elif kind == "file":
        path = Path(target) if target else state_dir / "traces" / f"{service}.jsonl"
        provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(path), schedule_delay_millis=500))
    else:
        raise ConfigError(f"DIBOAS_TRACE_EXPORT: '{export}' is not one of none, console, file, file:PATH")
    return provider


def install(provider: TracerProvider) -> None:
    """Make `provider` the process's global tracer provider (once per process)."""
    trace.set_tracer_provider(provider)

"""OpenTelemetry tracing: W3C trace context in and out of every RPC, spans exported as configured.

observability.trace_export (DIBOAS_TRACE_EXPORT) chooses where finished spans go:
  none     (default) spans are made and the context is propagated, nothing is written;
  console  one JSON object per span on stderr;
  file     one JSON line per span in <state_dir>/traces/<service>.jsonl (or file:/some/path.jsonl).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from .config import ConfigError


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one compact JSON object per line (safe across processes)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(json.loads(s.to_json()), separators=(",", ":")) + "\n" for s in spans)
        with self._lock:
            self._file.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def make_tracer_provider(service: str, export: str, state_dir: Path, sample_ratio: float = 1.0) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
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

"""The stacks the runtime benchmark compares, and the tracing each one installs.

  bare             plaintext grpc.aio server and channel, no interceptors, bare stub;
  bare-tls         the same with mTLS (optional: what TLS alone costs);
  full             MeshServer as "wallet" called through Upstream as "transaction", with the
                   tracing of the default configuration: an SDK TracerProvider, spans exported as
                   observability.trace_export says (DIBOAS_TRACE_EXPORT; "none" by default, in
                   which case only the trace context is carried: services/runtime/tracing.py, Spans);
  full-exported    the same with every span built and written, one JSON line each, to a file in
                   the process's temporary folder: what recording and exporting spans costs;
  full-no-tracing  the same runtime with tracing off and no tracer provider.
"""
from __future__ import annotations

from pathlib import Path

STACKS = ("bare", "full", "full-exported", "full-no-tracing")
OPTIONAL_STACKS = ("bare-tls",)
ALL_STACKS = STACKS + OPTIONAL_STACKS
MESH_STACKS = ("full", "full-exported", "full-no-tracing")


def install_tracing(stack: str, service: str, folder: str) -> bool:
    """Installs the tracer provider `stack` runs with, as `service`, exporting (when it exports to a
    file) into `folder`; returns whether the stack traces."""
    if stack not in ("full", "full-exported"):
        return False
    from services.runtime import tracing
    from services.runtime.config import load_topology
    observability = load_topology().observability
    export = observability.trace_export if stack == "full" else f"file:{Path(folder) / f'{service}-spans.jsonl'}"
    tracing.install(tracing.make_tracer_provider(service, export, Path(folder), observability.trace_sample_ratio))
    return True

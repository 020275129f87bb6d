"""Request-scoped values, set by the server interceptor and read by clients and handlers."""
from __future__ import annotations

import contextvars

# Absolute deadline (time.monotonic()) of the RPC being served; clients pass the rest on.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("diboas_deadline", default=None)
# Short name of the authenticated caller of the RPC being served (e.g. "transaction").
CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("diboas_caller", default=None)

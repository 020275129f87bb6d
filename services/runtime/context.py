"""Request-scoped values of the RPC being served, set by the server guard and read by clients
(the deadline to pass on) and handlers (who is calling)."""
from __future__ import annotations

import contextvars


class CallInfo:
    __slots__ = ("caller", "deadline")

    def __init__(self, caller: str, deadline: float):
        self.caller = caller        # short name of the authenticated caller, e.g. "transaction"
        self.deadline = deadline    # absolute, on time.monotonic()'s clock


CURRENT_CALL: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("diboas_call", default=None)


def current_caller() -> str | None:
    call = CURRENT_CALL.get()
    return call.caller if call else None


def current_deadline() -> float | None:
    call = CURRENT_CALL.get()
    return call.deadline if call else None

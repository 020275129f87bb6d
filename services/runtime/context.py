"""Request-scoped values of the RPC being served, set by the server guard and read by clients
(the deadline to pass on) and handlers (who is calling)."""
from __future__ import annotations

import contextvars


class CallInfo:
    __slots__ = ("caller", "deadline", "user")

    def __init__(self, caller: str, deadline: float, user=None):
        self.caller = caller        # short name of the authenticated caller, e.g. "transaction"
        self.deadline = deadline    # absolute, on time.monotonic()'s clock
        self.user = user            # services.runtime.users.User when the gateway calls for a user


CURRENT_CALL: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("diboas_call", default=None)


def outside_the_call() -> contextvars.Context:
    """The current context without the call being served: for work a request starts that goes on
    after it has answered (it keeps neither the call's deadline nor its caller)."""
    context = contextvars.copy_context()
    context.run(CURRENT_CALL.set, None)
    return context


def current_caller() -> str | None:
    call = CURRENT_CALL.get()
    return call.caller if call else None


def current_deadline() -> float | None:
    call = CURRENT_CALL.get()
    return call.deadline if call else None


def current_user():
    """The external user the call is served for (the gateway's calls), or None."""
    call = CURRENT_CALL.get()
    return call.user if call else None

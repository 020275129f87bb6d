"""Request-scoped values of the RPC being served, set by the server guard and read by clients
(the deadline to pass on) and handlers (who is calling)."""
from __future__ import annotations

import contextlib
import contextvars
import math
import time


class CallInfo:
    __slots__ = ("caller", "deadline", "user")

    def __init__(self, caller: str | None, deadline: float, user=None):
        self.caller = caller        # short name of the authenticated caller, e.g. "transaction" (None: no RPC served)
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


@contextlib.contextmanager
def within(seconds: float):
    """A deadline for the work in this block: every call to an upstream made in it gets at most
    what is left of `seconds` (or of the deadline of the RPC being served, when that comes first).
    For a program that serves no RPC, this is what the server guard does for a service."""
    if isinstance(seconds, bool) or not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a deadline is a finite number of seconds greater than zero, got {seconds!r}")
    call = CURRENT_CALL.get()
    deadline = time.monotonic() + seconds
    if call is None:
        info = CallInfo(None, deadline)
    else:
        info = CallInfo(call.caller, min(deadline, call.deadline), call.user)
    token = CURRENT_CALL.set(info)
    try:
        yield
    finally:
        CURRENT_CALL.reset(token)

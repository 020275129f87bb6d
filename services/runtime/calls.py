"""What every call to an upstream gets, over the network (client.py) or in the same process
(local.py) alike: its timeout under the deadline of the RPC being served, and its metrics."""
from __future__ import annotations

import sys
import time

import grpc

from services.domain import errors

from .context import current_deadline
from .metrics import CLIENT_CALLS, CLIENT_LATENCY


def call_timeout(timeout: float | None, default: float, upstream: str) -> float:
    """How long a call to `upstream` may take: the smaller of its own timeout and what is left of
    the deadline of the RPC being served; `default` when there is neither."""
    deadline = current_deadline()
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise errors.DeadlineExceeded(f"no time left to call {upstream}: the deadline has passed")
        # A little less than what is left, so the upstream's DEADLINE_EXCEEDED reaches us (and
        # our caller gets an answer) before our own deadline cancels the work.
        remaining -= min(0.02, remaining / 10)
        return remaining if timeout is None else min(timeout, remaining)
    return default if timeout is None else timeout


def call_observer(caller: str, upstream: str, method: str):
    """observe(code, started): count a call by its code and record its latency, with the label
    children resolved once per method rather than on every call."""
    counters = {code: CLIENT_CALLS.labels(caller, upstream, method, code.name) for code in grpc.StatusCode}
    latency = CLIENT_LATENCY.labels(caller, upstream, method)

    def observe(code: grpc.StatusCode, started: float) -> None:
        counters[code].inc()
        latency.observe(time.perf_counter() - started)
    return observe


def service_descriptor(stub_class: type):
    """The ServiceDescriptor of a generated stub class (WalletServiceStub ...), from its module."""
    pb2 = sys.modules[stub_class.__module__.removesuffix("_grpc")]
    return pb2.DESCRIPTOR.services_by_name[stub_class.__name__.removesuffix("Stub")]

"""An upstream served in the same process: its servicers called directly, no network, no
serialization. What the caller sees is what it would see over the mesh:

  * the same client adapters: `upstream.stub(WalletServiceStub)` gives an object with the
    stub's methods, so WalletClient, ProviderClient, ChainClient and the event relay's transport
    do not know which kind of upstream they have;
  * the upstream's policy in the topology (a caller it does not allow is refused, as the server
    guard refuses it), and the caller's identity, without a user, for the upstream's handler;
  * the deadline: the call's own timeout or what is left of the RPC being served, enforced;
  * the same domain errors, turned into what a caller sees of an upstream's failure by the one
    function the network client uses too (status.upstream_error): same class, message and reason;
    anything unexpected is logged with its traceback and reaches the caller as UPSTREAM_INTERNAL;
  * the same metrics (client side, and the upstream's server side) and a CLIENT span.
The upstream's request validation, ownership rules and idempotency records are its servicer's
and use cases', so they are the same code either way.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Mapping

import grpc

from services.domain import errors

from .calls import call_observer, call_timeout, service_descriptor
from .config import ServiceConfig, Topology
from .context import CURRENT_CALL, CallInfo
from .logs import SERVICE
from .metrics import MethodMetrics
from .status import bounded, code_of, upstream_error
from .tracing import RpcTracing

log = logging.getLogger("diboas.rpc")

# The services served in this process so far: service name -> {gRPC service full name -> servicer}.
Neighbours = Mapping[str, Mapping[str, object]]


class _LocalStub:
    """A generated stub's unary methods, each calling the upstream's servicer method."""

    def __init__(self, call_for, descriptor, servicer):
        for method in descriptor.methods:
            if method.client_streaming or method.server_streaming:
                continue   # no streaming RPC is called between services
            setattr(self, method.name, call_for(f"/{descriptor.full_name}/{method.name}",
                                                getattr(servicer, method.name)))


class LocalUpstream:
    """One upstream in this process (see the module docstring)."""

    def __init__(self, topology: Topology, caller: str, upstream: ServiceConfig, servicers: Mapping[str, object],
                 *, tracing: bool = True):
        self.name = upstream.name
        self._caller = caller
        self._upstream = upstream
        self._servicers = servicers
        self._default_deadline = topology.defaults.deadline_seconds
        self._tracing = RpcTracing(tracing)
        self._stubs: dict[type, _LocalStub] = {}

    def stub(self, stub_class):
        stub = self._stubs.get(stub_class)
        if stub is None:
            descriptor = service_descriptor(stub_class)
            servicer = self._servicers.get(descriptor.full_name)
            if servicer is None:
                raise LookupError(f"{self.name} serves no {descriptor.full_name} in this process")
            stub = self._stubs[stub_class] = _LocalStub(self._call, descriptor, servicer)
        return stub

    async def close(self) -> None:
        pass

    def _call(self, full_method: str, behaviour):
        caller, upstream = self._caller, self._upstream.name
        method = full_method.rpartition("/")[2]
        allowed = caller in self._upstream.allowed_callers(method)
        observe = call_observer(caller, upstream, method)
        served = MethodMetrics(upstream, method)
        attributes = {**RpcTracing.attributes(full_method), "diboas.in_process": True}
        default_deadline, tracing = self._default_deadline, self._tracing

        async def call(request, *, timeout=None, metadata=None, wait_for_ready=None):
            code, started = grpc.StatusCode.UNAVAILABLE, time.perf_counter()
            span, _ = tracing.start_client(full_method, attributes)
            token = None
            try:
                if not allowed:
                    code = grpc.StatusCode.PERMISSION_DENIED
                    raise upstream_error(code, f"{caller} may not call {upstream}.{method}", "CALLER_NOT_PERMITTED",
                                         upstream)
                budget = call_timeout(timeout, default_deadline, upstream)
                token = CURRENT_CALL.set(CallInfo(caller, time.monotonic() + budget, None))
                serving = SERVICE.set(upstream)
                timer = asyncio.timeout(budget)
                try:
                    async with timer:
                        response = await behaviour(request, None)
                except TimeoutError:
                    if not timer.expired():
                        raise      # the upstream's own, unexpected: INTERNAL below
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                    raise upstream_error(code, "Deadline Exceeded", None, upstream) from None
                except errors.DomainError as exc:
                    code = code_of(exc)
                    raise upstream_error(code, bounded(exc.message), exc.reason, upstream) from None
                code = grpc.StatusCode.OK
                return response
            except errors.DomainError as exc:
                code = getattr(exc, "upstream_code", None) or code_of(exc)
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:   # noqa: BLE001 - as the server guard: logged here, INTERNAL to the caller
                code = grpc.StatusCode.INTERNAL
                log.error("unhandled error in %s.%s (called in-process by %s)", upstream, method, caller, exc_info=exc,
                          extra={"method": method, "code": code.name})
                raise upstream_error(code, "internal error", None, upstream) from None
            finally:
                if token is not None:
                    CURRENT_CALL.reset(token)
                    SERVICE.reset(serving)
                observe(code, started)
                served.observe(code.name, time.perf_counter() - started)
                RpcTracing.end(span, code.value[0])
        return call

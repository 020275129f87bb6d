"""The one server interceptor: authentication, policy, deadlines, errors, metrics, logs.

Everything a request passes through before and after its handler lives here, in a fixed
order, so there is one obvious place to read it and only one wrapper on the hot path:
  1. caller identity from the mTLS certificate (SPIFFE URI SAN);
  2. the service JWT, verified against that certificate (skipped for health and reflection,
     which still need a mesh certificate);
  3. the per-RPC policy of mesh.yaml (PERMISSION_DENIED otherwise);
  4. the deadline: a call that arrives expired is refused, one without a deadline gets the
     default; the absolute deadline is published for clients to pass on;
  5. domain errors become canonical codes with google.rpc.Status details; anything else is
     INTERNAL with a trace id (logged with its traceback, never sent);
  6. metrics per method and a log line for every failure.
Tracing is OpenTelemetry's own interceptor, installed in front of this one.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import lru_cache

import grpc
from cryptography import x509
from opentelemetry import trace

from . import errors
from .auth import TokenVerifier
from .config import ServiceConfig, Topology
from .context import CALLER, DEADLINE
from .metrics import MethodMetrics
from .status import code_of, internal_status, to_rpc_status

log = logging.getLogger("diboas.rpc")

# Infrastructure services: any mesh certificate may use them, without a service token.
OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})


@lru_cache(maxsize=256)
def _uri_sans(cert_pem: bytes) -> tuple[str, ...]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def peer_identity(context: grpc.aio.ServicerContext) -> tuple[str, bytes | None]:
    """The caller's SPIFFE id (verified by gRPC's TLS layer) and certificate PEM."""
    auth = context.auth_context()
    spiffe = auth.get("peer_spiffe_id")
    pem = (auth.get("x509_pem_cert") or [None])[0]
    if spiffe:
        return spiffe[0].decode(), pem
    if pem is None:
        raise errors.Unauthenticated("no client certificate was presented", reason="NO_PEER_CERTIFICATE")
    uris = [u for u in _uri_sans(pem) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise errors.Unauthenticated("the client certificate has no single SPIFFE URI SAN", reason="NO_SPIFFE_ID")
    return uris[0], pem


@dataclass(frozen=True)
class _MethodRule:
    name: str
    open: bool
    callers: frozenset[str]
    metrics: MethodMetrics


class MeshServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, topology: Topology, service: ServiceConfig, default_deadline: float):
        self._topology = topology
        self._service = service
        self._verifier = TokenVerifier(audience=service.identity)
        self._default_deadline = default_deadline
        self._domain = f"{service.name}.{topology.trust_domain}"
        self._rules: dict[str, _MethodRule] = {}

    def _rule(self, full_method: str) -> _MethodRule:
        rule = self._rules.get(full_method)
        if rule is None:
            grpc_service, _, name = full_method.lstrip("/").rpartition("/")
            rule = self._rules[full_method] = _MethodRule(
                name=name, open=grpc_service in OPEN_SERVICES,
                callers=self._service.allowed_callers(name),
                metrics=MethodMetrics(self._service.name, name),
            )
        return rule

    def _authorize(self, rule: _MethodRule, context: grpc.aio.ServicerContext) -> str:
        identity, pem = peer_identity(context)
        caller = self._topology.name_of(identity)
        if caller is None:
            raise errors.PermissionDenied(f"{identity} is not an identity of this mesh", reason="UNKNOWN_IDENTITY")
        if rule.open:
            return caller
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = value[7:] if value.startswith("Bearer ") else value
                break
        self._verifier.verify(token, identity, pem)
        if caller not in rule.callers:
            raise errors.PermissionDenied(f"{caller} may not call {self._service.name}.{rule.name}",
                                          reason="CALLER_NOT_PERMITTED", metadata={"caller": caller})
        return caller

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        rule = self._rule(handler_call_details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(rule, handler.unary_unary, streaming=False),
                handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap(rule, handler.unary_stream, streaming=True),
                handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(rule, handler.stream_unary, streaming=False),
                handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._wrap(rule, handler.stream_stream, streaming=True),
            handler.request_deserializer, handler.response_serializer)

    def _wrap(self, rule: _MethodRule, behavior, streaming: bool):
        if not streaming:
            async def serve(request, context):
                async with _RpcScope(self, rule, context) as scope:
                    if scope.enforce_budget:
                        async with asyncio.timeout(scope.budget):
                            return await behavior(request, context)
                    return await behavior(request, context)
            return serve

        # Streaming handlers must stay async generators (OpenTelemetry's interceptor iterates
        # them); a handler that writes through context.write() is awaited instead.
        async def serve_stream(request, context):
            async with _RpcScope(self, rule, context):
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    await result
        return serve_stream

    def _log_failure(self, rule: _MethodRule, code: str, message: str, reason: str) -> None:
        level = logging.WARNING if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED",
                                            "PERMISSION_DENIED") else logging.INFO
        log.log(level, "%s.%s -> %s: %s", self._service.name, rule.name, code, message,
                extra={"method": rule.name, "code": code, "reason": reason, "caller": CALLER.get()})


def _code_name(code) -> str:
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class _RpcScope:
    """Everything around one call: checks on the way in; errors, metrics and cleanup on the way out."""

    __slots__ = ("_owner", "_rule", "_context", "_started", "_tokens", "budget", "enforce_budget")

    def __init__(self, owner: MeshServerInterceptor, rule: _MethodRule, context: grpc.aio.ServicerContext):
        self._owner, self._rule, self._context = owner, rule, context
        self._tokens: tuple = ()

    async def __aenter__(self) -> "_RpcScope":
        self._started = time.perf_counter()
        owner, rule, context = self._owner, self._rule, self._context
        try:
            caller = owner._authorize(rule, context)
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise errors.DeadlineExceeded("the call's deadline had already passed when it arrived",
                                              reason="DEADLINE_ALREADY_EXPIRED")
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, None)
            raise
        # Calls without a deadline get the default, enforced here and passed on to upstreams.
        self.enforce_budget = remaining is None and not rule.open
        self.budget = owner._default_deadline if remaining is None else remaining
        self._tokens = (CALLER.set(caller), DEADLINE.set(time.monotonic() + self.budget))
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        owner, rule, context = self._owner, self._rule, self._context
        code = "OK"
        try:
            if exc is None:
                current = context.code()
                if current not in (None, grpc.StatusCode.OK):
                    code = _code_name(current)
            elif isinstance(exc, errors.DomainError):
                code = code_of(exc).name
                owner._log_failure(rule, code, exc.message, exc.reason)
                await context.abort_with_status(to_rpc_status(exc, owner._domain))
            elif isinstance(exc, TimeoutError):
                code = "DEADLINE_EXCEEDED"
                message = (f"{owner._service.name}.{rule.name} did not finish within the default deadline"
                           f" of {owner._default_deadline}s")
                owner._log_failure(rule, code, message, "DEFAULT_DEADLINE_EXCEEDED")
                await context.abort_with_status(
                    to_rpc_status(errors.DeadlineExceeded(message, reason="DEFAULT_DEADLINE_EXCEEDED"), owner._domain))
            elif isinstance(exc, grpc.aio.AbortError):
                code = _code_name(context.code())
            elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                code = "CANCELLED"
            elif isinstance(exc, Exception):
                code = "INTERNAL"
                trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
                log.error("unhandled error in %s.%s", owner._service.name, rule.name, exc_info=(exc_type, exc, tb),
                          extra={"method": rule.name, "code": code})
                await context.abort_with_status(internal_status(f"internal error (trace id {trace_id})"))
        finally:
            rule.metrics.observe(code, time.perf_counter() - self._started)
            if self._tokens:
                DEADLINE.reset(self._tokens[1])
                CALLER.reset(self._tokens[0])
        return False

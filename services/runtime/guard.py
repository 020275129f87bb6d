"""What every served RPC goes through: load shedding, tracing, authentication, policy,
deadlines, errors, metrics and logs, in one fixed order and in one place.

  0. the bound on calls in progress (`defaults.max_concurrent_calls`, per service): past it, a
     new unary or client-streaming call from outside the mesh (the gateway, an operator's tool)
     is refused at once with RESOURCE_EXHAUSTED (reason TOO_MANY_CALLS, a retry delay), before
     its token is checked, so a service past its capacity spends a refusal on the excess
     instead of queueing it until every call is late. Calls from the mesh's services (event
     deliveries, saga steps) count but are never refused: they finish work already accepted,
     and their callers bound them already (relay windows, the backlog). Health, reflection and
     server streams (watches, open as long as their caller likes) are not counted;
  1. a SERVER span, child of the caller's W3C trace context;
  2. caller identity from the mTLS certificate (SPIFFE URI SAN);
  3. the service JWT, verified against that certificate (skipped for health and reflection,
     which still need a mesh certificate);
  4. the per-RPC policy of mesh.yaml (PERMISSION_DENIED otherwise);
  5. the deadline: a call that arrives expired is refused, one without a deadline gets the
     default; the absolute deadline is published for clients to pass on;
  6. the request itself: bytes that are not the request message (a string field that is not
     UTF-8) or a string field with a control character are INVALID_ARGUMENT naming the field
     (services/runtime/inputs.py checks them as grpc deserializes the request);
  7. domain errors become canonical codes with google.rpc.Status details; anything else is
     INTERNAL with a trace id (logged with its traceback, never sent);
  8. metrics per method and a log line for every failure.

The handlers are wrapped once, when they are registered (`Registrar`), rather than by a
grpc.aio server interceptor, which would re-resolve and re-wrap the handler on every call
(measurements in docs/benchmarks.md).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc
from opentelemetry import trace

from services.config_files import ConfigError
from services.domain import errors

from .auth import TokenVerifier
from .config import ServiceConfig, Topology
from .context import CURRENT_CALL, CallInfo, current_caller
from .inputs import Malformed, guarded
from .logs import SERVICE
from .metrics import MethodMetrics
from .status import code_of, error_domain, internal_status, to_rpc_status
from .tracing import TRACE_HEADERS, RpcTracing
from .users import UserVerifier

log = logging.getLogger("diboas.rpc")

# Infrastructure services: any mesh certificate may use them, without a service token.
OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})


def peer_identity(context: grpc.aio.ServicerContext) -> str:
    """The caller's SPIFFE id, from the certificate gRPC's TLS layer verified against the mesh CA."""
    uris = [san for san in context.peer_identities() or () if san.startswith(b"spiffe://")]
    if len(uris) != 1:
        raise errors.Unauthenticated("the client certificate must carry exactly one SPIFFE URI SAN", reason="NO_SPIFFE_ID")
    return uris[0].decode()


def peer_certificate(context: grpc.aio.ServicerContext) -> bytes | None:
    return (context.auth_context().get("x509_pem_cert") or [None])[0]


class _Method:
    """What is known about one RPC method at registration time."""

    __slots__ = ("full_name", "name", "open", "callers", "metrics", "span_attributes")

    def __init__(self, service: ServiceConfig, full_name: str):
        grpc_service, _, name = full_name.lstrip("/").rpartition("/")
        self.full_name, self.name = full_name, name
        self.open = grpc_service in OPEN_SERVICES
        self.callers = service.allowed_callers(name)
        self.metrics = MethodMetrics(service.name, name)
        self.span_attributes = RpcTracing.attributes(full_name)


# Seconds a refusal past max_concurrent_calls asks the caller to wait: calls in progress end in
# milliseconds, and one second spreads the retries of a burst.
TOO_MANY_CALLS_RETRY_AFTER = 1


class ServerGuard:
    """Wraps a service's handlers with everything listed in the module docstring."""

    def __init__(self, topology: Topology, service: ServiceConfig, default_deadline: float, tracing: RpcTracing,
                 max_concurrent_calls: int | None = None):
        self._topology = topology
        self.max_concurrent_calls = (topology.defaults.max_concurrent_calls if max_concurrent_calls is None
                                     else max_concurrent_calls)
        self.calls_in_progress = 0      # unary calls counted against max_concurrent_calls
        self._services = frozenset(svc.identity.encode() for svc in topology.services.values())
        self._service = service
        self._verifier = TokenVerifier(audience=service.identity)
        self._gateway = topology.gateway.name
        self._users = UserVerifier(topology.certs_dir)
        self._default_deadline = default_deadline
        self._domain = error_domain(service.name, topology.trust_domain)
        self._tracing = tracing

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = _Method(self._service, full_method)
        handler = handler._replace(request_deserializer=guarded(handler.request_deserializer))
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(method, handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._unary(method, handler.stream_unary, True))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._stream(method, handler.unary_stream))
        return handler._replace(stream_stream=self._stream(method, handler.stream_stream, True))

    def _from_the_mesh(self, context: grpc.aio.ServicerContext) -> bool:
        """Whether the TLS peer is one of the mesh's services (its certificate's SPIFFE id)."""
        return any(san in self._services for san in context.peer_identities() or ())

    def _too_many_calls(self) -> errors.ResourceExhausted:
        return errors.ResourceExhausted(
            f"{self._service.name} is serving {self.calls_in_progress} calls, as many as it takes at once "
            f"(max_concurrent_calls); this call did nothing: send it again in {TOO_MANY_CALLS_RETRY_AFTER} s",
            reason="TOO_MANY_CALLS", retry_after_seconds=TOO_MANY_CALLS_RETRY_AFTER,
            metadata={"max_concurrent_calls": str(self.max_concurrent_calls)})

    def _unary(self, method: _Method, behavior, streams_requests: bool = False):
        counts = not method.open

        async def serve(request, context):
            scope = _RpcScope(self, method, context)
            counted = False
            try:
                if counts:
                    if self.calls_in_progress >= self.max_concurrent_calls and not self._from_the_mesh(context):
                        raise self._too_many_calls()
                    self.calls_in_progress += 1
                    counted = True
                scope.enter()
                request = _admitted(request, streams_requests)
                if scope.enforce_budget:
                    scope.timer = asyncio.timeout(scope.budget)
                    async with scope.timer:
                        response = await behavior(request, context)
                else:
                    response = await behavior(request, context)
            except BaseException as exc:
                await scope.fail(exc)
                raise
            finally:
                if counted:
                    self.calls_in_progress -= 1
            scope.finish(context.code())
            return response
        return serve

    def _stream(self, method: _Method, behavior, streams_requests: bool = False):
        # Streaming handlers stay async generators; one that writes through context.write()
        # (a coroutine) is awaited instead.
        async def serve_stream(request, context):
            scope = _RpcScope(self, method, context)
            try:
                scope.enter()
                request = _admitted(request, streams_requests)
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async with contextlib.aclosing(result):     # closed now, not whenever it is collected
                        async for item in result:
                            yield item
                else:
                    await result
            except BaseException as exc:
                await scope.fail(exc)
                raise
            scope.finish(context.code())
        return serve_stream

    def authorize(self, method: _Method, context: grpc.aio.ServicerContext, token: str | None):
        """(caller, user): who calls, and for which external user when it is the gateway."""
        identity = peer_identity(context)
        caller = self._topology.name_of(identity)
        if caller is None:
            raise errors.PermissionDenied(f"{identity} is not an identity of this mesh", reason="UNKNOWN_IDENTITY")
        if method.open:
            return caller, None
        # Policy first (it needs only the certificate): callers that may not call this method
        # never get their tokens verified, or cached.
        if caller not in method.callers:
            raise errors.PermissionDenied(f"{caller} may not call {self._service.name}.{method.name}",
                                          reason="CALLER_NOT_PERMITTED", metadata={"caller": caller})
        if caller == self._gateway:             # the gateway forwards the user's own token
            return caller, self._users.verify(token)
        self._verifier.verify(token, identity, lambda: peer_certificate(context))
        return caller, None

    def check_policy(self, methods: set[str]) -> None:
        """Every method the topology's policy names must exist here: a typo would otherwise fall
        back to the "*" rule without anyone noticing."""
        unknown = sorted(set(self._service.policy) - {"*"} - methods)
        if unknown:
            raise ConfigError(f"{self._topology.path}: services.{self._service.name}.policy names "
                              f"{', '.join(unknown)}, which {self._service.name} does not serve "
                              f"(it serves: {', '.join(sorted(methods))})")

    def log_failure(self, method: _Method, code: str, message: str, reason: str) -> None:
        if reason == "TOO_MANY_CALLS":      # a line per shed call would cost what shedding saves: metrics count them
            level = logging.DEBUG
        elif code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED", "PERMISSION_DENIED"):
            level = logging.WARNING
        else:
            level = logging.INFO
        log.log(level, "%s.%s -> %s: %s", self._service.name, method.name, code, message,
                extra={"method": method.name, "code": code, "reason": reason, "caller": current_caller()})


class _RpcScope:
    """One call: checks on the way in; errors, metrics, span and cleanup on the way out.
    Plain methods, not an async context manager: the success path never awaits."""

    __slots__ = ("_guard", "_method", "_context", "_started", "_span", "_span_token", "_call_token",
                 "_service_token", "budget", "enforce_budget", "timer")

    def __init__(self, guard: ServerGuard, method: _Method, context: grpc.aio.ServicerContext):
        self._guard, self._method, self._context = guard, method, context
        self._span = self._span_token = self._call_token = self._service_token = self.timer = None
        self._started = time.perf_counter()

    def enter(self) -> None:
        guard, method, context = self._guard, self._method, self._context
        token = trace_headers = None
        user_agent = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                # The scheme is case-insensitive (RFC 9110 section 11.1): "bearer x", "BEARER x".
                token = value[7:].strip() if value[:7].lower() == "bearer " else value
            elif key in TRACE_HEADERS:
                trace_headers = trace_headers or {}
                trace_headers[key] = value
            elif key == "user-agent":
                user_agent = value
        self._span, self._span_token = guard._tracing.start_server(method.full_name, method.span_attributes,
                                                                   trace_headers, user_agent)
        caller, user = guard.authorize(method, context, token)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise errors.DeadlineExceeded("the call's deadline had already passed when it arrived",
                                          reason="DEADLINE_ALREADY_EXPIRED")
        # Calls without a deadline get the default, enforced here and passed on to upstreams.
        self.enforce_budget = remaining is None and not method.open
        self.budget = guard._default_deadline if remaining is None else remaining
        self._call_token = CURRENT_CALL.set(CallInfo(caller, time.monotonic() + self.budget, user))
        self._service_token = SERVICE.set(guard._service.name)

    def finish(self, code, message: str = "") -> None:
        if code is None:
            code = grpc.StatusCode.OK
        elif not isinstance(code, grpc.StatusCode):  # context.code() may give a raw int
            code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
        self._method.metrics.observe(code.name, time.perf_counter() - self._started)
        RpcTracing.end(self._span, code.value[0], message, server=True)
        try:
            if self._call_token is not None:
                CURRENT_CALL.reset(self._call_token)
                SERVICE.reset(self._service_token)
            RpcTracing.detach(self._span_token)
        except ValueError:
            pass  # a streaming handler finalised in another context: nothing of ours is set there

    async def fail(self, exc: BaseException) -> None:
        """Account for a failed call; send its status (which raises AbortError) unless grpc already has one."""
        guard, method, context = self._guard, self._method, self._context
        status = None
        if isinstance(exc, errors.DomainError):
            code, message = code_of(exc), exc.message
            guard.log_failure(method, code.name, message, exc.reason)
            status = to_rpc_status(exc, guard._domain)
        elif isinstance(exc, TimeoutError) and self.timer is not None and self.timer.expired():
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            message = (f"{guard._service.name}.{method.name} did not finish within the default deadline"
                       f" of {guard._default_deadline}s")
            guard.log_failure(method, code.name, message, "DEFAULT_DEADLINE_EXCEEDED")
            status = to_rpc_status(errors.DeadlineExceeded(message, reason="DEFAULT_DEADLINE_EXCEEDED"), guard._domain)
        elif isinstance(exc, grpc.aio.AbortError):
            code, message = context.code() or grpc.StatusCode.UNKNOWN, ""
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed"
                guard.log_failure(method, code.name, message, "DEADLINE_EXCEEDED")
            else:
                code, message = grpc.StatusCode.CANCELLED, "cancelled by the caller"
        else:
            code = grpc.StatusCode.INTERNAL
            trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
            message = f"internal error (trace id {trace_id})"
            log.error("unhandled error in %s.%s", guard._service.name, method.name, exc_info=exc,
                      extra={"method": method.name, "code": code.name})
            status = internal_status(message)
        self.finish(code, message)
        if status is not None:
            await context.abort_with_status(status)


def _admitted(request, streams_requests: bool):
    """The request, or its InvalidArgument raised when inputs.py refused it (for a request
    stream: when a refused message comes)."""
    if request.__class__ is Malformed:
        raise request.error
    return _checked(request) if streams_requests else request


async def _checked(requests):
    async for request in requests:
        if request.__class__ is Malformed:
            raise request.error
        yield request


class Registrar:
    """Stands in for the grpc.aio.Server in the generated `add_XServicer_to_server(servicer, server)`
    functions, and registers every handler wrapped by the guard."""

    def __init__(self, server: grpc.aio.Server, guard: ServerGuard):
        self._server = server
        self._guard = guard
        self.services: list[str] = []
        self.methods: set[str] = set()  # of the business services (not health or reflection)

    def add_generic_rpc_handlers(self, handlers) -> None:
        # Generated code calls this and then add_registered_method_handlers with the same
        # handlers as a plain dict; we register from that dict only.
        pass

    def add_registered_method_handlers(self, service: str, method_handlers: dict) -> None:
        wrapped = {name: self._guard.wrap(f"/{service}/{name}", handler) for name, handler in method_handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self._server.add_registered_method_handlers(service, wrapped)
        self.services.append(service)
        if service not in OPEN_SERVICES:
            self.methods.update(method_handlers)

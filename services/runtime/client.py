"""Clients for upstream services: one mTLS channel per upstream, derived from the topology.

Each channel has keepalive, gRPC's native retry policy for UNAVAILABLE (service config), and
one interceptor that (in this order) fails fast while the upstream's circuit breaker is open,
passes the remaining deadline of the RPC being served on (or applies the default), adds this
service's JWT for that upstream, and turns an upstream failure into the matching domain error
(UNAVAILABLE -> ServiceUnavailable ...), so callers never handle grpc types.
"""
from __future__ import annotations

import json
import time

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from . import errors
from .auth import TokenIssuer
from .breaker import OPEN, AsyncCircuitBreaker
from .config import ServiceConfig, Topology
from .context import DEADLINE
from .metrics import BREAKER_STATE, CLIENT_CALLS
from .status import from_rpc_error
from .tls import IdentityFiles, channel_credentials

# Codes that mean "the upstream is not working", as opposed to "the upstream said no".
BREAKER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                           grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


def _counts_as_failure(exc: BaseException) -> bool:
    return getattr(exc, "upstream_code", None) in BREAKER_CODES


def service_config(topology: Topology) -> str:
    retry = topology.defaults.retry
    return json.dumps({
        "methodConfig": [{
            "name": [{}],  # every method of the upstream
            "retryPolicy": {
                "maxAttempts": retry.max_attempts,
                "initialBackoff": f"{retry.initial_backoff_seconds}s",
                "maxBackoff": f"{retry.max_backoff_seconds}s",
                "backoffMultiplier": retry.backoff_multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    })


def channel_options(topology: Topology, upstream: ServiceConfig) -> list[tuple[str, object]]:
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(topology)),
        # The upstream's certificate must carry its service name (DNS SAN): we check who answers.
        ("grpc.ssl_target_name_override", upstream.name),
        # Reconnect quickly once an upstream is back: gRPC's default backoff grows to 120 s,
        # far past the breaker's reset timeout, so a trial call would find the channel still waiting.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class _MeshCalls:
    """What every outgoing call gets; subclassed once per grpc interceptor kind (grpc.aio applies
    an interceptor to every kind whose interface it implements, so each class implements one)."""

    def __init__(self, caller: str, upstream: ServiceConfig, issuer: TokenIssuer,
                 breaker: AsyncCircuitBreaker, default_deadline: float):
        self._caller = caller
        self._upstream = upstream
        self._issuer = issuer
        self._breaker = breaker
        self._default_deadline = default_deadline
        self._counters: dict[tuple[str, str], object] = {}

    def _count(self, method: str, code: str) -> None:
        counter = self._counters.get((method, code))
        if counter is None:
            name = method.rpartition("/")[2]
            counter = self._counters[(method, code)] = CLIENT_CALLS.labels(self._caller, self._upstream.name, name, code)
        counter.inc()

    def _prepare(self, details, method: str) -> grpc.aio.ClientCallDetails:
        """The call's timeout (own, or what is left of the served RPC's deadline, or the default)
        and this service's token for the upstream."""
        timeout = details.timeout
        deadline = DEADLINE.get()
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._count(method, "DEADLINE_EXCEEDED")
                raise errors.DeadlineExceeded(f"no time left to call {self._upstream.name}: the deadline has passed")
            timeout = remaining if timeout is None else min(timeout, remaining)
        if timeout is None:
            timeout = self._default_deadline
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", "Bearer " + self._issuer.token_for(self._upstream.identity))
        return grpc.aio.ClientCallDetails(details.method, timeout, metadata, details.credentials,
                                          details.wait_for_ready)


class _MeshUnaryInterceptor(_MeshCalls, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        details = self._prepare(details, method)
        async with self._breaker.guard():
            call = await continuation(details, request)
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                self._count(method, exc.code().name)
                raise from_rpc_error(exc, self._upstream.name) from None
        self._count(method, "OK")
        return call


class _MeshStreamInterceptor(_MeshCalls, grpc.aio.UnaryStreamClientInterceptor):
    """Server-streaming calls get the same deadline and token (no breaker: a stream is long-lived)."""

    async def intercept_unary_stream(self, continuation, details, request):
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        return await continuation(self._prepare(details, method), request)


class Upstream:
    """One upstream service: its channel, breaker and stubs."""

    def __init__(self, topology: Topology, caller: str, upstream: ServiceConfig, files: IdentityFiles,
                 issuer: TokenIssuer, *, tracing: bool = True):
        policy = topology.defaults.breaker
        self.name = upstream.name
        self.breaker = AsyncCircuitBreaker(
            upstream.name, policy.fail_max, policy.reset_timeout_seconds, _counts_as_failure,
            on_state_change=lambda state: BREAKER_STATE.labels(caller, upstream.name).set(0 if state == "closed" else 1),
        )
        args = (caller, upstream, issuer, self.breaker, topology.defaults.deadline_seconds)
        interceptors = [_MeshUnaryInterceptor(*args), _MeshStreamInterceptor(*args)]
        if tracing:
            interceptors += aio_client_interceptors()
        self.channel = grpc.aio.secure_channel(str(upstream.address), channel_credentials(files),
                                               options=channel_options(topology, upstream), interceptors=interceptors)
        self._stubs: dict[type, object] = {}

    def stub(self, stub_class):
        """A generated stub bound to this upstream's channel, e.g. `upstream.stub(WalletServiceStub)`."""
        stub = self._stubs.get(stub_class)
        if stub is None:
            stub = self._stubs[stub_class] = stub_class(self.channel)
        return stub

    @property
    def open(self) -> bool:
        return self.breaker.state == OPEN


class Upstreams:
    """The upstreams of one service, as named in its `upstreams:` list in the topology."""

    def __init__(self, topology: Topology, service: str, files: IdentityFiles, issuer: TokenIssuer,
                 *, tracing: bool = True):
        me = topology.service(service) if service in topology.services else None
        names = me.upstreams if me else ()
        self._upstreams = {n: Upstream(topology, service, topology.service(n), files, issuer, tracing=tracing)
                           for n in names}

    def __getitem__(self, name: str) -> Upstream:
        try:
            return self._upstreams[name]
        except KeyError:
            raise errors.FailedPrecondition(f"'{name}' is not an upstream of this service in the topology") from None

    def __iter__(self):
        return iter(self._upstreams.values())

    async def close(self) -> None:
        for upstream in self._upstreams.values():
            await upstream.channel.close()

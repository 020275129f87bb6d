"""Clients for upstream services: one mTLS channel per upstream, derived from the topology.

Each channel has keepalive, quick reconnects and gRPC's native retry policy for UNAVAILABLE
(service config). `upstream.stub(WalletServiceStub)` returns the generated stub with every
method wrapped, in this order, by:
  1. the upstream's circuit breaker (open: ServiceUnavailable at once, no network);
  2. the timeout: the smaller of the call's own and what is left of the deadline of the RPC
     being served, or the default;
  3. this service's JWT for that upstream, and a CLIENT span whose W3C context travels along;
  4. an upstream failure turned into the matching domain error (UNAVAILABLE ->
     ServiceUnavailable ...), so callers never handle grpc types (a refusal of a service's own
     call is INTERNAL to its caller; a client program sees it as itself: `mask_refusals`);
  5. metrics per upstream and method: calls by code, and a latency histogram.
The wrapping is done once per stub, not by grpc.aio client interceptors, which add their own
per-call machinery on the hot path (measurements in docs/benchmarks.md).
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import grpc

from services.config_files import ConfigError
from services.domain import errors

from .auth import TokenIssuer
from .breaker import AsyncCircuitBreaker
from .calls import call_observer, call_timeout, service_descriptor
from .config import ServiceConfig, Topology
from .local import LocalUpstream, Neighbours
from .metrics import BREAKER_STATE
from .status import from_rpc_error
from .tls import IdentityFiles, load_identity, mesh_channel
from .tracing import RpcTracing

# Codes that mean "the upstream is not working", as opposed to "the upstream said no".
BREAKER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                           grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


def _counts_as_failure(exc: BaseException) -> bool:
    return getattr(exc, "upstream_code", None) in BREAKER_CODES


def service_config(topology: Topology, upstream: ServiceConfig | None = None) -> str:
    """Retries of UNAVAILABLE; calls spread over the upstream's instances in turn (round_robin),
    and, where it may have several, only over those whose gRPC health says SERVING: an instance
    that stops or is draining is left out until it serves again."""
    retry = topology.defaults.retry
    balancing: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if upstream is not None and upstream.balanced:
        balancing["healthCheckConfig"] = {"serviceName": ""}
    return json.dumps({
        **balancing,
        "methodConfig": [{
            "name": [{}],  # every method of the upstream
            "retryPolicy": {
                "maxAttempts": retry.max_attempts,
                "initialBackoff": f"{retry.initial_backoff_seconds:.9f}s",
                "maxBackoff": f"{retry.max_backoff_seconds:.9f}s",
                "backoffMultiplier": retry.backoff_multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    })


def channel_options(topology: Topology, upstream: ServiceConfig | None = None) -> list[tuple[str, object]]:
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(topology, upstream)),
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


class _CallPolicy:
    """What every call to one upstream gets (see the module docstring)."""

    def __init__(self, caller: str, upstream: ServiceConfig, issuer: TokenIssuer, breaker: AsyncCircuitBreaker,
                 default_deadline: float, tracing: RpcTracing, mask_refusals: bool = True):
        self._caller = caller
        self._mask_refusals = mask_refusals
        self._upstream = upstream
        self._issuer = issuer
        self._breaker = breaker
        self._default_deadline = default_deadline
        self._tracing = tracing

    def _timeout(self, timeout: float | None) -> float:
        return call_timeout(timeout, self._default_deadline, self._upstream.name)

    def _metadata(self, metadata, trace_headers: dict) -> tuple:
        own = (("authorization", "Bearer " + self._issuer.token_for(self._upstream.identity)), *trace_headers.items())
        return own + tuple(metadata or ())

    def _observer(self, method: str):
        return call_observer(self._caller, self._upstream.name, method)

    def unary(self, full_method: str, multicallable):
        upstream, breaker, tracing, mask_refusals = self._upstream.name, self._breaker, self._tracing, self._mask_refusals
        attributes = RpcTracing.attributes(full_method)
        observe = self._observer(full_method.rpartition("/")[2])

        async def call(request, *, timeout=None, metadata=None, wait_for_ready=None):
            code, started = grpc.StatusCode.UNAVAILABLE, time.perf_counter()
            span, headers = tracing.start_client(full_method, attributes)
            try:
                timeout = self._timeout(timeout)
                async with breaker.guard(time.monotonic() + timeout):
                    try:
                        response = await multicallable(request, timeout=timeout, wait_for_ready=wait_for_ready,
                                                       metadata=self._metadata(metadata, headers))
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code()
                        raise from_rpc_error(exc, upstream, mask_refusals=mask_refusals) from None
                code = grpc.StatusCode.OK
                return response
            except errors.DeadlineExceeded:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                observe(code, started)
                tracing.end(span, code.value[0])
        return call

    def stream(self, full_method: str, multicallable):
        """Server-streaming calls get the deadline, token and trace context (no breaker: a stream
        is long-lived, and its failures arrive while iterating)."""
        attributes = RpcTracing.attributes(full_method)
        observe = self._observer(full_method.rpartition("/")[2])

        def call(request, *, timeout=None, metadata=None, wait_for_ready=None):
            started = time.perf_counter()
            timeout = self._timeout(timeout)
            span, headers = self._tracing.start_client(full_method, attributes)
            try:
                stream = multicallable(request, timeout=timeout, wait_for_ready=wait_for_ready,
                                       metadata=self._metadata(metadata, headers))
            except BaseException:
                self._tracing.end(span, grpc.StatusCode.INTERNAL.value[0], "the call could not be started")
                raise
            stream.add_done_callback(lambda done: asyncio.ensure_future(self._stream_done(span, observe, started, done)))
            return stream
        return call

    async def _stream_done(self, span, observe, started: float, stream) -> None:
        code = await stream.code()
        observe(code, started)
        self._tracing.end(span, code.value[0], await stream.details() if code != grpc.StatusCode.OK else "")


class _GuardedStub:
    """A generated stub whose methods all go through an upstream's call policy."""

    def __init__(self, stub, grpc_service: str, policy: _CallPolicy):
        for name, multicallable in vars(stub).items():
            full_method = f"/{grpc_service}/{name}"
            if isinstance(multicallable, grpc.aio.UnaryUnaryMultiCallable):
                setattr(self, name, policy.unary(full_method, multicallable))
            elif isinstance(multicallable, grpc.aio.UnaryStreamMultiCallable):
                setattr(self, name, policy.stream(full_method, multicallable))
            else:
                raise TypeError(f"{grpc_service}.{name}: only unary and server-streaming calls are supported")


class Upstream:
    """One upstream service: its channel, breaker and stubs. `mask_refusals`: see the module docstring."""

    def __init__(self, topology: Topology, caller: str, upstream: ServiceConfig, files: IdentityFiles,
                 issuer: TokenIssuer, *, tracing: bool = True, mask_refusals: bool = True):
        policy = topology.defaults.breaker
        self.name = upstream.name
        self.breaker = AsyncCircuitBreaker(
            upstream.name, policy.fail_max, policy.reset_timeout_seconds, _counts_as_failure,
            on_state_change=lambda state: BREAKER_STATE.labels(caller, upstream.name).set(0 if state == "closed" else 1),
        )
        self._policy = _CallPolicy(caller, upstream, issuer, self.breaker, topology.defaults.deadline_seconds,
                                   RpcTracing(tracing), mask_refusals)
        self.channel = mesh_channel(upstream.target, files, upstream.name, channel_options(topology, upstream))
        self._stubs: dict[type, _GuardedStub] = {}

    def stub(self, stub_class):
        """The generated stub for this upstream, e.g. `upstream.stub(WalletServiceStub)`, with every
        method guarded; `await stub.GetWallet(request)` returns the response or raises a DomainError."""
        stub = self._stubs.get(stub_class)
        if stub is None:
            stub = self._stubs[stub_class] = _GuardedStub(stub_class(self.channel), service_descriptor(stub_class).full_name,
                                                          self._policy)
        return stub

    async def close(self) -> None:
        await self.channel.close()


@dataclass(frozen=True)
class Caller:
    """One identity of the topology as a caller: its short name, certificate files and token issuer."""

    name: str
    files: IdentityFiles
    issuer: TokenIssuer

    @classmethod
    def load(cls, topology: Topology, name: str) -> "Caller":
        """ConfigError when `name` is not an identity of the topology, or its certificate files are
        missing or expired (tls.load_identity)."""
        identities = topology.identities()
        if name not in identities:
            raise ConfigError(f"{topology.path}: '{name}' is not an identity of this mesh (known: "
                              f"{', '.join(sorted(identities))}): add it to `clients:` (a caller that serves nothing) "
                              "or `services:`, then issue its certificate (`make certs`)")
        files = load_identity(topology.certs_dir, name)
        return cls(name, files, TokenIssuer(identities[name], files.key))


class Upstreams:
    """The upstreams of one service, as named in its `upstreams:` list in the topology."""

    def __init__(self, topology: Topology, service: str, files: IdentityFiles, issuer: TokenIssuer,
                 *, tracing: bool = True, neighbours: Neighbours | None = None):
        me = topology.service(service) if service in topology.services else None
        names = me.upstreams if me else ()
        neighbours = neighbours or {}
        # An upstream served in this same process is called directly (services/runtime/local.py).
        self._upstreams = {n: LocalUpstream(topology, service, topology.service(n), neighbours[n], tracing=tracing)
                           if n in neighbours else Upstream(topology, service, topology.service(n), files, issuer,
                                                            tracing=tracing)
                           for n in names}

    def __getitem__(self, name: str) -> Upstream:
        try:
            return self._upstreams[name]
        except KeyError:
            raise ConfigError(f"'{name}' is not an upstream of this service: add it to its `upstreams:` in "
                              "the topology") from None

    def __iter__(self):
        return iter(self._upstreams.values())

    async def close(self) -> None:
        for upstream in self._upstreams.values():
            await upstream.close()

"""Prometheus metrics per service and method, served on each service's metrics address."""
from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Metric, start_http_server

from services.config_files import ConfigError

from .config import Address

SERVER_CALLS = Counter("diboas_rpc_server_calls", "RPCs handled, by final status code",
                       ["service", "method", "code"])
SERVER_ERRORS = Counter("diboas_rpc_server_errors", "RPCs that ended with a status other than OK",
                        ["service", "method", "code"])
LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
SERVER_LATENCY = Histogram("diboas_rpc_server_latency_seconds", "Server-side RPC latency",
                           ["service", "method"], buckets=LATENCY_BUCKETS)
CLIENT_CALLS = Counter("diboas_rpc_client_calls", "RPCs made to upstreams, by final status code",
                       ["service", "upstream", "method", "code"])
CLIENT_LATENCY = Histogram("diboas_rpc_client_latency_seconds",
                           "Client-side latency of calls to upstreams (breaker, network and upstream included)",
                           ["service", "upstream", "method"], buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("diboas_rpc_client_batch_size",
                       "Requests of several callers sent in one batch RPC (services/runtime/coalesce.py)",
                       ["upstream", "method"], buckets=(1, 2, 4, 8, 16, 32, 64, 100))
BREAKER_STATE = Gauge("diboas_circuit_breaker_open", "1 while the circuit breaker of an upstream is open or half-open",
                      ["service", "upstream"])
HEALTH = Gauge("diboas_service_serving", "1 while the service reports SERVING", ["service"])


class MethodMetrics:
    """The label children of one (service, method), resolved once: the hot path only increments."""

    __slots__ = ("_service", "_method", "_calls", "_latency")

    def __init__(self, service: str, method: str):
        self._service, self._method = service, method
        self._calls: dict[str, object] = {}
        self._latency = SERVER_LATENCY.labels(service, method)

    def observe(self, code: str, seconds: float) -> None:
        counter = self._calls.get(code)
        if counter is None:
            counter = self._calls[code] = SERVER_CALLS.labels(self._service, self._method, code)
        counter.inc()
        if code != "OK":
            SERVER_ERRORS.labels(self._service, self._method, code).inc()
        self._latency.observe(seconds)


class _ServiceView:
    """The process's metrics as one of its services shows them. Several services can share a
    process (the monolith) and so one registry: a series labelled with another service is left
    out, so that scraping every service's endpoint counts each call once. Series without a
    service label (the process's own, a queue's) are shown by each."""

    def __init__(self, service: str):
        self._service = service

    def collect(self):
        for family in REGISTRY.collect():
            samples = [s for s in family.samples if s.labels.get("service", self._service) == self._service]
            if samples:
                view = Metric(family.name, family.documentation, family.type, family.unit)
                view.samples = samples
                yield view


def serve_metrics(address: Address, service: str) -> int:
    """Start the /metrics HTTP endpoint of `service`; returns the bound port (address port 0 picks one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServiceView(service))
    try:
        server, _thread = start_http_server(address.port, addr=address.host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"{service}: cannot serve metrics on {address}: {exc.strerror or exc}"
                          f" (set DIBOAS_{service.upper()}_METRICS)") from None
    return server.server_port

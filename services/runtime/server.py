"""A service process: the mTLS gRPC server with health, reflection, the server guard,
metrics endpoint, database probe and graceful shutdown, built from the topology.

    server = MeshServer(topology, "wallet", build)   # build(runtime) -> [Registration, ...]
    await server.start()                              # binds; server.port is the real port
    await server.stop()                               # NOT_SERVING, drain in-flight calls, stop

`run(process)` is the process entry point: `python -m services <process>` serves the services the
topology's shape puts in that process (each on its own address), `python -m services.<name>` one.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2_grpc

from services.config_files import ConfigError
from services.domain import currencies

from . import tracing
from .client import Caller, Upstreams
from .config import Address, ServiceConfig, Topology, load_topology
from .guard import Registrar, ServerGuard
from .health import DatabaseProbe, ServiceHealth
from .logs import SERVICE, configure_logging
from .messaging.rabbit import Broker
from .metrics import serve_metrics
from .reflection import add_reflection
from .tls import IdentityFiles, server_credentials
from .tracing import RpcTracing

log = logging.getLogger("diboas.server")


@dataclass(frozen=True)
class Registration:
    """One gRPC service to serve: the generated add_XServicer_to_server and the servicer."""

    add_to_server: Callable[[object, grpc.aio.Server], None]
    servicer: object


@dataclass
class Runtime:
    """What a service's composition root gets to build its servicers with."""

    topology: Topology
    service: ServiceConfig
    identity: IdentityFiles
    upstreams: Upstreams
    # Called (in order) after the server has drained, e.g. to close a database.
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # Called (in order) when the server stops taking new calls, before it drains: to end the
    # streams that would otherwise hold the drain to its end.
    on_unready: list[Callable[[], None]] = field(default_factory=list)
    # Long-running work beside the server (queue workers, the event relay): each gets an event
    # that is set at shutdown, after the server has drained, and is awaited before on_stop.
    background: list[Callable[[asyncio.Event], Awaitable[None]]] = field(default_factory=list)
    # Whether this process traces (spans for queue items and events too: MessageTracing).
    tracing: bool = True
    # The RabbitMQ connection, when the topology's messaging transport is rabbitmq.
    broker: Broker | None = None


# The request metadata a server accepts, in gRPC's count (names, values and 32 bytes an entry).
# One limit, soft and hard alike: between the two gRPC refuses a share of the calls at random.
# The gateway sizes its header limit from this (gateway/envoy_config.py), so what it
# lets through is never refused here as RESOURCE_EXHAUSTED (which REST shows as 429).
MAX_METADATA_BYTES = 32 * 1024

SERVER_OPTIONS = [
    # gRPC Python turns SO_REUSEPORT on by default: a stale server on the same port would
    # silently share the traffic. With it off, a port in use is an error at start.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS is spelt without "recv" as a key.)
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_connection_idle_ms", 300_000),
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
]


class MeshServer:
    def __init__(self, topology: Topology, name: str, build: Callable[[Runtime], list[Registration]], *,
                 tracing_enabled: bool = True, health_interval: float = 2.0, serve_metrics_endpoint: bool = True,
                 unready_seconds: float = 1.0, neighbours: dict[str, dict[str, object]] | None = None):
        self.topology = topology
        self.service = topology.service(name)
        self._build = build
        self._tracing = tracing_enabled
        self._health_interval = health_interval
        self._serve_metrics = serve_metrics_endpoint
        self._unready_seconds = unready_seconds
        # The services already serving in this process: their servicers are called directly
        # (local.py), and this one's are added once it serves.
        self._neighbours = neighbours
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.grpc_services: list[str] = []      # full names of the gRPC services served, once started
        self._server: grpc.aio.Server | None = None
        self._health: ServiceHealth | None = None
        self._upstreams: Upstreams | None = None
        self._runtime: Runtime | None = None
        self._stopped = asyncio.Event()
        self._stop_background = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        # What this service logs while it starts, and its background tasks (which inherit it), say so.
        serving = SERVICE.set(self.service.name)
        try:
            await self._start()
        except BaseException:
            # Whatever was set up before the failure (channels, a database, a bound port) goes.
            if self._server is not None:
                await self._server.stop(0)
            if self._health is not None:
                await self._health.shutdown()
            await self._release()
            self._stopped.set()
            raise
        finally:
            SERVICE.reset(serving)

    async def _release(self) -> None:
        self._stop_background.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.topology.defaults.drain_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._upstreams is not None:
            await self._upstreams.close()
        if self._runtime is not None and self._runtime.broker is not None:
            await self._runtime.broker.close()
        for close in self._runtime.on_stop if self._runtime else ():
            close()

    async def _start(self) -> None:
        topology, service = self.topology, self.service
        me = Caller.load(topology, service.name)
        files = me.files
        self._upstreams = Upstreams(topology, service.name, files, me.issuer, tracing=self._tracing,
                                    neighbours=self._neighbours)
        broker = (Broker(topology.messaging, f"{service.name}@{socket.gethostname()}:{os.getpid()}")
                  if topology.uses_broker(service.name) else None)
        self._runtime = Runtime(topology, service, files, self._upstreams, tracing=self._tracing, broker=broker)
        registrations = self._build(self._runtime)

        server = grpc.aio.server(options=SERVER_OPTIONS)
        guard = ServerGuard(topology, service, topology.defaults.deadline_seconds, RpcTracing(self._tracing))
        registrar = Registrar(server, guard)
        servicers: dict[str, object] = {}
        for reg in registrations:
            known = len(registrar.services)
            reg.add_to_server(reg.servicer, registrar)
            servicers.update(dict.fromkeys(registrar.services[known:], reg.servicer))
        grpc_services = list(registrar.services)
        guard.check_policy(registrar.methods)

        dependencies = {"rabbitmq": broker.problem} if broker is not None else {}
        self._health = ServiceHealth(service.name, grpc_services, DatabaseProbe(service.database), self._health_interval,
                                     dependencies)
        health_pb2_grpc.add_HealthServicer_to_server(self._health.servicer, registrar)
        add_reflection(registrar, [*grpc_services, "grpc.health.v1.Health"])

        self.grpc_services = registrar.services
        self._server = server  # from here on, a failure must stop it
        instance = topology.instance
        if instance >= service.instances:
            raise ConfigError(f"{service.name}: DIBOAS_INSTANCE={instance}, but the topology runs {service.instances} "
                              f"instance(s) of it (0 to {service.instances - 1})")
        self.port = _bind(server, service.instance_listen(instance), server_credentials(files), service.name)
        if self._serve_metrics and service.metrics is not None:
            self.metrics_port = serve_metrics(service.instance_metrics(instance), service.name)
        # The first database check runs before the port opens: a service never says SERVING
        # (grpc's health servicer starts out SERVING) while its database is unreachable.
        await self._health.start()
        await server.start()
        self._tasks = [asyncio.create_task(work(self._stop_background), name=f"{service.name}-background")
                       for work in self._runtime.background]
        for task in self._tasks:
            task.add_done_callback(self._background_ended)
        if self._neighbours is not None:
            self._neighbours[service.name] = servicers
        log.info("%s listening on %s:%s (mTLS)%s", service.name, service.address.host, self.port,
                 f", metrics on :{self.metrics_port}/metrics" if self.metrics_port else "",
                 extra={"port": self.port, "metrics_port": self.metrics_port})

    def _background_ended(self, task: asyncio.Task) -> None:
        """Background work (a queue worker, the relay) runs until shutdown; one that ends before
        is an alert, never silent: what it did (sagas, deliveries) has stopped in this process."""
        if self._stop_background.is_set():
            return
        log.error("%s: background work %s stopped before shutdown%s", self.service.name, task.get_coro().__qualname__,
                  " (cancelled)" if task.cancelled() else "", exc_info=None if task.cancelled() else task.exception(),
                  extra={"alert": "background_stopped"})

    async def unready(self) -> None:
        """NOT_SERVING: probes and the gateway stop sending new calls; open streams are ended."""
        if self._health is not None:
            await self._health.shutdown()
        if self._runtime is not None:
            for end_streams in self._runtime.on_unready:
                end_streams()

    async def stop(self, grace: float | None = None, *, announced: bool = False) -> None:
        """NOT_SERVING first (so probes and the gateway stop sending; `announced`: `unready` did
        that already, and its wait is over), then drain and stop."""
        if self._server is None or self._stopped.is_set():
            return
        grace = self.topology.defaults.drain_seconds if grace is None else grace
        log.info("%s shutting down: NOT_SERVING, draining for up to %ss", self.service.name, grace)
        if not announced:
            await self.unready()
            if self._unready_seconds:
                await asyncio.sleep(self._unready_seconds)
        await self._server.stop(grace)
        await self._release()
        self._stopped.set()
        log.info("%s stopped", self.service.name)


def _bind(server: grpc.aio.Server, address: Address, credentials, name: str) -> int:
    try:
        port = server.add_secure_port(str(address), credentials)
    except RuntimeError as exc:
        port, detail = 0, str(exc)
    else:
        detail = ""
    if port == 0 and address.port != 0 or port is None:
        raise ConfigError(f"{name}: cannot listen on {address}: the port is in use or the address is not local"
                          f" (set DIBOAS_{name.upper()}_ADDRESS){': ' + detail if detail else ''}")
    return port


def service_build(name: str) -> Callable[[Runtime], list[Registration]]:
    """The composition root of a service: `build` in services/<name>/app.py."""
    try:
        module = importlib.import_module(f"services.{name}.app")
    except ModuleNotFoundError:
        raise ConfigError(f"no service package services/{name} (a service of the topology needs one, "
                          "with app.py and its build function)") from None
    return module.build


async def _serve(process: str, members: tuple[str, ...] | None) -> None:
    topology = load_topology()
    if members is None:
        if process not in topology.processes:
            raise ConfigError(f"'{process}' is not a process of the shape '{topology.mode}' (its processes: "
                              f"{', '.join(topology.processes)}; the shape comes from DIBOAS_MODE or `mode:`)")
        members = topology.processes[process]
    currencies.load()           # the catalogue every amount is checked against; a mistake stops us here
    settings = topology.observability
    configure_logging(process, settings.log_level)
    if settings.tracing:
        tracing.install(tracing.make_tracer_provider(process, settings.trace_export, topology.state_dir,
                                                     settings.trace_sample_ratio))
    # The members start in the topology's start order (a service's upstreams first), so each
    # finds the neighbours it calls already serving; they stop the other way round.
    neighbours: dict[str, dict[str, object]] = {}
    servers = [MeshServer(topology, name, service_build(name), tracing_enabled=settings.tracing,
                          unready_seconds=topology.defaults.unready_seconds, neighbours=neighbours)
               for name in members]
    # Handlers first: a SIGTERM that arrives while starting still stops the process cleanly.
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    started: list[MeshServer] = []
    try:
        for server in servers:
            await server.start()
            started.append(server)
        await stop_requested.wait()
    finally:
        await asyncio.gather(*(server.unready() for server in started))
        if started and topology.defaults.unready_seconds:
            await asyncio.sleep(topology.defaults.unready_seconds)
        for server in reversed(started):
            await server.stop(announced=True)
        if settings.tracing:
            from opentelemetry import trace
            trace.get_tracer_provider().shutdown()


def run(process: str, members: tuple[str, ...] | None = None) -> None:
    """Process entry point: serve `members` (by default, the services the topology's shape puts in
    the process named `process`) until SIGTERM/SIGINT; configuration errors exit 2 with one line."""
    configure_logging(process)
    try:
        asyncio.run(_serve(process, members))
    except ConfigError as exc:
        logging.getLogger("diboas.server").error("%s", exc)
        print(f"{process}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass

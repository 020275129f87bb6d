"""grpc.health.v1 for a service: overall ("") and per gRPC service, plus the database probe.

A service is SERVING only while its database answers. The probe runs `SELECT 1` on a fresh
connection every few seconds (a pooled connection could hide a lost database); while it
fails, every status is NOT_SERVING. During shutdown everything is NOT_SERVING for good.

A dependency the service can work without for a while (the message broker: events
wait in the outbox) has a status of its own under its name (`rabbitmq`): NOT_SERVING
while it is away, with a warning naming it, while the service stays SERVING.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from .db import create, database_url
from .metrics import HEALTH

log = logging.getLogger("diboas.health")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseProbe:
    def __init__(self, url: str):
        parsed = database_url(url)
        connect_args = {"connect_timeout": 2} if parsed.get_backend_name() == "postgresql" else {}
        self.url = parsed.render_as_string(hide_password=True)
        self._engine = create(parsed, poolclass=NullPool, connect_args=connect_args)

    def check(self) -> str | None:
        """None when the database answers, else why not."""
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return None
        except Exception as exc:  # any driver error means "not reachable" to a probe
            return str(exc).splitlines()[0]

    def close(self) -> None:
        self._engine.dispose()


class ServiceHealth:
    def __init__(self, service: str, grpc_services: list[str], probe: DatabaseProbe | None,
                 interval_seconds: float = 2.0, dependencies: dict[str, Callable[[], str | None]] | None = None):
        self.servicer = health_aio.HealthServicer()
        # name -> check (None when the dependency is there, else why not), and its last answer
        self._dependencies = dependencies or {}
        self._missing: dict[str, str | None] = {}
        self._service = service
        self._names = ["", *grpc_services]
        self._probe = probe
        self._interval = interval_seconds
        self._task: asyncio.Task | None = None
        self._serving: bool | None = None
        self._closing = False

    async def _set(self, serving: bool, why: str = "") -> None:
        if self._closing or serving == self._serving:
            return
        self._serving = serving
        for name in self._names:
            await self.servicer.set(name, SERVING if serving else NOT_SERVING)
        HEALTH.labels(self._service).set(1 if serving else 0)
        if serving:
            log.info("%s is SERVING", self._service)
        else:
            log.warning("%s is NOT_SERVING: %s", self._service, why)

    async def check_once(self) -> None:
        problem = await asyncio.to_thread(self._probe.check) if self._probe else None
        await self._set(problem is None, f"database {self._probe.url if self._probe else ''} unreachable: {problem}")
        for name, check in self._dependencies.items():
            await self._check_dependency(name, check())

    async def _check_dependency(self, name: str, problem: str | None) -> None:
        if self._closing or (name in self._missing and self._missing[name] == problem):
            return
        was_missing = self._missing.get(name) is not None
        self._missing[name] = problem
        await self.servicer.set(name, SERVING if problem is None else NOT_SERVING)
        if problem is not None:
            log.warning("%s: dependency %s is missing (events wait in the outbox): %s", self._service, name, problem,
                        extra={"dependency": name})
        elif was_missing:
            log.info("%s: dependency %s is back", self._service, name, extra={"dependency": name})

    async def start(self) -> None:
        await self.check_once()
        if self._probe or self._dependencies:
            self._task = asyncio.create_task(self._watch(), name=f"{self._service}-health")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()

    async def shutdown(self) -> None:
        """NOT_SERVING from now on, whatever the probe says."""
        if self._task:
            self._task.cancel()
        for name in [*self._names, *self._dependencies]:
            await self.servicer.set(name, NOT_SERVING)
        await self.servicer.enter_graceful_shutdown()
        self._closing = True
        HEALTH.labels(self._service).set(0)
        if self._probe:
            self._probe.close()

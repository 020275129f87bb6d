"""Composition root of the provider service."""
import os
from pathlib import Path

from diboas.provider.v1 import provider_pb2_grpc
from services.runtime.db import Database
from services.runtime.server import Registration, Runtime

from .catalog import load_providers, providers_file
from .payments import PaymentService
from .registry import ProviderRegistry
from .servicer import ProviderServicer

MIGRATIONS = Path(__file__).parent / "migrations"


def build(runtime: Runtime) -> list[Registration]:
    db = Database(runtime.service.database, MIGRATIONS)
    db.migrate()
    runtime.on_stop.append(db.close)
    # The simulators' books live beside our state: the simulated world outlives a restart.
    breaker = runtime.topology.defaults.breaker
    adapters = load_providers(providers_file(os.environ), runtime.topology.state_dir / "simulators" / "providers")
    registry = ProviderRegistry({p.name: p for p in adapters},
        breaker_fail_max=breaker.fail_max, breaker_reset_seconds=breaker.reset_timeout_seconds)
    runtime.background.append(registry.watch)       # health checks on an interval
    return [Registration(provider_pb2_grpc.add_ProviderServiceServicer_to_server,
                         ProviderServicer(registry, PaymentService(db, registry)))]

"""Composition root of the provider service."""
from diboas.provider.v1 import provider_pb2_grpc
from services.runtime.server import Registration, Runtime

from .registry import ProviderRegistry
from .servicer import ProviderServicer
from .simulator import default_providers


def build(runtime: Runtime) -> list[Registration]:
    registry = ProviderRegistry({p.name: p for p in default_providers()})
    runtime.background.append(registry.watch)       # health checks on an interval
    return [Registration(provider_pb2_grpc.add_ProviderServiceServicer_to_server, ProviderServicer(registry))]

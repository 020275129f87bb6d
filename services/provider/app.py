"""Composition root of the provider service."""
from diboas.provider.v1 import provider_pb2_grpc
from services.runtime.server import Registration, Runtime
from services.runtime.unimplemented import unimplemented_registration

PLANNED = "arrives with the provider registry and multi-chain issue"


def build(runtime: Runtime) -> list[Registration]:
    return [
        unimplemented_registration(provider_pb2_grpc, "ProviderService", "provider", PLANNED),
    ]

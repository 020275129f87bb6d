"""A generated service whose every RPC answers UNIMPLEMENTED, clearly: for servers that serve
only part of a service's contract (tests and benchmarks that stand up a wallet without its
event sink), since the topology's policy names every method a service must serve.

The generated base servicers are synchronous and raise NotImplementedError, which an asyncio
server would report as INTERNAL; these raise our Unimplemented error naming the operation.
"""
from __future__ import annotations

from services.domain.errors import Unimplemented

from .server import Registration


def unimplemented_registration(pb2_grpc, grpc_service: str, owner: str, why: str) -> Registration:
    """The Registration of a generated service (e.g. wallet_pb2_grpc, "WalletService") whose
    every RPC answers UNIMPLEMENTED, saying `why`."""
    base = getattr(pb2_grpc, f"{grpc_service}Servicer")
    namespace = {}
    for name, value in vars(base).items():
        if name.startswith("_") or not callable(value):
            continue

        async def method(self, request, context, _name=name):
            raise Unimplemented(f"{owner}.{_name} is not served here ({why})")
        namespace[name] = method
    servicer = type(f"Unimplemented{base.__name__}", (base,), namespace)()
    return Registration(getattr(pb2_grpc, f"add_{grpc_service}Servicer_to_server"), servicer)

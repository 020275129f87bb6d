"""Servicers for operations that later issues build: they answer UNIMPLEMENTED, clearly.

The generated base servicers are synchronous and raise NotImplementedError, which an
asyncio server would report as INTERNAL. This makes an async servicer whose every method
raises our Unimplemented error naming the operation and the work that will bring it.
"""
from __future__ import annotations

from .errors import Unimplemented


def unimplemented_servicer(base: type, service: str, planned: str):
    """An instance of `base` (a generated XxxServicer) whose methods all answer UNIMPLEMENTED."""
    namespace = {}
    for name, value in vars(base).items():
        if name.startswith("_") or not callable(value):
            continue
        async def method(self, request, context, _name=name):
            raise Unimplemented(f"{service}.{_name} is not implemented yet ({planned})")
        namespace[name] = method
    return type(f"Unimplemented{base.__name__}", (base,), namespace)()


def unimplemented_registration(pb2_grpc, grpc_service: str, owner: str, planned: str):
    """The Registration of a generated service (e.g. wallet_pb2_grpc, "WalletService")
    whose every RPC answers UNIMPLEMENTED until its issue lands."""
    from .server import Registration

    servicer = unimplemented_servicer(getattr(pb2_grpc, f"{grpc_service}Servicer"), owner, planned)
    return Registration(getattr(pb2_grpc, f"add_{grpc_service}Servicer_to_server"), servicer)

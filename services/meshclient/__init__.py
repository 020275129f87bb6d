"""Calling the mesh from a program that is not one of its services, as a first-class member:
its own identity in the topology, its own certificate, its own service tokens and its own
entries in the call policy. The guide is docs/guide-new-service.md.

    from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
    from services.meshclient import MeshClient

    async with MeshClient.from_topology("reporting") as mesh:
        wallets = mesh.stub("wallet", wallet_pb2_grpc.WalletServiceStub)
        with mesh.deadline(2.0):                      # every call in the block shares these 2 s
            reply = await wallets.ListWallets(wallet_pb2.ListWalletsRequest(page_size=10))

A thin facade over the runtime every service uses (services/runtime/client.py): the same mTLS
channel per service, the same service JWTs, retries, circuit breaker, deadlines, metrics and
tracing. Failures are the domain errors re-exported here (PermissionDenied, NotFound,
ServiceUnavailable ...), never grpc types (a server stream's errors excepted: they arrive as
grpc.aio.AioRpcError while it is read); `python -m services.meshclient IDENTITY` checks the
set-up and prints what the policy lets the identity call.
"""
from services.config_files import ConfigError
from services.domain.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceUnavailable,
    Unauthenticated,
)

from .client import MeshClient

__all__ = ["MeshClient", "ConfigError", "DomainError", "AlreadyExists", "DeadlineExceeded", "FailedPrecondition",
           "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted", "ServiceUnavailable",
           "Unauthenticated"]

"""Composition root of the blockchain service."""
from diboas.blockchain.v1 import blockchain_pb2_grpc
from services.runtime.server import Registration, Runtime
from services.runtime.unimplemented import unimplemented_registration

PLANNED = "arrives with the provider registry and multi-chain issue"


def build(runtime: Runtime) -> list[Registration]:
    return [
        unimplemented_registration(blockchain_pb2_grpc, "BlockchainService", "blockchain", PLANNED),
    ]

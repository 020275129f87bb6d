"""The channel arguments the runtime sets are ones gRPC reads: gRPC ignores a key it does not
know, so a misspelt one fails nowhere (a server that never got its ping allowance sends idle
callers GOAWAY too_many_pings)."""
from pathlib import Path

import grpc
import pytest

from services.runtime.client import channel_options
from services.runtime.config import load_topology
from services.runtime.server import SERVER_OPTIONS

CORE = next((Path(grpc.__file__).parent / "_cython").glob("cygrpc*.so")).read_bytes()
TOPOLOGY = load_topology()


@pytest.mark.parametrize("key", sorted({key for key, _ in SERVER_OPTIONS + channel_options(TOPOLOGY)}))
def test_every_channel_argument_is_a_key_grpc_core_knows(key):
    assert key.encode() + b"\0" in CORE, f"{key} is not a channel argument of grpcio {grpc.__version__}"

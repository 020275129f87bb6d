"""Several instances of a service: each listens on its own port (the configured one + 100 per
instance), callers spread their calls over all of them, and an instance that stops is left
out at once, so calls keep succeeding on the others."""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import time

from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.runtime.auth import TokenIssuer
from services.runtime.client import Upstream
from services.runtime.config import INSTANCE_PORT_STEP, Address
from services.runtime.tls import load_identity

from conftest import with_service
from fakes import EchoWallets, wallet_build

CALLS = 40


def two_free_ports() -> int:
    """A port p with p + INSTANCE_PORT_STEP free too."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                with socket.socket() as second:
                    second.bind(("127.0.0.1", port + INSTANCE_PORT_STEP))
            except OSError:
                continue
        return port
    raise AssertionError("no pair of free ports")


async def test_calls_spread_over_every_instance_and_skip_one_that_stops(topology, start_server):
    port = two_free_ports()
    topology = with_service(topology, "wallet", address=Address("127.0.0.1", port), instances=2)
    wallets = [EchoWallets(), EchoWallets()]
    servers = [await start_server(dataclasses.replace(topology, instance=k), "wallet", wallet_build(wallets[k]))
               for k in (0, 1)]
    assert [s.port for s in servers] == [port, port + INSTANCE_PORT_STEP]
    files = load_identity(topology.certs_dir, "transaction")
    upstream = Upstream(topology, "transaction", topology.services["wallet"], files,
                        TokenIssuer(topology.services["transaction"].identity, files.key), tracing=False)
    stub = upstream.stub(wallet_pb2_grpc.WalletServiceStub)
    try:
        for n in range(CALLS):
            await stub.GetWallet(wallet_pb2.GetWalletRequest(name=f"wallets/w{n}"))
        assert all(w.calls >= CALLS // 4 for w in wallets), [w.calls for w in wallets]   # round robin, not one

        await servers[1].stop(grace=0.5)
        before, started = wallets[0].calls, time.monotonic()
        for n in range(CALLS):
            await stub.GetWallet(wallet_pb2.GetWalletRequest(name=f"wallets/after{n}"))
        assert wallets[0].calls - before == CALLS           # every one answered by the instance left
        assert time.monotonic() - started < 5
    finally:
        await upstream.close()


async def test_an_instance_beyond_the_topologys_count_refuses_to_start(topology, start_server):
    import pytest

    from services.config_files import ConfigError
    with pytest.raises(ConfigError, match="DIBOAS_INSTANCE=1"):
        await start_server(dataclasses.replace(topology, instance=1), "wallet", wallet_build(EchoWallets()))
    await asyncio.sleep(0)

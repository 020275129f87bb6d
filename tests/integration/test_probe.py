"""`diboas probe`: the Kubernetes exec probe. It asks the local instance of a service, on loopback
at the port its server listens on, as the service itself (the pod's own certificate), while
callers reach the service by another name (a headless Service's DNS name)."""
from __future__ import annotations

import argparse
import asyncio

from services.cli import cmd_probe
from services.monitor import probe
from services.runtime.config import Address
from services.wallet.app import build as wallet_app

from conftest import free_port, with_service


def _args(live: bool) -> argparse.Namespace:
    return argparse.Namespace(service="wallet", live=live, timeout=3.0)


async def test_the_probe_asks_the_local_listener_as_the_service_itself(topology, start_server, capsys):
    port = free_port()
    topology = with_service(topology, "wallet", address=Address("wallet.diboas.svc.cluster.local", port),
                            listen=Address("127.0.0.1", port))
    await start_server(topology, "wallet", wallet_app)
    report = await probe(topology, "wallet", 3)
    assert (report.status, report.address) == ("SERVING", f"127.0.0.1:{port}")
    # The command, as the kubelet runs it (its blocking event loop off this test's loop)
    assert await asyncio.to_thread(cmd_probe, _args(live=False), topology) == 0
    assert await asyncio.to_thread(cmd_probe, _args(live=True), topology) == 0
    assert "wallet: SERVING" in capsys.readouterr().out


def test_nothing_listening_fails_both_probes_saying_so(topology, capsys):
    topology = with_service(topology, "wallet", listen=Address("0.0.0.0", free_port()))
    assert cmd_probe(_args(live=False), topology) == 1
    assert cmd_probe(_args(live=True), topology) == 1
    assert "wallet: UNREACHABLE" in capsys.readouterr().err


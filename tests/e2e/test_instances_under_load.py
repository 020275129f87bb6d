"""Two instances each of the wallet and the transaction service, started by the launcher of
`make run`, sharing the load: the transaction service's calls reach both wallets, both
transaction instances drive sagas; then one instance of each is killed (SIGKILL) mid-burst and
the survivors finish everything: every transaction COMPLETED or FAILED, settled once, nothing
held, no balance negative, the sum of all balances what it was. On SQLite with the embedded
transport, and on PostgreSQL with the events over RabbitMQ (both wallets consuming one queue)."""
from __future__ import annotations

import asyncio
import re
import urllib.request
from decimal import Decimal

import pytest

from services.launcher import Launcher
from services.runtime.config import load_topology
from tools.environment import overridden
from tools.ports import mesh_addresses

from meshkit import MoneyClient
from test_money_path_crashes import databases

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
WALLETS, FUNDS, SENDS = 40, "100.00", 800


def handled(metrics, method: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf'diboas_rpc_server_calls_total{{[^}}]*method="{method}"[^}}]*}} (\S+)', text))


@pytest.mark.parametrize("backend, transport", [
    ("sqlite", "embedded"),
    pytest.param("postgres", "rabbitmq", marks=[pytest.mark.postgres, pytest.mark.rabbitmq]),
])
async def test_two_instances_share_the_load_and_survive_losing_one(pki, tmp_path, request, backend, transport):
    broker = ({"DIBOAS_MESSAGING_TRANSPORT": "rabbitmq", "DIBOAS_RABBITMQ_URL": request.getfixturevalue("rabbitmq_url")}
              if transport == "rabbitmq" else {})
    with databases(backend) as urls:
        env = {"DIBOAS_CERTS_DIR": str(pki), "DIBOAS_STATE_DIR": str(tmp_path), "DIBOAS_UNREADY_SECONDS": "0",
               "DIBOAS_DRAIN_SECONDS": "2", "DIBOAS_TRACING": "off", "DIBOAS_LOG_LEVEL": "WARNING", "DIBOAS_QUEUE_LEASE": "5",
               "DIBOAS_WALLET_INSTANCES": "2", "DIBOAS_TRANSACTION_INSTANCES": "2",
               **mesh_addresses(gateway=False, instances=2), **urls, **broker}
        with overridden(env):
            topology = load_topology()
            launcher = Launcher(topology)
            assert set(launcher.units) == set(topology.services) | {"wallet#1", "transaction#1"}   # two of those, one of each other
            launcher.start()
            try:
                assert await launcher.wait_until_serving()
                mesh = MoneyClient(topology)
                try:
                    names = await mesh.funded_wallets(WALLETS, FUNDS)
                    burst = mesh.sends(names, SENDS, seed=3)
                    wallet, transaction = topology.services["wallet"], topology.services["transaction"]
                    # Both wallet instances take holds for the transaction service's sagas (in batch
                    # calls, a few a second each: round robin spreads them within seconds).
                    deadline = asyncio.get_running_loop().time() + 15
                    while not all(handled(wallet.instance_metrics(k), "BatchCreateHolds") > 0 for k in (0, 1)):
                        assert asyncio.get_running_loop().time() < deadline, "one wallet instance took no holds"
                        await asyncio.sleep(0.25)
                    await mesh.under_way(burst, SENDS // 5)
                    launcher.processes["wallet#1"].kill()
                    launcher.processes["transaction#1"].kill()
                    await burst
                    await mesh.assert_conserved(names, Decimal(FUNDS) * WALLETS, SENDS)
                    assert handled(transaction.instance_metrics(0), "CreateTransaction") > 0
                finally:
                    await mesh.close()
            finally:
                launcher.stop(timeout=10)

"""Instances in the topology: how many, where each listens, and what is refused."""
from __future__ import annotations

import dataclasses

import pytest

from services.config_files import ConfigError
from services.launcher import Launcher
from services.runtime.client import service_config
from services.runtime.config import INSTANCE_PORT_STEP, Address, load_topology


def test_one_instance_by_default_with_its_one_address():
    wallet = load_topology(env={}).services["wallet"]
    assert wallet.instances == 1
    assert wallet.target == str(wallet.address)
    assert '"healthCheckConfig"' not in service_config(load_topology(env={}), wallet)


def test_every_instance_listens_on_its_own_ports_and_callers_target_them_all():
    topology = load_topology(env={"DIBOAS_INSTANCES": "3", "DIBOAS_PROVIDER_INSTANCES": "1"})
    wallet = topology.services["wallet"]
    assert (wallet.instances, topology.services["provider"].instances) == (3, 1)
    base = wallet.address.port
    assert wallet.endpoints == tuple(Address("127.0.0.1", base + k * INSTANCE_PORT_STEP) for k in range(3))
    assert wallet.instance_metrics(2) == Address("127.0.0.1", wallet.metrics.port + 2 * INSTANCE_PORT_STEP)
    assert wallet.target == "ipv4:" + ",".join(str(a) for a in wallet.endpoints)
    config = service_config(topology, wallet)
    assert '"round_robin"' in config and '"healthCheckConfig"' in config


def test_the_instance_of_a_process_comes_from_the_environment():
    assert load_topology(env={"DIBOAS_INSTANCES": "2", "DIBOAS_INSTANCE": "1"}).instance == 1


@pytest.mark.parametrize("env, names", [
    ({"DIBOAS_INSTANCES": "0"}, "DIBOAS_INSTANCES"),
    ({"DIBOAS_WALLET_INSTANCES": "two"}, "DIBOAS_WALLET_INSTANCES"),
    ({"DIBOAS_INSTANCES": "9"}, "from 1 to 8"),
    ({"DIBOAS_INSTANCE": "first"}, "DIBOAS_INSTANCE"),
    ({"DIBOAS_MODE": "monolith", "DIBOAS_WALLET_INSTANCES": "2"}, "process 'monolith' run together"),
    ({"DIBOAS_WALLET_INSTANCES": "2", "DIBOAS_TRANSACTION_ADDRESS": "127.0.0.1:50151"}, "would listen on 127.0.0.1:50151"),
])
def test_bad_instance_settings_are_refused_with_one_line(env, names):
    with pytest.raises(ConfigError) as raised:
        load_topology(env=env)
    assert names in str(raised.value) and "\n" not in str(raised.value)



def test_make_run_starts_every_instance_of_every_process(pki):
    certs = {"DIBOAS_CERTS_DIR": str(pki)}
    units = Launcher(load_topology(env={**certs, "DIBOAS_WALLET_INSTANCES": "2", "DIBOAS_TRANSACTION_INSTANCES": "3"})).units
    assert units == {"wallet": ("wallet", 0), "wallet#1": ("wallet", 1), "transaction": ("transaction", 0),
                     "transaction#1": ("transaction", 1), "transaction#2": ("transaction", 2),
                     "provider": ("provider", 0), "blockchain": ("blockchain", 0),
                     "compliance": ("compliance", 0)}
    monolith = Launcher(load_topology(env={**certs, "DIBOAS_MODE": "monolith", "DIBOAS_INSTANCES": "2"})).units
    assert monolith == {"monolith": ("monolith", 0), "monolith#1": ("monolith", 1)}


def test_a_dns_name_is_balanced_and_an_ip_is_not(topology):
    wallet = topology.services["wallet"]
    assert not wallet.balanced
    assert dataclasses.replace(wallet, address=Address("wallet.diboas.svc.cluster.local", 50051)).balanced
    assert dataclasses.replace(wallet, instances=2).balanced

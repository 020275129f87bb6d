"""Events in the topology: a publisher's relay must be able to reach every subscriber of its
topics (an upstream of the publisher, whose policy lets it call DeliverEvent), or the topology
is refused with one line naming both and what to add."""
from __future__ import annotations

import pytest
import yaml

from services.config_files import ConfigError
from services.runtime.config import DEFAULT_TOPOLOGY, load_topology


def shipped_with(tmp_path, change):
    raw = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    change(raw["services"])
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_shipped_topology_delivers_every_event():
    topology = load_topology(env={})
    assert any(service.publishes for service in topology.services.values())


def test_a_subscriber_that_is_not_an_upstream_of_the_publisher_is_refused(tmp_path):
    def drop_wallet(services):
        services["transaction"]["upstreams"].remove("wallet")
    with pytest.raises(ConfigError, match="services.transaction publishes transaction.completed, to which wallet "
                                          "subscribes: add wallet to services.transaction.upstreams"):
        load_topology(shipped_with(tmp_path, drop_wallet), env={})


def test_a_subscriber_whose_policy_refuses_the_publisher_is_refused(tmp_path):
    def operator_only(services):
        services["wallet"]["policy"]["DeliverEvents"] = ["operator"]
    with pytest.raises(ConfigError, match="services.wallet.policy.DeliverEvents must name transaction"):
        load_topology(shipped_with(tmp_path, operator_only), env={})


def test_a_topic_nobody_subscribes_to_needs_nothing(tmp_path):
    def a_new_topic(services):
        services["provider"]["publishes"] = ["provider.degraded"]
    assert load_topology(shipped_with(tmp_path, a_new_topic), env={}).services["provider"].publishes

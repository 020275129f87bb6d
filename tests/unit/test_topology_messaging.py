"""The topology's messaging section: the transport, the broker URL and the name prefix."""
from __future__ import annotations

import pytest

from services.config_files import ConfigError
from services.runtime.config import load_topology


def test_embedded_is_the_default():
    messaging = load_topology(env={}).messaging
    assert (messaging.transport, messaging.brokered, messaging.prefix) == ("embedded", False, "diboas")


def test_the_environment_chooses_rabbitmq():
    messaging = load_topology(env={"DIBOAS_MESSAGING_TRANSPORT": "RabbitMQ",
                                   "DIBOAS_RABBITMQ_URL": "amqps://u:p@broker.example:5671/prod",
                                   "DIBOAS_RABBITMQ_PREFIX": "prod-1"}).messaging
    assert messaging.brokered
    assert messaging.rabbitmq_url == "amqps://u:p@broker.example:5671/prod"
    assert messaging.prefix == "prod-1"


@pytest.mark.parametrize("env, names", [
    ({"DIBOAS_MESSAGING_TRANSPORT": "kafka"}, "DIBOAS_MESSAGING_TRANSPORT"),
    ({"DIBOAS_RABBITMQ_URL": "http://u:secret@host/"}, "DIBOAS_RABBITMQ_URL"),
    ({"DIBOAS_RABBITMQ_URL": "amqp:///vhost"}, "DIBOAS_RABBITMQ_URL"),
    ({"DIBOAS_RABBITMQ_PREFIX": "Has Spaces"}, "DIBOAS_RABBITMQ_PREFIX"),
])
def test_bad_settings_are_refused_with_one_line(env, names):
    with pytest.raises(ConfigError) as raised:
        load_topology(env=env)
    text = str(raised.value)
    assert names in text and "\n" not in text
    assert "secret" not in text            # a password in a bad URL is not repeated


def test_only_the_services_that_publish_subscribe_or_queue_use_the_broker():
    brokered = load_topology(env={"DIBOAS_MESSAGING_TRANSPORT": "rabbitmq"})
    assert {n for n in brokered.services if brokered.uses_broker(n)} == {"wallet", "transaction"}
    embedded = load_topology(env={})
    assert not any(embedded.uses_broker(n) for n in embedded.services)


def test_a_key_given_twice_in_the_topology_is_refused_naming_it(tmp_path):
    shipped = load_topology(env={}).path.read_text()
    twice = tmp_path / "mesh.yaml"
    twice.write_text(shipped.replace("  transaction:\n", "  transaction:\n    database: sqlite:///elsewhere.db\n", 1))
    with pytest.raises(ConfigError, match=r"^mesh.yaml: services\.transaction\.database: appears twice \(lines \d+ and \d+\)$"):
        load_topology(twice, env={})

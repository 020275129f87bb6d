"""SecureCommunication: sealed event payloads open only untouched, fresh, and with a known key."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

import pytest

from diboas.events.v1 import events_pb2
from services.config_files import ConfigError
from services.runtime.messaging.secure import KEY_FILE, KeyRing, MessageRejected, seal, unseal

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
FIVE_MINUTES = dt.timedelta(minutes=5)
PAYLOAD = b'{"amount": "12.50", "owner": "alice"}'


@pytest.fixture
def ring(pki) -> KeyRing:
    return KeyRing.load(pki)


def envelope(at: dt.datetime = NOW) -> events_pb2.EventEnvelope:
    e = events_pb2.EventEnvelope(id="evt-1", source="spiffe://diboas.local/service/transaction", spec_version="1.0",
                                 type="transaction.completed", subject="transactions/t1")
    e.time.FromDatetime(at)
    return e


def test_sealed_payload_is_encrypted_and_opens(ring):
    sealed = seal(envelope(), PAYLOAD, ring)
    assert sealed.encrypted and sealed.key_id == ring.active and len(sealed.nonce) == 12
    assert PAYLOAD not in sealed.data and b"alice" not in sealed.SerializeToString()
    assert unseal(sealed, ring, FIVE_MINUTES, now=NOW + dt.timedelta(seconds=3)) == PAYLOAD


def test_clear_payloads_still_carry_a_checksum(ring):
    sealed = seal(envelope(), b"public", None)
    assert not sealed.encrypted and sealed.checksum
    assert unseal(sealed, ring, FIVE_MINUTES, now=NOW) == b"public"


def _tampered_data(e):
    e.data = bytes([e.data[0] ^ 1]) + e.data[1:]


def _tampered_data_fixed_checksum(e):
    _tampered_data(e)
    e.checksum = hashlib.sha256(e.data).hexdigest()


def _moved_to_another_subject(e):
    e.subject = "transactions/t2"


def _redated(e):
    e.time.FromDatetime(NOW + dt.timedelta(seconds=1))


@pytest.mark.parametrize("tamper,reason", [
    (_tampered_data, "MESSAGE_TAMPERED"),
    (_tampered_data_fixed_checksum, "MESSAGE_TAMPERED"),   # the attacker recomputed the checksum: GCM still fails
    (_moved_to_another_subject, "MESSAGE_TAMPERED"),
    (_redated, "MESSAGE_TAMPERED"),
])
def test_tampered_messages_are_rejected(ring, tamper, reason):
    sealed = seal(envelope(), PAYLOAD, ring)
    tamper(sealed)
    with pytest.raises(MessageRejected) as caught:
        unseal(sealed, ring, FIVE_MINUTES, now=NOW)
    assert caught.value.reason == reason


def test_stale_and_future_messages_are_rejected(ring):
    with pytest.raises(MessageRejected) as caught:
        unseal(seal(envelope(NOW - dt.timedelta(minutes=6)), PAYLOAD, ring), ring, FIVE_MINUTES, now=NOW)
    assert caught.value.reason == "MESSAGE_STALE"
    with pytest.raises(MessageRejected) as caught:
        unseal(seal(envelope(NOW + dt.timedelta(minutes=2)), PAYLOAD, ring), ring, FIVE_MINUTES, now=NOW)
    assert caught.value.reason == "MESSAGE_FROM_THE_FUTURE"


def test_keys_rotate_old_messages_still_open_unknown_keys_do_not(ring, tmp_path):
    old = seal(envelope(), PAYLOAD, ring)
    rotated = KeyRing("k-new", {**ring.keys, "k-new": bytes(range(32))})
    new = seal(envelope(), PAYLOAD, rotated)
    assert new.key_id == "k-new"
    assert unseal(old, rotated, FIVE_MINUTES, now=NOW) == PAYLOAD   # the old key is still listed
    with pytest.raises(MessageRejected) as caught:
        unseal(new, ring, FIVE_MINUTES, now=NOW)                      # a consumer without the new key
    assert caught.value.reason == "MESSAGE_UNKNOWN_KEY"


def test_a_bad_key_ring_is_a_clear_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="is missing: run `make certs`"):
        KeyRing.load(tmp_path)
    (tmp_path / KEY_FILE).write_text(json.dumps({"active": "a", "keys": {"a": base64.b64encode(b"short").decode()}}))
    with pytest.raises(ConfigError, match="every key must be 32 bytes"):
        KeyRing.load(tmp_path)
    (tmp_path / KEY_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="is not a valid event key ring"):
        KeyRing.load(tmp_path)

"""The spec's SecureCommunication: sensitive event payloads encrypted with AES-256-GCM under a
key id (so keys can rotate), with a checksum and a timestamp; consumers reject a message that
was tampered with or is stale.

The key ring is a JSON file made by `make certs` (certs/out/events-keys.json, mode 0600):

    {"active": "k1732492800", "keys": {"k1732492800": "<base64 of 32 random bytes>", ...}}

New messages use the active key; every key listed can still open old messages. To rotate: add
a key, make it active, and drop an old one only once no message encrypted with it can still
be in flight (outbox, queue, dead letters).

The envelope's identity (id, source, type, subject, time) is the AES-GCM associated data: it
cannot be changed without the decryption failing, and a ciphertext cannot be moved into
another envelope.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from diboas.events.v1 import events_pb2
from services.config_files import ConfigError
from services.domain.clock import utcnow
from services.domain.errors import InvalidArgument

from ..wire import datetime_of, timestamp_text

KEY_FILE = "events-keys.json"
NONCE_BYTES = 12


class MessageRejected(InvalidArgument):
    """A message that must not be handled: tampered with, stale, or sealed with an unknown key."""


@dataclass(frozen=True)
class KeyRing:
    active: str
    keys: dict[str, bytes]

    @classmethod
    def load(cls, certs_dir: Path) -> "KeyRing":
        path = certs_dir / KEY_FILE
        try:
            raw = json.loads(path.read_text())
            keys = {kid: base64.b64decode(value, validate=True) for kid, value in raw["keys"].items()}
            active = raw["active"]
        except FileNotFoundError:
            raise ConfigError(f"{path} is missing: run `make certs`") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise ConfigError(f"{path} is not a valid event key ring (see services/runtime/messaging/secure.py)") from None
        if active not in keys or any(len(k) != 32 for k in keys.values()):
            raise ConfigError(f"{path}: the active key must be listed, and every key must be 32 bytes (AES-256)")
        return cls(active, keys)


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _associated_data(envelope: events_pb2.EventEnvelope) -> bytes:
    stamp = timestamp_text(envelope.time) if envelope.HasField("time") else ""
    return "\n".join((envelope.id, envelope.source, envelope.type, envelope.subject, stamp)).encode()


def seal(envelope: events_pb2.EventEnvelope, payload: bytes, ring: KeyRing | None) -> events_pb2.EventEnvelope:
    """Put `payload` into the envelope: encrypted with the ring's active key when a ring is given
    (sensitive data: amounts, owners), in clear otherwise; always with its checksum. The
    envelope's id, source, type, subject and time must be set first."""
    if ring is None:
        envelope.data, envelope.encrypted, envelope.key_id, envelope.nonce = payload, False, "", b""
    else:
        nonce = os.urandom(NONCE_BYTES)
        envelope.data = AESGCM(ring.keys[ring.active]).encrypt(nonce, payload, _associated_data(envelope))
        envelope.encrypted, envelope.key_id, envelope.nonce = True, ring.active, nonce
    envelope.checksum = checksum(envelope.data)
    return envelope


def unseal(envelope: events_pb2.EventEnvelope, ring: KeyRing | None, max_age: dt.timedelta,
           now: dt.datetime | None = None, max_skew: dt.timedelta = dt.timedelta(seconds=30)) -> bytes:
    """The payload of a trustworthy envelope; MessageRejected (with its reason) otherwise."""
    if checksum(envelope.data) != envelope.checksum:
        raise MessageRejected(f"event {envelope.id}: checksum mismatch, the data was altered", reason="MESSAGE_TAMPERED")
    if not envelope.HasField("time"):
        raise MessageRejected(f"event {envelope.id}: no timestamp", reason="MESSAGE_UNDATED")
    now = now or utcnow()
    sent = datetime_of(envelope.time)
    if now - sent > max_age:
        raise MessageRejected(f"event {envelope.id}: stale, sent {sent:%Y-%m-%dT%H:%M:%SZ}, older than {max_age}",
                              reason="MESSAGE_STALE")
    if sent - now > max_skew:
        raise MessageRejected(f"event {envelope.id}: sent in the future ({sent:%Y-%m-%dT%H:%M:%SZ})",
                              reason="MESSAGE_FROM_THE_FUTURE")
    if not envelope.encrypted:
        return envelope.data
    key = ring.keys.get(envelope.key_id) if ring else None
    if key is None:
        raise MessageRejected(f"event {envelope.id}: sealed with unknown key '{envelope.key_id}'",
                              reason="MESSAGE_UNKNOWN_KEY")
    try:
        return AESGCM(key).decrypt(envelope.nonce, envelope.data, _associated_data(envelope))
    except (InvalidTag, ValueError):
        raise MessageRejected(f"event {envelope.id}: does not decrypt, the envelope or data was altered",
                              reason="MESSAGE_TAMPERED") from None

"""Service JWTs: short-lived tokens bound to the caller's mTLS identity.

A caller signs its token (ES256) with the private key of its own mesh certificate; the
server verifies it with the public key of the certificate the caller presented in the TLS
handshake. A token therefore cannot be used over any other identity's connection, and no
shared secret exists that could mint tokens for every service. `sub` is the caller's SPIFFE
id, `aud` the callee's, `exp` a few minutes away. What the caller may do is then looked up
in the callee's policy (mesh.yaml) by that identity.

Both sides cache: the issuer reuses a token until most of its lifetime is gone, and the
verifier remembers tokens it has already checked until they expire, so the signature work
is off the hot path.
"""
from __future__ import annotations

import time
import uuid
from functools import lru_cache
from typing import Callable, Generic, Hashable, TypeVar

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from services.domain.errors import Unauthenticated

ALGORITHM = "ES256"
# Tokens are short-lived by rule, not by the issuer's goodwill: a longer one is refused.
MAX_TOKEN_LIFETIME_SECONDS = 600
_MAX_CACHED = 10_000


class TokenIssuer:
    """Mints (and reuses) this identity's tokens, one per audience."""

    def __init__(self, identity: str, private_key_pem: bytes, ttl_seconds: float = 300.0):
        self.identity = identity
        self._key = load_pem_private_key(private_key_pem, password=None)
        self._ttl = ttl_seconds
        self._tokens: dict[str, tuple[str, float]] = {}  # audience -> (token, renew_at)

    def token_for(self, audience: str) -> str:
        now = time.time()
        cached = self._tokens.get(audience)
        if cached and now < cached[1]:
            return cached[0]
        claims = {"iss": self.identity, "sub": self.identity, "aud": audience,
                  "iat": int(now), "exp": int(now + self._ttl), "jti": uuid.uuid4().hex}
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        self._tokens[audience] = (token, now + self._ttl * 0.8)
        return token


def lifetime(claims: dict, token: str, reason: str) -> float:
    """Seconds from a verified token's `iat` to its `exp`. PyJWT takes numeric strings ("1700000000")
    for both; RFC 7519 NumericDates are JSON numbers, and only numbers are accepted here."""
    times = claims["iat"], claims["exp"]
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times):
        raise Unauthenticated(f"{token} rejected: 'iat' and 'exp' must be JSON numbers (seconds since the epoch), "
                              "not strings", reason=reason)
    return times[1] - times[0]


V = TypeVar("V")


class Verified(Generic[V]):
    """Tokens already verified, each with what it proved, until it expires (plus the leeway):
    checking a signature is most of what authenticating a call costs, and a token (the same
    bytes) proves the same thing until then. At most `limit` entries: the expired go first,
    then the oldest half."""

    def __init__(self, leeway_seconds: float, limit: int = _MAX_CACHED):
        self._leeway, self._limit = leeway_seconds, limit
        self._entries: dict[Hashable, tuple[V, float]] = {}

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.time() < entry[1] + self._leeway:
            return entry[0]
        del self._entries[key]
        return None

    def add(self, key: Hashable, value: V, exp: float) -> None:
        if len(self._entries) >= self._limit:
            now = time.time()
            self._entries = {k: e for k, e in self._entries.items() if e[1] > now}
            if len(self._entries) >= self._limit:  # still full of live tokens: forget the oldest half
                self._entries = dict(list(self._entries.items())[self._limit // 2:])
        self._entries[key] = (value, exp)


@lru_cache(maxsize=256)
def _public_key(cert_pem: bytes):
    return x509.load_pem_x509_certificate(cert_pem).public_key()


class TokenVerifier:
    """Checks a bearer token against the TLS peer: signature, expiry, audience, subject."""

    def __init__(self, audience: str, leeway_seconds: float = 5.0):
        self.audience = audience
        self._leeway = leeway_seconds
        self._verified: Verified[bool] = Verified(leeway_seconds)   # by (token, peer identity)

    def verify(self, token: str | None, peer_identity: str, peer_cert_pem: Callable[[], bytes | None]) -> None:
        """Raise Unauthenticated unless `token` is valid for this audience and was signed with the key
        of the peer's certificate; `peer_cert_pem` is only called when the token is not cached."""
        if not token:
            raise Unauthenticated("no service token: send 'authorization: Bearer <jwt>' signed with your mesh key",
                                  reason="TOKEN_MISSING")
        key = (token, peer_identity)
        if self._verified.get(key):
            return
        pem = peer_cert_pem()
        if pem is None:
            raise Unauthenticated("the connection carries no client certificate", reason="NO_PEER_CERTIFICATE")
        try:
            claims = jwt.decode(
                token, _public_key(pem), algorithms=[ALGORITHM], audience=self.audience,
                leeway=self._leeway, options={"require": ["exp", "iat", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("service token expired", reason="TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("service token is not valid yet (issued in the future)",
                                  reason="TOKEN_NOT_YET_VALID") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"service token is not meant for {self.audience}", reason="TOKEN_WRONG_AUDIENCE") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("service token signature does not match the caller's certificate",
                                  reason="TOKEN_BAD_SIGNATURE") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"service token rejected: {exc}", reason="TOKEN_INVALID") from None
        lives = lifetime(claims, "service token", "TOKEN_INVALID")
        if lives > MAX_TOKEN_LIFETIME_SECONDS:
            raise Unauthenticated(f"service token lives {lives}s; at most {MAX_TOKEN_LIFETIME_SECONDS}s is accepted",
                                  reason="TOKEN_TOO_LONG_LIVED")
        if claims["sub"] != peer_identity:
            raise Unauthenticated(f"service token is for {claims['sub']}, but the connection is {peer_identity}",
                                  reason="TOKEN_IDENTITY_MISMATCH")
        self._verified.add(key, True, float(claims["exp"]))

"""External users: their JWTs, and who the user of the call being served is.

Users authenticate at the gateway (Envoy's jwt_authn checks the token against
certs/out/jwks.json). The gateway forwards the token; a service that is called by the gateway
identity verifies it again with the same JWKS (a gateway cannot invent users) and serves the
call on behalf of that user, who sees and moves only their own wallets. The role `operator`
sees everything.

Tokens: ES256, `iss` ISSUER, `aud` AUDIENCE, `sub` the user id, `roles` a list, at most
MAX_USER_TOKEN_SECONDS long. Development tokens are signed with certs/out/users-jwt.key
(`diboas token --user alice`).
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from services.config_files import ConfigError
from services.domain.errors import Unauthenticated

from .auth import Verified, lifetime

ISSUER = "https://users.diboas.local"
AUDIENCE = "diboas-api"
ALGORITHM = "ES256"
OPERATOR_ROLE = "operator"
MAX_USER_TOKEN_SECONDS = 24 * 3600
JWKS_FILE, KEY_FILE = "jwks.json", "users-jwt.key"
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")   # what a `sub` must look like


@dataclass(frozen=True)
class User:
    id: str
    roles: frozenset[str]

    @property
    def is_operator(self) -> bool:
        return OPERATOR_ROLE in self.roles

    def may_see(self, owner_id: str) -> bool:
        """Whether this user may see (and move) what `owner_id` owns."""
        return self.is_operator or owner_id == self.id


def issue_user_token(certs_dir: Path, user_id: str, roles: list[str] | None = None, ttl_seconds: int = 3600,
                     now: float | None = None) -> str:
    """A development user token signed with the users' key of `certs_dir`."""
    if not USER_ID.fullmatch(user_id or ""):
        raise ValueError(f"'{user_id}' is not a user id: 1 to 64 letters, digits, '_', '.', '@' or '-', "
                         "starting with a letter or digit")
    if not 0 < ttl_seconds <= MAX_USER_TOKEN_SECONDS:
        raise ValueError(f"a user token lives at most {MAX_USER_TOKEN_SECONDS}s")
    try:
        key = load_pem_private_key((certs_dir / KEY_FILE).read_bytes(), password=None)
        kid = json.loads((certs_dir / JWKS_FILE).read_text())["keys"][0]["kid"]
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename} is missing: run `make certs`") from None
    issued = int(time.time() if now is None else now)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user_id, "roles": list(roles or ["user"]), "iat": issued,
              "exp": issued + ttl_seconds, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})


class UserVerifier:
    """Verifies user tokens against the JWKS (the same document Envoy uses)."""

    def __init__(self, certs_dir: Path, leeway_seconds: float = 5.0):
        path = certs_dir / JWKS_FILE
        try:
            self._keys = {k["kid"]: jwt.PyJWK(k).key for k in json.loads(path.read_text())["keys"]}
        except FileNotFoundError:
            raise ConfigError(f"{path} is missing: run `make certs`") from None
        except (ValueError, KeyError, jwt.PyJWKError) as exc:
            raise ConfigError(f"{path} is not a JWK set: {exc}") from None
        self._leeway = leeway_seconds
        self._verified: Verified[User] = Verified(leeway_seconds)

    def verify(self, token: str | None) -> User:
        if not token:
            raise Unauthenticated("no user token: send 'authorization: Bearer <jwt>'", reason="USER_TOKEN_MISSING")
        known = self._verified.get(token)
        if known is not None:
            return known
        try:
            key = self._keys.get(jwt.get_unverified_header(token).get("kid"))
            if key is None:
                raise Unauthenticated("user token signed by an unknown key", reason="USER_TOKEN_UNKNOWN_KEY")
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                                leeway=self._leeway, options={"require": ["exp", "iat", "sub", "aud", "iss"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("user token expired", reason="USER_TOKEN_EXPIRED") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"user token rejected: {exc}", reason="USER_TOKEN_INVALID") from None
        if lifetime(claims, "user token", "USER_TOKEN_INVALID") > MAX_USER_TOKEN_SECONDS:
            raise Unauthenticated("user token lives too long", reason="USER_TOKEN_TOO_LONG_LIVED")
        if not isinstance(claims["sub"], str) or not USER_ID.fullmatch(claims["sub"]):
            raise Unauthenticated("user token 'sub' is not a user id", reason="USER_TOKEN_INVALID")
        roles = claims.get("roles", [])
        if not isinstance(roles, list):
            raise Unauthenticated("user token 'roles' must be a list", reason="USER_TOKEN_INVALID")
        user = User(claims["sub"], frozenset(map(str, roles)))
        self._verified.add(token, user, float(claims["exp"]))
        return user

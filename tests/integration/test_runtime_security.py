"""mTLS and service-JWT checks against a real server on an ephemeral port."""
from __future__ import annotations

import base64
import datetime as dt
import json
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certs.pki import issue_certificate, load_ca, make_ca, write_pem_pair
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.runtime.status import error_info
from services.runtime.tls import load_identity

from conftest import bearer, client_channel, service_token, user_token, with_service
from fakes import EchoWallets, wallet_build

REQUEST = wallet_pb2.GetWalletRequest(name="wallets/w1")


@pytest.fixture
async def wallet(topology, start_server):
    servicer = EchoWallets()
    server = await start_server(topology, "wallet", wallet_build(servicer))
    return server, servicer


async def get_wallet(channel, metadata=None):
    return await wallet_pb2_grpc.WalletServiceStub(channel).GetWallet(REQUEST, metadata=metadata, timeout=5)


async def test_permitted_caller_is_served(topology, wallet):
    server, servicer = wallet
    async with client_channel(topology, "transaction", server.port, "wallet") as channel:
        reply = await get_wallet(channel, bearer(service_token(topology, "transaction", "wallet")))
    assert reply.wallet.name == "wallets/w1"
    assert servicer.calls == 1


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer ", "bEaReR"])
async def test_the_bearer_scheme_is_case_insensitive(topology, wallet, scheme):
    server, servicer = wallet
    token = service_token(topology, "transaction", "wallet")
    async with client_channel(topology, "transaction", server.port, "wallet") as channel:
        reply = await get_wallet(channel, (("authorization", f"{scheme} {token}"),))
    assert reply.wallet.name == "wallets/w1"


async def test_caller_not_in_policy_is_denied(topology, wallet):
    server, servicer = wallet
    async with client_channel(topology, "provider", server.port, "wallet") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_wallet(channel, bearer(service_token(topology, "provider", "wallet")))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "provider may not call wallet.GetWallet" in caught.value.details()
    assert error_info(caught.value).reason == "CALLER_NOT_PERMITTED"
    assert servicer.calls == 0


async def test_plaintext_connection_is_refused(topology, wallet):
    server, servicer = wallet
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wallet_pb2_grpc.WalletServiceStub(channel).GetWallet(REQUEST, timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 0


async def test_connection_without_client_certificate_is_refused(topology, wallet):
    server, servicer = wallet
    ca = load_identity(topology.certs_dir, "wallet").ca
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds,
                                       options=[("grpc.ssl_target_name_override", "wallet")]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_wallet(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 0


def _channel_with_cert(topology, port, cert_pem: bytes, key_pem: bytes) -> grpc.aio.Channel:
    ca = load_identity(topology.certs_dir, "wallet").ca
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key_pem, certificate_chain=cert_pem)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "wallet")])


async def test_certificate_from_another_ca_is_refused(topology, wallet, tmp_path):
    server, servicer = wallet
    rogue_ca, rogue_ca_key = make_ca("rogue CA")
    # Same identity as a permitted caller, but signed by a CA the mesh does not trust.
    cert, key = issue_certificate(rogue_ca, rogue_ca_key, "transaction", topology.identities()["transaction"])
    cert_path, key_path = write_pem_pair(tmp_path, "transaction", cert, key)
    async with _channel_with_cert(topology, server.port, cert_path.read_bytes(), key_path.read_bytes()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_wallet(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 0


async def test_expired_certificate_is_refused(topology, wallet, tmp_path):
    server, servicer = wallet
    ca_cert, ca_key = load_ca(topology.certs_dir)
    now = dt.datetime.now(dt.timezone.utc)
    cert, key = issue_certificate(ca_cert, ca_key, "transaction", topology.identities()["transaction"],
                                  not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    cert_path, key_path = write_pem_pair(tmp_path, "transaction", cert, key)
    async with _channel_with_cert(topology, server.port, cert_path.read_bytes(), key_path.read_bytes()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_wallet(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 0


def _sign(topology, identity: str, claims: dict, algorithm: str = "ES256") -> str:
    key = load_pem_private_key(load_identity(topology.certs_dir, identity).key, password=None)
    return jwt.encode(claims, key, algorithm=algorithm)


def _claims(topology, subject: str = "transaction", audience: str = "wallet", **overrides) -> dict:
    now = int(time.time())
    claims = {"sub": topology.identities()[subject], "aud": topology.services[audience].identity,
              "iat": now, "exp": now + 60}
    claims.update(overrides)
    return claims


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _bad_tokens(topology) -> dict[str, tuple[str | None, str]]:
    good = _sign(topology, "transaction", _claims(topology))
    header, payload, signature = good.split(".")
    forged_payload = _b64({**_claims(topology), "sub": topology.identities()["operator"]})
    now = int(time.time())
    return {
        "missing": (None, "TOKEN_MISSING"),
        "expired": (_sign(topology, "transaction", _claims(topology, iat=now - 600, exp=now - 300)), "TOKEN_EXPIRED"),
        "tampered": (f"{header}.{forged_payload}.{signature}", "TOKEN_BAD_SIGNATURE"),
        "alg none": (f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.", "TOKEN_INVALID"),
        # A valid token of another identity, replayed over the transaction's connection.
        "another identity": (_sign(topology, "gateway", _claims(topology, subject="gateway")), "TOKEN_BAD_SIGNATURE"),
        # Signed with the caller's own key but claiming to be someone else.
        "subject mismatch": (_sign(topology, "transaction", _claims(topology, subject="gateway")),
                             "TOKEN_IDENTITY_MISMATCH"),
        "wrong audience": (_sign(topology, "transaction", _claims(topology, audience="provider")),
                           "TOKEN_WRONG_AUDIENCE"),
        "garbage": ("not-a-jwt", "TOKEN_INVALID"),
        "too long-lived": (_sign(topology, "transaction", _claims(topology, exp=now + 3600)), "TOKEN_TOO_LONG_LIVED"),
        "issued in the future": (_sign(topology, "transaction", _claims(topology, iat=now + 600, exp=now + 700)),
                                 "TOKEN_NOT_YET_VALID"),
        # NumericDates are JSON numbers; PyJWT alone takes numeric strings for both.
        "times as strings": (_sign(topology, "transaction", _claims(topology, iat=str(now), exp=str(now + 60))),
                             "TOKEN_INVALID"),
    }


@pytest.mark.parametrize("case", ["missing", "expired", "tampered", "alg none", "another identity",
                                  "subject mismatch", "wrong audience", "garbage", "too long-lived",
                                  "issued in the future", "times as strings"])
async def test_bad_service_token_is_unauthenticated(topology, wallet, case):
    server, servicer = wallet
    token, reason = _bad_tokens(topology)[case]
    async with client_channel(topology, "transaction", server.port, "wallet") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_wallet(channel, bearer(token) if token else None)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, case
    assert error_info(caught.value).reason == reason, caught.value.details()
    if case == "times as strings":
        assert "'iat' and 'exp' must be JSON numbers" in caught.value.details()
    assert servicer.calls == 0


async def test_health_needs_a_mesh_certificate_but_no_token(topology, wallet):
    server, _ = wallet
    async with client_channel(topology, "operator", server.port, "wallet") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_verified_token_is_useless_over_another_identitys_connection(topology, wallet):
    """The operator's token, once verified (and cached) on the operator's connection, is refused
    over the transaction service's connection."""
    server, servicer = wallet
    token = _sign(topology, "operator", _claims(topology, subject="operator"))
    async with client_channel(topology, "operator", server.port, "wallet") as channel:
        await get_wallet(channel, bearer(token))
    async with client_channel(topology, "transaction", server.port, "wallet") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_wallet(channel, bearer(token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert servicer.calls == 1


async def test_an_identity_outside_the_topology_is_denied(topology, wallet, tmp_path):
    """Signed by the mesh CA and well-formed, but not one of mesh.yaml's identities (a client
    named like a service is not that service)."""
    server, servicer = wallet
    ca_cert, ca_key = load_ca(topology.certs_dir)
    cert, key = issue_certificate(ca_cert, ca_key, "transaction", "spiffe://diboas.local/client/transaction")
    cert_path, key_path = write_pem_pair(tmp_path, "impostor", cert, key)
    async with _channel_with_cert(topology, server.port, cert_path.read_bytes(), key_path.read_bytes()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_wallet(channel, bearer(service_token(topology, "transaction", "wallet")))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "UNKNOWN_IDENTITY"
    assert servicer.calls == 0


async def test_a_policy_naming_a_method_the_service_lacks_stops_the_start(topology, start_server):
    from services.config_files import ConfigError
    topology = with_service(topology, "wallet", policy={**topology.services["wallet"].policy,
                                                        "GetWalet": frozenset({"gateway"})})
    with pytest.raises(ConfigError, match="policy names GetWalet, which wallet does not serve"):
        await start_server(topology, "wallet", wallet_build(EchoWallets()))


# --- external users, on the gateway's connection ------------------------------------------------

async def test_the_gateway_calls_for_the_user_of_its_forwarded_token(topology, wallet):
    server, servicer = wallet
    async with client_channel(topology, "gateway", server.port, "wallet") as channel:
        await get_wallet(channel, bearer(user_token(topology, "alice", ("user",))))
    [user] = servicer.seen_users
    assert user.id == "alice" and not user.is_operator and user.may_see("alice") and not user.may_see("bob")


def _foreign_user_token(tmp_path) -> str:
    """A well-formed user token signed by a key that is not in the JWKS."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from certs.pki import public_jwks
    from services.runtime.users import AUDIENCE, ISSUER
    key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "iat": now, "exp": now + 60}, key,
                      algorithm="ES256", headers={"kid": public_jwks(key)["keys"][0]["kid"]})


def _users_key_token(topology, **claims) -> str:
    """A token signed with the real users' key (as the identity provider would), with these claims."""
    from services.runtime.users import AUDIENCE, ISSUER
    key = load_pem_private_key((topology.certs_dir / "users-jwt.key").read_bytes(), password=None)
    kid = json.loads((topology.certs_dir / "jwks.json").read_text())["keys"][0]["kid"]
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60, **claims}, key,
                      algorithm="ES256", headers={"kid": kid})


@pytest.mark.parametrize("case,reason", [
    ("missing", "USER_TOKEN_MISSING"), ("service token", "USER_TOKEN_UNKNOWN_KEY"),
    ("empty subject", "USER_TOKEN_INVALID"), ("wrong audience", "USER_TOKEN_INVALID"),
    ("expired", "USER_TOKEN_EXPIRED"), ("forged", "USER_TOKEN_UNKNOWN_KEY"), ("garbage", "USER_TOKEN_INVALID"),
    ("times as strings", "USER_TOKEN_INVALID"),
])
async def test_the_gateway_without_a_valid_user_token_is_unauthenticated(topology, wallet, tmp_path, case, reason):
    server, servicer = wallet
    token = {"missing": None, "service token": _sign(topology, "gateway", _claims(topology, subject="gateway")),
             "expired": user_token(topology, "alice", now=time.time() - 7200),
             "forged": _foreign_user_token(tmp_path), "garbage": "not-a-jwt",
             "empty subject": _users_key_token(topology, sub=""),
             "wrong audience": _users_key_token(topology, sub="alice", aud="someone-else"),
             "times as strings": _users_key_token(topology, sub="alice", iat=str(int(time.time())),
                                                  exp=str(int(time.time()) + 60))}[case]
    async with client_channel(topology, "gateway", server.port, "wallet") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_wallet(channel, bearer(token) if token else None)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == reason, caught.value.details()
    if case == "times as strings":
        assert "'iat' and 'exp' must be JSON numbers" in caught.value.details()
    assert servicer.calls == 0

"""Shared fixtures: a throwaway PKI, topologies on ephemeral ports, real servers and clients."""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import grpc
import pytest
import yaml

from certs.mkcerts import ensure_certificates
from services.runtime.auth import TokenIssuer
from services.runtime.config import Address, Topology, load_topology
from services.runtime.db import Database, scratch_schema
from services.runtime.server import MeshServer
from services.runtime.tls import channel_credentials, load_identity
from services.runtime.users import issue_user_token
from services.transaction.app import MIGRATIONS as TRANSACTION_MIGRATIONS
from tools import rabbitmq
from tools.ports import free_ports

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Every mesh a test starts (in this process or as processes, which inherit the environment) screens
# with the tests' rules: the shipped ones without velocity and the rolling day (tests/compliance.yaml).
TEST_COMPLIANCE_FILE = Path(__file__).parent / "compliance.yaml"
os.environ.setdefault("DIBOAS_COMPLIANCE_FILE", str(TEST_COMPLIANCE_FILE))
LOCAL = Address("127.0.0.1", 0)
POSTGRES = ("127.0.0.1", 5432)
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def sanctions_only(monkeypatch, tmp_path) -> Path:
    """Meshes started in this test screen with the tests' sanctions rules only (no limit per
    transaction): for tests of other limits, which move amounts compliance would hold."""
    rules = yaml.safe_load(TEST_COMPLIANCE_FILE.read_text())["rules"]
    path = tmp_path / "compliance-sanctions-only.yaml"
    path.write_text(yaml.safe_dump({"rules": {name: rule for name, rule in rules.items()
                                              if rule["check"].startswith("sanctioned_")}}))
    monkeypatch.setenv("DIBOAS_COMPLIANCE_FILE", str(path))
    return path


def free_port() -> int:
    return free_ports(1)[0]


def postgres_reachable() -> bool:
    try:
        socket.create_connection(POSTGRES, timeout=1).close()
        return True
    except OSError:
        return False


def require_postgres() -> None:
    """Skip (on a developer machine) or fail (in CI) when PostgreSQL is not there."""
    if not postgres_reachable():
        if IN_CI:
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is unreachable, and CI requires it")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is unreachable (start it to run this test)")


def postgres_schema():
    """A URL of the local PostgreSQL whose search_path is a new schema, dropped afterwards."""
    require_postgres()
    return scratch_schema(POSTGRES_URL, "t")


def require_rabbitmq() -> None:
    """Skip (on a developer machine) or fail (in CI) when RabbitMQ is not there."""
    if not rabbitmq.reachable():
        if IN_CI:
            pytest.fail(f"RabbitMQ at {rabbitmq.HOST}:{rabbitmq.PORT} is unreachable, and CI requires it")
        pytest.skip(f"RabbitMQ at {rabbitmq.HOST}:{rabbitmq.PORT} is unreachable (start it to run this test)")


@pytest.fixture(scope="session")
def rabbitmq_vhosts():
    """The session's maker of scratch virtual hosts (tools/rabbitmq.py, ScratchVhosts)."""
    require_rabbitmq()
    vhosts = rabbitmq.ScratchVhosts()
    yield vhosts
    vhosts.close()


def take_vhost(vhosts: rabbitmq.ScratchVhosts) -> str:
    """A new virtual host's URL; skip (on a developer machine) or fail (in CI) when none can be made."""
    try:
        return vhosts.take()
    except (RuntimeError, OSError) as exc:          # no rabbitmqctl, or not allowed to use it
        if IN_CI:
            pytest.fail(f"cannot make a RabbitMQ virtual host, and CI requires it: {exc}")
        pytest.skip(f"cannot make a RabbitMQ virtual host with rabbitmqctl (run as root on the broker's "
                    f"machine): {exc}")


@pytest.fixture
def rabbitmq_url(rabbitmq_vhosts):
    """The AMQP URL of a virtual host of the local RabbitMQ private to the test, deleted afterwards."""
    url = take_vhost(rabbitmq_vhosts)
    yield url
    rabbitmq_vhosts.give_back(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    """A database URL of each backend, empty, private to the test (PostgreSQL: its own schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/test.db"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def service_databases(database_url, tmp_path):
    """The databases of the wallet, the transaction service and compliance, all on the backend of
    `database_url` (the wallet's), each its own: on SQLite a file each, on PostgreSQL a schema each."""
    if database_url.startswith("sqlite"):
        yield {"wallet": database_url, "transaction": f"sqlite:///{tmp_path}/transaction.db",
               "compliance": f"sqlite:///{tmp_path}/compliance.db"}
        return
    with postgres_schema() as transaction, postgres_schema() as compliance:
        yield {"wallet": database_url, "transaction": transaction, "compliance": compliance}


@pytest.fixture
def transaction_database(database_url):
    """The transaction service's schema (its work queue, outbox ...) on each backend, migrated."""
    db = Database(database_url, TRANSACTION_MIGRATIONS)
    db.migrate()
    yield db
    db.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """A development CA and a certificate for every identity of mesh.yaml, made for this test run."""
    out = tmp_path_factory.mktemp("pki")
    ensure_certificates(out, load_topology(env={}).identities())
    return out


def catalogue_file(tmp_path: Path, name: str, text: str) -> Path:
    """A catalogue (providers.yaml, chains.yaml, currencies.yaml ...) with `text`, for one test."""
    path = tmp_path / name
    path.write_text(text)
    return path


def with_service(topology: Topology, name: str, **changes) -> Topology:
    service = dataclasses.replace(topology.services[name], **changes)
    return dataclasses.replace(topology, services={**topology.services, name: service})


@pytest.fixture
def topology(pki, tmp_path) -> Topology:
    """mesh.yaml with every service on an ephemeral port, the test PKI and a temporary state dir."""
    # env={}: the tests' mesh does not depend on DIBOAS_* variables of the developer's shell.
    base = dataclasses.replace(load_topology(env={}), certs_dir=pki, state_dir=tmp_path)
    for name in base.services:
        base = with_service(base, name, address=LOCAL, metrics=None,
                            database=f"sqlite:///{tmp_path}/{name}.db")
    return base


def client_channel(topology: Topology, identity: str, port: int, server_name: str) -> grpc.aio.Channel:
    """A bare mTLS channel as `identity` (no mesh client policy: tests add tokens themselves)."""
    files = load_identity(topology.certs_dir, identity)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(files),
                                   options=[("grpc.ssl_target_name_override", server_name)])


def service_token(topology: Topology, identity: str, audience_service: str) -> str:
    files = load_identity(topology.certs_dir, identity)
    spiffe = topology.identities()[identity]
    return TokenIssuer(spiffe, files.key).token_for(topology.services[audience_service].identity)


def user_token(topology: Topology, user: str = "ops", roles: tuple[str, ...] = ("operator",), **kwargs) -> str:
    """An external user's token, as the gateway forwards it (default: a user with the operator role)."""
    return issue_user_token(topology.certs_dir, user, list(roles), **kwargs)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def operator_calls(topology: Topology, port: int, service: str, stub_class):
    """(call, channel): `await call("Method", request)` as the operator, with a token and a deadline."""
    channel = client_channel(topology, "operator", port, service)
    stub, metadata = stub_class(channel), bearer(service_token(topology, "operator", service))

    async def call(method: str, request):
        return await getattr(stub, method)(request, metadata=metadata, timeout=10)
    return call, channel


@pytest.fixture
async def start_server():
    """Start MeshServers for a test and stop them all afterwards."""
    servers: list[MeshServer] = []

    async def start(topology: Topology, name: str, build, **kwargs) -> MeshServer:
        kwargs.setdefault("tracing_enabled", False)
        kwargs.setdefault("unready_seconds", 0)
        kwargs.setdefault("serve_metrics_endpoint", False)
        server = MeshServer(topology, name, build, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):       # callers before the services they call
        await server.stop(grace=0.5)

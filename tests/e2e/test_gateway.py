"""End to end over real HTTP through the real Envoy (from its wheel), configured from the
topology and the descriptor set, in front of the five real services over mTLS, one mesh and
gateway per shape shared by the module's tests: every REST route, errors and their HTTP codes,
user tokens, ownership, the access log, the CLI over REST. (tests/e2e/test_gateway_alone.py has
the tests that need a gateway of their own: the rate limit, a stopped service, one trace, the
backlog's 429.)"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest

from gateway.envoy_config import MAX_REQUEST_HEADERS_KB, external_rpcs
from services.demo import json_array_elements
from services.monitor import check_gateway
from services.runtime.config import load_topology
from tools.ports import free_ports

from conftest import user_token
from meshkit import ALL_SHAPES, ORDER, SHAPES, Mesh, Process, mesh_processes

pytestmark = pytest.mark.slow
ORDER_OF_STATES = ["PENDING", "PROCESSING", "COMPLETED", "FAILED"]


class Gateway:
    """Envoy as `python -m gateway`, in front of the given service ports."""

    def __init__(self, topology, ports: dict[str, int], log_dir, **overrides):
        self.http, self.https, self.admin = free_ports(3)
        env = {"DIBOAS_CERTS_DIR": str(topology.certs_dir), "DIBOAS_STATE_DIR": str(log_dir),
               "DIBOAS_GATEWAY_HTTP": f"127.0.0.1:{self.http}", "DIBOAS_GATEWAY_HTTPS": f"127.0.0.1:{self.https}",
               "DIBOAS_GATEWAY_ADMIN": f"127.0.0.1:{self.admin}",
               "DIBOAS_LOG_LEVEL": "WARNING", **overrides,
               **{f"DIBOAS_{n.upper()}_ADDRESS": f"127.0.0.1:{p}" for n, p in ports.items()}}
        self.topology = load_topology(env=env)
        self.process = Process("gateway", dict(os.environ, **env), log_dir)

    async def start(self, only_provider: bool = False) -> None:
        """Until Envoy and every upstream are healthy (or, with only the provider running, until a
        provider route answers 200)."""
        self.process.start()
        token = user_token(self.topology, "probe", ("user",))
        deadline = time.monotonic() + 30
        while True:
            assert self.process.process.poll() is None, "the gateway exited; see gateway.log"
            if only_provider:
                try:
                    ready = (await self.call("GET", "/v1/providers", token))[0] == 200
                except OSError:
                    ready = False
            else:
                ready = (await check_gateway(self.topology, timeout=1)).status == "SERVING"
            if ready:
                return
            assert time.monotonic() < deadline, "the gateway did not become ready; see gateway.log"
            await asyncio.sleep(0.1)

    def request(self, method: str, path: str, token: str | None = None, body=None,
                headers: dict | None = None) -> tuple[int, dict, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.http, timeout=15)
        sent = dict(headers or {})
        if token:
            sent["authorization"] = f"Bearer {token}"
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        connection.request(method, path, body=data, headers=sent)
        reply = connection.getresponse()
        raw = reply.read()
        connection.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")}
        return reply.status, parsed, dict(reply.getheaders())

    async def call(self, *args, **kwargs) -> tuple[int, dict, dict]:
        return await asyncio.to_thread(self.request, *args, **kwargs)

    async def watch(self, path: str, token: str) -> list[tuple[float, dict]]:
        """The messages of a streamed GET (200 expected), each with the seconds after the request
        at which it had arrived whole."""
        def read() -> list[tuple[float, dict]]:
            connection = http.client.HTTPConnection("127.0.0.1", self.http, timeout=30)
            try:
                started = time.monotonic()
                connection.request("GET", path, headers={"authorization": f"Bearer {token}"})
                reply = connection.getresponse()
                assert reply.status == 200, (reply.status, reply.read())
                return [(time.monotonic() - started, m) for m in json_array_elements(reply)]
            finally:
                connection.close()
        return await asyncio.to_thread(read)


@pytest.fixture(scope="module", params=SHAPES)
def shared_stack(request, pki, tmp_path_factory):
    """The five services as real processes in a shape (a process each, or the monolith), and Envoy,
    started once for all the tests of this module that take `stack`. Those tests share them, so
    each one acts as users of its own (`user`), and leaves nothing switched on that another
    could see. Requests without a valid token share one budget at the gateway: here it is large, so
    that the tests' 401s do not use up each other's (the rate limit has a test of its own). The
    processes are started and stopped on an event loop of the fixture's own: each test has its own."""
    state_dir = tmp_path_factory.mktemp(f"stack-{request.param}")
    with asyncio.Runner() as runner:
        cleanup = contextlib.AsyncExitStack()
        try:
            topology, _ = runner.run(cleanup.enter_async_context(mesh_processes(pki, state_dir, request.param)))
            ports = {name: topology.services[name].address.port for name in ORDER}
            gateway = Gateway(topology, ports, state_dir, DIBOAS_GATEWAY_ANONYMOUS_RATE_LIMIT="1000",
                              DIBOAS_GATEWAY_ANONYMOUS_RATE_LIMIT_BURST="1000")
            cleanup.callback(gateway.process.stop)
            runner.run(gateway.start())
            yield topology, ports, gateway
        finally:
            runner.run(cleanup.aclose())


@pytest.fixture
async def stack(shared_stack):
    """(mesh, gateway): clients of the module's shared processes, on this test's event loop."""
    topology, ports, gateway = shared_stack
    mesh = Mesh(topology, ports)
    try:
        yield mesh, gateway
    finally:
        await mesh.close()


def user(name: str) -> str:
    """A user name of this test's own: `name` and a random suffix."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def key() -> str:
    return uuid.uuid4().hex


async def test_every_rest_route_reaches_its_rpc(stack):
    mesh, gw = stack
    alice_id = user("alice")
    alice = user_token(mesh.topology, alice_id, ("user",))
    status, created, _ = await gw.call("POST", f"/v1/wallets?requestId={key()}", alice, {"currencyCode": "USD"})
    assert status == 200 and created["wallet"]["ownerId"] == alice_id, created
    wallet = created["wallet"]["name"]
    status, deposit, _ = await gw.call("POST", f"/v1/transactions?requestId={key()}", alice, {
        "type": "TRANSACTION_TYPE_DEPOSIT", "destinationWallet": wallet,
        "amount": {"currencyCode": "USD", "amount": "100.00"}})
    assert status == 200 and deposit["transaction"]["state"] == "TRANSACTION_STATE_PENDING", deposit
    tx = deposit["transaction"]["name"]
    seen = await gw.watch(f"/v1/{tx}:watch", alice)       # streamed until it settles
    states = [m["transaction"]["state"].removeprefix("TRANSACTION_STATE_") for _, m in seen]
    assert states[-1] == "COMPLETED" and states == sorted(states, key=ORDER_OF_STATES.index), states
    assert len(set(json.dumps(m) for _, m in seen)) == len(seen)          # each message is a change
    assert seen[-1][1]["transaction"]["providerPayment"].startswith("payments/"), seen
    calls = {
        "ListChains": ("GET", "/v1/chains", None),
        "GetChain": ("GET", "/v1/chains/ethereum", None),
        "GetTransactionStatus": ("GET", "/v1/chains:getTransactionStatus?transactionHash=0x00", None),
        "CreateTransaction": None,                                # done above
        "GetTransaction": ("GET", f"/v1/{tx}", None),
        "WatchTransaction": ("GET", f"/v1/{tx}:watch", None),
        "ListTransactions": ("GET", f"/v1/transactions?wallet={wallet}&pageSize=5", None),
        "ListProviders": ("GET", "/v1/providers", None),
        "GetProvider": ("GET", "/v1/providers/alpha-pay", None),
        "GetProviderHealth": ("GET", "/v1/providers/alpha-pay/health", None),
        "GetQuotes": ("POST", "/v1/providers:getQuotes", {"direction": "PAYMENT_DIRECTION_PAY_IN",
                                                            "amount": {"currencyCode": "USD", "amount": "100.00"}}),
        "CreateWallet": None,                                     # done above
        "GetWallet": ("GET", f"/v1/{wallet}", None),
        "ListWallets": ("GET", "/v1/wallets", None),
        "ValidateBalance": ("POST", f"/v1/{wallet}:validateBalance", {"amount": {"currencyCode": "USD",
                                                                                 "amount": "1.00"}}),
        "ListLedgerEntries": ("GET", f"/v1/{wallet}/ledgerEntries", None),
    }
    assert set(calls) == {r.method for r in external_rpcs(mesh.topology)}    # the test covers every route
    for method, call in calls.items():
        if call is None:
            continue
        status, body, _ = await gw.call(call[0], call[1], alice, call[2])
        assert status == 200, (method, status, body)
    status, body, _ = await gw.call("GET", "/v1/crossChainTransfers/any", alice)   # not exposed: no owner to check
    assert status == 404 and "no such REST route" in body["message"]
    _, wallets, _ = await gw.call("GET", "/v1/wallets", alice)
    assert [w["name"] for w in wallets["wallets"]] == [wallet]
    assert wallets["wallets"][0]["availableBalance"] == {"currencyCode": "USD", "amount": "100.00"}


async def test_the_api_document_and_its_reference_page_are_served_to_anyone(stack):
    from openapi_spec_validator import validate

    from gateway.envoy_config import OPENAPI, pages
    _, gw = stack
    alice_id = user("alice")
    status, document, headers = await gw.call("GET", "/openapi.json")           # no token
    assert status == 200 and headers["content-type"] == "application/json", (status, document)
    assert document == json.loads(OPENAPI.read_text())
    validate(document)
    for page in pages():
        connection = http.client.HTTPConnection("127.0.0.1", gw.http, timeout=15)
        connection.request("GET", page.path)
        reply = connection.getresponse()
        assert (reply.status, reply.getheader("content-type")) == (200, page.content_type), page.path
        assert reply.read() == page.file.read_bytes(), page.path
        assert "default-src 'self'" in reply.getheader("content-security-policy")
        connection.close()
    _, page, _ = await gw.call("GET", "/docs")
    assert '<script src="/docs/swagger-ui-bundle.js">' in page["raw"]
    assert "http:" not in page["raw"] and "https:" not in page["raw"]         # nothing from the network
    status, body, _ = await gw.call("POST", "/openapi.json", body={})         # public for GET and HEAD only
    assert status == 401 and body["code"] == 16
    token = user_token(gw.topology, alice_id, ("user",))
    status, body, _ = await gw.call("POST", "/openapi.json", token, body={})
    assert status == 404 and "no such REST route" in body["message"]


async def test_every_operation_of_the_document_is_a_route_of_the_gateway(stack):
    """Each operation, its path parameters filled with a value that names nothing, reaches its
    service: the answer is the service's (a 404 naming the resource, or a 400 about the body),
    never the gateway's "no such REST route"."""
    from gateway.envoy_config import OPENAPI
    mesh, gw = stack
    alice_id = user("alice")
    alice = user_token(mesh.topology, alice_id, ("user",))
    document = json.loads(OPENAPI.read_text())
    for path, operations in document["paths"].items():
        for verb, operation in operations.items():
            url = re.sub(r"\{[A-Za-z0-9]+\}", "nothing-here", path)
            status, body, _ = await gw.call(verb.upper(), url, alice, {} if "requestBody" in operation else None)
            assert status != 404 or "no such REST route" not in body.get("message", ""), (verb, path, body)
            assert str(status) in operation["responses"], (verb, path, status, body)


async def test_every_services_metrics_follow_the_prometheus_naming_rules(stack):
    """After money moved (so that every labelled series exists), each service's /metrics passes
    the lint of promtool's rules (tools/metrics_lint.py)."""
    import urllib.request

    from tools.metrics_lint import problems
    mesh, gw = stack
    alice_id = user("alice")
    alice = user_token(mesh.topology, alice_id, ("user",))
    _, created, _ = await gw.call("POST", f"/v1/wallets?requestId={key()}", alice, {"currencyCode": "USD"})
    _, deposit, _ = await gw.call("POST", f"/v1/transactions?requestId={key()}", alice, {
        "type": "TRANSACTION_TYPE_DEPOSIT", "destinationWallet": created["wallet"]["name"],
        "amount": {"currencyCode": "USD", "amount": "10.00"}})
    for _ in range(200):
        _, got, _ = await gw.call("GET", f"/v1/{deposit['transaction']['name']}", alice)
        if got["transaction"]["state"] == "TRANSACTION_STATE_COMPLETED":
            break
        await asyncio.sleep(0.05)
    await gw.call("GET", "/v1/wallets/nobody", alice)                          # an error series too
    for name in ORDER:
        url = f"http://{mesh.topology.services[name].metrics}/metrics"
        text = (await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)).read().decode()
        assert "diboas_rpc_server_calls_total" in text, name
        assert problems(text) == [], name


async def test_https_with_the_gateway_certificate_trusted_through_the_mesh_ca(stack):
    import ssl
    mesh, gw = stack
    alice_id = user("alice")
    context = ssl.create_default_context(cafile=str(mesh.topology.certs_dir / "ca.crt"))

    def get() -> tuple[int, dict]:
        connection = http.client.HTTPSConnection("localhost", gw.https, context=context, timeout=15)
        connection.request("GET", "/v1/providers", headers={
            "authorization": f"Bearer {user_token(mesh.topology, alice_id, ('user',))}"})
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    status, body = await asyncio.to_thread(get)
    assert status == 200 and len(body["providers"]) == 3
    untrusted = ssl.create_default_context()                 # the system CAs do not know the mesh CA
    with pytest.raises(ssl.SSLCertVerificationError):
        connection = http.client.HTTPSConnection("localhost", gw.https, context=untrusted, timeout=15)
        await asyncio.to_thread(connection.request, "GET", "/v1/providers")


async def test_errors_are_their_http_status_with_a_json_status_body(stack):
    mesh, gw = stack
    alice_id = user("alice")
    alice = user_token(mesh.topology, alice_id, ("user",))
    status, body, _ = await gw.call("POST", "/v1/wallets", alice, {"currencyCode": "USD"})      # no requestId
    assert status == 400 and body["code"] == 3
    assert body["details"][1]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert body["details"][1]["fieldViolations"][0]["field"] == "request_id"
    status, body, _ = await gw.call("GET", "/v1/nowhere", alice)
    assert status == 404 and body["code"] == 5 and "no such REST route" in body["message"]
    status, body, _ = await gw.call("GET", "/v1/providers?colour=red", alice)
    assert status == 400 and "colour" in body["message"]
    status, body, _ = await gw.call("POST", f"/v1/wallets?requestId={key()}", alice, "{not json")
    assert status == 400 and body["code"] == 3
    status, body, _ = await gw.call("GET", "/v1/providers/nobody", alice)
    assert status == 404 and body["details"][0]["reason"] == "PROVIDER_NOT_FOUND"
    same = key()
    assert (await gw.call("POST", f"/v1/wallets?requestId={same}", alice, {"currencyCode": "USD"}))[0] == 200
    status, body, _ = await gw.call("POST", f"/v1/wallets?requestId={same}", alice, {"currencyCode": "EUR"})
    assert status == 409 and body["details"][0]["reason"] == "REQUEST_ID_REUSED"
    status, body, _ = await gw.call("POST", f"/v1/wallets?requestId={key()}", alice, {"currencyCode": "USD"})
    assert status == 409 and body["details"][0]["reason"] == "WALLET_EXISTS"
    status, body, _ = await gw.call("POST", f"/v1/wallets?requestId={key()}", alice, "x" * 70_000)
    assert status == 413 and body["code"] == 3
    status, body, _ = await gw.call("QUERY", "/v1/wallets", alice)        # Envoy's codec refuses it, with no text
    assert status == 400 and body["code"] == 3 and body["message"].startswith("no such REST route: QUERY"), body


async def test_missing_expired_and_forged_user_tokens_are_401(stack):
    mesh, gw = stack
    alice_id = user("alice")
    expired = user_token(mesh.topology, alice_id, ("user",), now=time.time() - 7200)
    good = user_token(mesh.topology, alice_id, ("user",))
    head, payload, signature = good.split(".")
    import base64
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged_payload = base64.urlsafe_b64encode(json.dumps({**claims, "roles": ["operator"]}).encode()).decode()
    for token in (None, expired, f"{head}.{forged_payload.rstrip('=')}.{signature}", "garbage"):
        status, body, headers = await gw.call("GET", "/v1/providers", token)
        assert status == 401 and body["code"] == 16, (token, body)
        assert headers.get("www-authenticate", "").startswith("Bearer")


async def test_the_bearer_scheme_is_read_in_any_case(stack):
    mesh, gw = stack
    alice_id = user("alice")
    alice = user_token(mesh.topology, alice_id, ("user",))
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        status, body, _ = await gw.call("GET", "/v1/wallets", headers={"authorization": f"{scheme} {alice}"})
        assert status == 200, (scheme, body)
    status, body, _ = await gw.call("GET", "/v1/wallets", headers={"authorization": f"Basic {alice}"})
    assert status == 401 and body["message"] == "Jwt is missing"


async def test_another_users_wallet_is_404_and_an_operator_sees_it(stack):
    mesh, gw = stack
    alice_id = user("alice")
    bob_id = user("bob")
    alice, bob = (user_token(mesh.topology, u, ("user",)) for u in (alice_id, bob_id))
    _, created, _ = await gw.call("POST", f"/v1/wallets?requestId={key()}", alice, {"currencyCode": "USD"})
    wallet = created["wallet"]["name"]
    status, body, _ = await gw.call("GET", f"/v1/{wallet}", bob)
    assert status == 404 and body["details"][0]["reason"] == "WALLET_NOT_FOUND"
    assert (await gw.call("GET", f"/v1/{wallet}", user_token(mesh.topology, "ops", ("operator",))))[0] == 200
    status, body, _ = await gw.call("POST", f"/v1/transactions?requestId={key()}", bob, {
        "type": "TRANSACTION_TYPE_WITHDRAW", "sourceWallet": wallet, "amount": {"currencyCode": "USD", "amount": "1.00"}})
    assert status == 404


async def test_a_url_too_long_is_431_with_a_json_body_and_one_just_under_reaches_the_service(stack):
    mesh, gw = stack
    alice_id = user("alice")
    alice = user_token(mesh.topology, alice_id, ("user",))
    limit = MAX_REQUEST_HEADERS_KB * 1024
    for path in ("/v1/wallets/" + "w" * limit, "/v1/providers?pageToken=" + "t" * limit):
        status, body, _ = await gw.call("GET", path, alice)
        assert status == 431 and body["code"] == 3, (status, body)
        assert f"larger than {MAX_REQUEST_HEADERS_KB} KiB" in body["message"]
    # Just under the limit (the token and Envoy's headers take the rest): the service answers,
    # quoting the bad value cut short, never RESOURCE_EXHAUSTED (429) nor a reset (503).
    under = limit - 2048
    status, body, _ = await gw.call("GET", "/v1/wallets/" + "w" * under, alice)
    assert status == 400 and body["details"][1]["fieldViolations"][0]["field"] == "name", (status, body)
    assert len(body["message"]) < 1024 and "more characters" in body["message"]
    status, body, _ = await gw.call("GET", "/v1/providers?pageToken=" + "t" * under, alice)
    assert status == 400 and "page_token" in body["message"], (status, body)
    status, body, _ = await gw.call("POST", "/v1/providers:getQuotes", alice, {   # a long value in the body
        "direction": "PAYMENT_DIRECTION_PAY_IN", "amount": {"currencyCode": "USD", "amount": "1" * 60_000}})
    assert status == 400 and body["details"][1]["fieldViolations"][0]["field"] == "amount.amount", (status, body)


def access_log_size(gw: Gateway) -> int:
    """The size of the gateway's access log once Envoy has written out the lines of the requests
    that have ended (it writes every second)."""
    time.sleep(1.2)
    path = gw.topology.state_dir / "logs" / "gateway-access.jsonl"
    return path.stat().st_size if path.exists() else 0


def access_log(gw: Gateway, since: int, expected: set[tuple]) -> set[tuple]:
    """(path, status, grpc_status, grpc_code) of each whole line the gateway's access log gained
    after its first `since` bytes, once they hold all of `expected`, or after 10 s (Envoy writes
    the log out every second)."""
    path = gw.topology.state_dir / "logs" / "gateway-access.jsonl"
    deadline = time.monotonic() + 10
    while True:
        with open(path, "rb") as log:
            log.seek(since)
            lines = log.read().split(b"\n")[:-1]       # the last piece may be a line still being written
        logged = {(line["path"], line["status"], line["grpc_status"], line["grpc_code"]) for line in map(json.loads, lines)}
        if expected <= logged or time.monotonic() > deadline:
            return logged
        time.sleep(0.2)


async def test_the_access_log_has_the_services_own_grpc_status(stack):
    mesh, gw = stack
    alice_id = user("alice")
    alice = user_token(mesh.topology, alice_id, ("user",))
    since = access_log_size(gw)         # the lines of the module's other tests come before
    _, created, _ = await gw.call("POST", f"/v1/wallets?requestId={key()}", alice, {"currencyCode": "USD"})
    withdraw = f"/v1/transactions?requestId={key()}"
    status, body, _ = await gw.call("POST", withdraw, alice, {    # FAILED_PRECONDITION is 400
        "type": "TRANSACTION_TYPE_WITHDRAW", "sourceWallet": created["wallet"]["name"],
        "amount": {"currencyCode": "USD", "amount": "1.00"}})
    assert status == 400 and body["details"][0]["reason"] == "INSUFFICIENT_FUNDS", body
    assert (await gw.call("GET", "/v1/providers/nobody", alice))[0] == 404       # NOT_FOUND
    assert (await gw.call("GET", "/v1/providers/alpha-pay", alice))[0] == 200
    assert (await gw.call("GET", "/v1/providers/alpha-pay", None))[0] == 401     # Envoy's own: no RPC made
    expected = {(withdraw, 400, "FailedPrecondition", 9), ("/v1/providers/nobody", 404, "NotFound", 5),
                ("/v1/providers/alpha-pay", 200, "OK", 0), ("/v1/providers/alpha-pay", 401, None, None)}
    logged = access_log(gw, since, expected)
    assert expected <= logged, logged


def diboas(gw: Gateway, mesh, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DIBOAS_CERTS_DIR=str(mesh.topology.certs_dir), DIBOAS_GATEWAY_HTTP=f"127.0.0.1:{gw.http}",
               DIBOAS_GATEWAY_ADMIN=f"127.0.0.1:{gw.admin}",
               **{f"DIBOAS_{n.upper()}_ADDRESS": f"127.0.0.1:{p}" for n, p in mesh.ports.items()})
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("shared_stack", ALL_SHAPES, indirect=True)
async def test_the_cli_demo_walks_through_every_transaction_type_over_rest(stack):
    mesh, gw = stack
    done = await asyncio.to_thread(diboas, gw, mesh, "demo")
    assert done.returncode == 0, done.stdout + done.stderr
    for seen in ("POST /v1/wallets", "paid in by providers/", "-> COMPLETED", "chains/polygon",
                 "paid out by providers/", ": 12045.00 USD", ": 25.00 USD", "answered 404",
                 "compliance HELD: held for a compliance review (screenings/", "approved by operator",
                 "-> FAILED: refused by compliance screening (sanctions)", "compliance REJECTED; nothing was held"):
        assert seen in done.stdout, (seen, done.stdout)
    health = await asyncio.to_thread(diboas, gw, mesh, "health")
    assert health.returncode == 0 and "gateway" in health.stdout and "all SERVING" in health.stdout, health.stdout
    deposit = re.search(r"-> (transactions/\w+) PENDING", done.stdout).group(1)
    watched = await asyncio.to_thread(diboas, gw, mesh, "watch", deposit)      # settled: its outcome, once
    assert watched.returncode == 0 and watched.stdout.count("\n") == 1, watched.stdout + watched.stderr
    assert f"{deposit}  COMPLETED  payments/" in watched.stdout, watched.stdout
    missing = await asyncio.to_thread(diboas, gw, mesh, "watch", "nope")
    assert missing.returncode == 1 and "transactions/nope: NOT_FOUND" in missing.stderr, missing.stderr
    # The operator's view of the demo's screenings: the held one, approved on review, with the rule.
    held = await asyncio.to_thread(diboas, gw, mesh, "screenings", "list", "--held")
    assert held.returncode == 0 and held.stdout == "no screenings held for review\n", held.stdout + held.stderr
    listed = await asyncio.to_thread(diboas, gw, mesh, "screenings", "list")
    reviewed = re.search(r"(screenings/\w+) .* DEPOSIT 12000.00 USD .* APPROVED on review by operator "
                         r"\(demo: source of funds checked\)\n +held by large-transaction", listed.stdout)
    assert listed.returncode == 0 and reviewed and "REJECTED" in listed.stdout, listed.stdout + listed.stderr
    again = await asyncio.to_thread(diboas, gw, mesh, "screenings", "review", reviewed.group(1), "reject",
                                    "--reason", "second thoughts")
    assert again.returncode == 1 and again.stderr == (f"diboas: compliance: FAILED_PRECONDITION: screening "
                                                      f"{reviewed.group(1)} is APPROVED, not HELD: only a held "
                                                      f"screening can be reviewed\n"), again.stderr


async def test_the_cli_switches_provider_and_chain_faults(stack):
    mesh, gw = stack
    alice_id = user("alice")
    try:
        done = await asyncio.to_thread(diboas, gw, mesh, "faults", "provider", "beta-ramp", "--error-rate", "100")
        assert done.returncode == 0 and '"errorRatePercent": 100' in done.stdout, done.stderr
        _, body, _ = await gw.call("GET", "/v1/providers/beta-ramp", user_token(mesh.topology, alice_id, ("user",)))
        assert body["provider"]["faults"]["errorRatePercent"] == 100
        done = await asyncio.to_thread(diboas, gw, mesh, "faults", "chain", "solana", "--failing-step", "TARGET")
        assert done.returncode == 0 and "TRANSFER_STEP_TARGET" in done.stdout, done.stderr
        cleared = await asyncio.to_thread(diboas, gw, mesh, "faults", "chain", "solana", "--clear")
        assert "faults: none" in cleared.stdout
        refused = await asyncio.to_thread(diboas, gw, mesh, "faults", "provider", "beta-ramp", "--error-rate", "101")
        assert refused.returncode == 1 and "faults.error_rate_percent" in refused.stderr
    finally:                            # the other tests of the shared processes use them too
        for kind, name in (("provider", "beta-ramp"), ("chain", "solana")):
            cleared = await asyncio.to_thread(diboas, gw, mesh, "faults", kind, name, "--clear")
            assert cleared.returncode == 0, cleared.stderr


async def test_bytes_that_are_not_utf8_or_control_characters_in_a_path_or_query_are_400(stack):
    mesh, gw = stack
    alice_id = user("alice")
    alice = user_token(mesh.topology, alice_id, ("user",))
    cases = {
        "/v1/wallets/%FF": ("name", "MALFORMED_REQUEST"),
        "/v1/transactions/%C3%28": ("name", "MALFORMED_REQUEST"),
        "/v1/wallets?pageToken=%FF": ("page_token", "MALFORMED_REQUEST"),
        "/v1/transactions?wallet=wallets/a%E9": ("wallet", "MALFORMED_REQUEST"),
        "/v1/wallets?pageToken=%00": ("page_token", "CONTROL_CHARACTER"),
        "/v1/wallets?ownerId=alice%00": ("owner_id", "CONTROL_CHARACTER"),
        "/v1/wallets/abc%0A": ("name", "CONTROL_CHARACTER"),
    }
    for path, (field, reason) in cases.items():
        status, body, _ = await gw.call("GET", path, alice)
        assert status == 400 and body.get("code") == 3, (path, status, body)
        assert body["details"][0]["reason"] == reason, (path, body)
        assert body["details"][1]["fieldViolations"][0]["field"] == field, (path, body)
        assert "Error" not in body["message"] and "Exception" not in body["message"], (path, body)

"""Schemathesis (pinned in pyproject.toml) against the live gateway: the real Envoy in front of the
services as real processes, a user's token, the OpenAPI document the gateway serves. It sends
schema-valid and schema-invalid requests to every operation (its coverage, fuzzing and stateful
phases, seeded), and fails on any 5xx, on an answer that the document does not describe (status,
content type, body), and on a 2xx to a request the document says is invalid.

The stateful phase follows links from one answer to the next request (a wallet created, then
read, validated against, listed, deposited into; the deposit then read and watched). The
document cannot state them in standard OpenAPI (a path parameter is one segment of a resource
name, "wallets/{wallet}", and a runtime expression cannot take the segment out), so the test
adds them to its copy with schemathesis's regex extractor."""
from __future__ import annotations

import asyncio
import collections
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from services.config_files import REPO_ROOT

from conftest import user_token
from meshkit import ORDER, mesh_processes
from test_gateway import Gateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SEED = 13                   # the run is reproducible: `schemathesis run --seed 13 ...` (see config below)
MAX_EXAMPLES = 60           # per operation and phase
MIN_REQUESTS = 1000
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"

# Links between operations, for the stateful phase: (from operation, to operation, parameters, body).
_WALLET = "$response.body#/wallet/name#regex:^wallets/(.+)$"
LINKS = [
    # Entry points: schemathesis starts its sequences from a list without parameters; it takes
    # CreateWallet's requestId and ownerId for references to resources no operation makes.
    ("BlockchainService_ListChains", "WalletService_CreateWallet", {}, None),
    ("ProviderService_ListProviders", "WalletService_CreateWallet", {}, None),
    ("WalletService_CreateWallet", "WalletService_GetWallet", {"path.wallet": _WALLET}, None),
    ("WalletService_CreateWallet", "WalletService_ListLedgerEntries", {"path.wallet": _WALLET}, None),
    ("WalletService_CreateWallet", "WalletService_ValidateBalance", {"path.wallet": _WALLET},
     {"amount": {"currencyCode": "$response.body#/wallet/currencyCode", "amount": "1"}}),
    ("WalletService_CreateWallet", "TransactionService_ListTransactions",
     {"query.wallet": "$response.body#/wallet/name"}, None),
    ("WalletService_CreateWallet", "TransactionService_CreateTransaction", {},
     {"type": "TRANSACTION_TYPE_DEPOSIT", "destinationWallet": "$response.body#/wallet/name",
      "amount": {"currencyCode": "$response.body#/wallet/currencyCode", "amount": "25"}}),
    ("TransactionService_CreateTransaction", "TransactionService_GetTransaction",
     {"path.transaction": "$response.body#/transaction/name#regex:^transactions/(.+)$"}, None),
    ("TransactionService_CreateTransaction", "TransactionService_WatchTransaction",
     {"path.transaction": "$response.body#/transaction/name#regex:^transactions/(.+)$"}, None),
    ("ProviderService_ListProviders", "ProviderService_GetProvider",
     {"path.provider": "$response.body#/providers/0/name#regex:^providers/(.+)$"}, None),
    ("ProviderService_ListProviders", "ProviderService_GetProviderHealth",
     {"path.provider": "$response.body#/providers/0/name#regex:^providers/(.+)$"}, None),
    ("BlockchainService_ListChains", "BlockchainService_GetChain",
     {"path.chain": "$response.body#/chains/0/name#regex:^chains/(.+)$"}, None),
]


def with_links(document: dict) -> dict:
    operations = {op["operationId"]: op for ops in document["paths"].values() for op in ops.values()}
    for source, target, parameters, body in LINKS:
        link = {"operationId": target, "parameters": parameters}
        if body:
            link["requestBody"] = body
        operations[source]["responses"]["200"].setdefault("links", {})[f"to_{target}"] = link
    return document


def config(path: Path) -> Path:
    """schemathesis.toml: the checks, the seed, and values the services take (the currencies of
    currencies.yaml and amounts within their scales) offered among the generated ones."""
    currencies = sorted(yaml.safe_load((REPO_ROOT / "currencies.yaml").read_text())["currencies"])
    text = f"""
seed = {SEED}
workers = 1
continue-on-failure = true
max-failures = 1000
request-timeout = 30

[generation]
max-examples = {MAX_EXAMPLES}
database = "none"                # no examples kept from earlier runs: each run is the seed's alone

# Sequences of schema-valid requests, so that a step's answer has something for the next one.
[phases.stateful]
max-steps = 12
inference.algorithms = []          # only the links of LINKS
[phases.stateful.generation]
mode = "positive"

[checks]
enabled = true
# Not what this test is for (see the module's docstring): a value the document
# allows may still be refused by a service's own rules (an unknown currency, a wallet of another
# currency, an amount beyond the currency's scale), and a method no route has is a 404, not a 405.
positive_data_acceptance.enabled = false
unsupported_method.enabled = false
allow_header_conformance.enabled = false

[dictionaries.currencies]
values = {json.dumps(currencies)}
[dictionaries.amounts]
values = ["1", "0.01", "25.50", "100.00", "0.00000001"]
[dictionaries.owners]
values = ["", "fuzzer", "sequencer"]   # the users of the two runs: their own wallets, or another's (403)

# The same for a field's proto name (the transcoder reads both; the later one in the body wins).
[parameters]
"body.currencyCode" = {{ dictionary = "currencies", probability = 0.8 }}
"body.currency_code" = {{ dictionary = "currencies", probability = 0.8 }}
"body.amount.currencyCode" = {{ dictionary = "currencies", probability = 0.8 }}
"body.amount.currency_code" = {{ dictionary = "currencies", probability = 0.8 }}
"body.amount.amount" = {{ dictionary = "amounts", probability = 0.8 }}
"body.ownerId" = {{ dictionary = "owners", probability = 0.8 }}
"body.owner_id" = {{ dictionary = "owners", probability = 0.8 }}
"""
    path.write_text(text)
    return path


def operation_of(document: dict):
    """(method, URL path) -> operationId, for the requests the run recorded."""
    patterns = []
    for path, ops in document["paths"].items():
        regex = re.compile("^" + re.sub(r"\\\{[A-Za-z0-9]+\\\}", "[^/]+?", re.escape(path)) + "$")
        for verb, op in ops.items():
            patterns.append((verb.upper(), regex, op["operationId"], path.count("{")))
    # A literal suffix (":watch") must win over a parameter that could swallow it.
    patterns.sort(key=lambda p: -len(p[1].pattern))

    def find(method: str, url_path: str) -> str:
        for verb, regex, operation_id, _ in patterns:
            if verb == method and regex.match(url_path):
                return operation_id
        return f"{method} on a documented path: not an operation (a probe)"
    return find


def schemathesis(phases: str, base: str, token: str, document: Path, settings: Path, reports: Path):
    """One `schemathesis run` of these phases (a blocking call): its process and the requests it sent."""
    command = [str(SCHEMATHESIS), "--config-file", str(settings), "--no-color", "run", str(document), "--url", base,
               "--phases", phases, "--header", f"Authorization: Bearer {token}", "--report", "har",
               "--report-har-path", str(reports / f"{phases}.har")]
    # Each run takes about 20-25 s; two of them stay within the test's own timeout.
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=reports)   # its cache there
    (reports / f"{phases}.out").write_text(done.stdout + done.stderr)
    return done, json.loads((reports / f"{phases}.har").read_text())["log"]["entries"]


async def test_schemathesis_finds_no_server_error_no_answer_off_the_document_and_no_invalid_request_accepted(
        pki, tmp_path):
    async with mesh_processes(pki, tmp_path, "services") as (topology, _):
        ports = {name: topology.services[name].address.port for name in ORDER}
        # One user sends every request: lift the per-user rate limit (a 429 is a documented answer,
        # but it would stand in for the service's).
        gateway = Gateway(topology, ports, tmp_path, DIBOAS_GATEWAY_RATE_LIMIT="100000",
                          DIBOAS_GATEWAY_RATE_LIMIT_BURST="100000")
        try:
            await gateway.start()
            base = f"http://127.0.0.1:{gateway.http}"
            served = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(f"{base}/openapi.json").read()))
            document = tmp_path / "openapi.json"
            document.write_text(json.dumps(with_links(served)))
            settings, reports = config(tmp_path / "schemathesis.toml"), tmp_path / "schemathesis"
            reports.mkdir()
            started = time.monotonic()
            # A user has one wallet per currency: the stateful phase is another user's, so that its
            # sequences start from wallets it can still create.
            single, requests = await asyncio.to_thread(schemathesis, "examples,coverage,fuzzing", base,
                                                       user_token(topology, "fuzzer", ("user",)), document, settings,
                                                       reports)
            stateful, sequences = await asyncio.to_thread(schemathesis, "stateful", base,
                                                          user_token(topology, "sequencer", ("user",)), document,
                                                          settings, reports)
            seconds = time.monotonic() - started
        finally:
            gateway.process.stop()
    find = operation_of(served)
    counts = collections.Counter(find(e["request"]["method"], re.sub(r"^https?://[^/]+|\?.*$", "", e["request"]["url"]))
                                 for e in requests + sequences)
    statuses = collections.Counter(e["response"]["status"] for e in requests + sequences)
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", stateful.stdout)
    scenarios = re.search(r"Scenarios:\s+(\d+)", stateful.stdout)
    print(f"\nschemathesis seed {SEED}: {len(requests) + len(sequences)} requests in {seconds:.1f}s "
          f"({len(requests)} one by one, {len(sequences)} in {scenarios and scenarios.group(1)} stateful sequences; "
          f"{links and links.group(0)})")
    for name, count in sorted(counts.items()):
        print(f"  {count:5d}  {name}")
    print(f"  statuses: {dict(sorted(statuses.items()))}")
    assert single.returncode == 0, single.stdout[-20000:] + single.stderr[-5000:]
    assert stateful.returncode == 0, stateful.stdout[-20000:] + stateful.stderr[-5000:]
    operations = {op["operationId"] for ops in served["paths"].values() for op in ops.values()}
    assert len(operations) == 16 and operations <= set(counts), operations - set(counts)
    assert sum(counts.values()) >= MIN_REQUESTS, counts
    assert not any(s >= 500 for s in statuses), statuses
    # The sequences went deep: wallets created, then used; deposits into them read and watched.
    followed = {find(e["request"]["method"], re.sub(r"^https?://[^/]+|\?.*$", "", e["request"]["url"]))
                for e in sequences if e["response"]["status"] == 200}
    assert {target for _, target, _, _ in LINKS} <= followed, stateful.stdout[-3000:]
    assert links and int(links.group(1)) >= len(LINKS) - 2, stateful.stdout[-3000:]

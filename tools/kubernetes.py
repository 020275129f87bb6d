"""Kubernetes manifests rendered from the topology: nothing in deploy/kubernetes/base is written
by hand.

    .venv/bin/python -m tools.kubernetes            (make kubernetes) write deploy/kubernetes/base/
    .venv/bin/python -m tools.kubernetes --check    exit 1, naming the file, when they are out of date

From mesh.yaml (and the DIBOAS_* variables of the environment, as everywhere): per service a
Deployment (replicas = its instances), a headless Service (callers resolve every pod and balance
themselves, with gRPC health) and a PodDisruptionBudget; the Envoy gateway with its configuration,
rendered by gateway/envoy_config.py, as a ConfigMap; the cert-manager Certificates of every
identity (SPIFFE URI and the service's DNS names, from the mesh CA as an Issuer); PostgreSQL and
RabbitMQ as external endpoints (ExternalName Services); and the Secret of connection URLs to fill
in. The pods run the services shape: one service per pod, each pod one instance.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Mapping

import yaml

from gateway.envoy_config import DESCRIPTORS, render
from services.config_files import REPO_ROOT, ConfigError
from services.runtime.config import ServiceConfig, Topology, load_topology

OUT = REPO_ROOT / "deploy" / "kubernetes" / "base"
NAMESPACE = "diboas"
IMAGE = "diboas/mesh:latest"
APP = "/app"                                  # where the image holds this repository
CERTS = "/etc/diboas/certs"                   # each pod's certificates, keys and key rings
STATE = "/var/lib/diboas"
ENVOY_CONFIG = "/etc/envoy"
PART_OF = {"app.kubernetes.io/part-of": "diboas"}
# Past the drain: the unready pause and the drain itself, then this much for the rest of the stop.
GRACE_MARGIN_SECONDS = 5
RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
GATEWAY_RESOURCES = {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}
EVENT_KEYS, JWKS = "events-keys.json", "jwks.json"
# The rendering environment's DIBOAS_* settings reach every pod (DIBOAS_DRAIN_SECONDS changes the
# grace period and the pods' drain alike), except what is this machine's or each pod's own: where
# things are, listen and are reached, how many instances, the databases and the broker (a Secret).
MACHINE_OWN = re.compile(r"DIBOAS_(TOPOLOGY|MODE|INSTANCES?|CERTS_DIR|STATE_DIR|MESSAGING_TRANSPORT|RABBITMQ_URL"
                         r"|GATEWAY_(HTTP|HTTPS|ADMIN)|\w+_(ADDRESS|LISTEN|METRICS|DATABASE|INSTANCES))")
HEADER = "# Rendered from mesh.yaml by tools/kubernetes.py (make kubernetes): edit those, not this file.\n"


def host(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc.cluster.local"


def pod_environment(topology: Topology, namespace: str) -> dict[str, str]:
    """What every pod's topology is: each service reached at its headless Service's name, each
    server listening on every interface at its port, one instance per pod, events and work over
    RabbitMQ, metrics open to the cluster's scraper."""
    env = {"DIBOAS_CERTS_DIR": CERTS, "DIBOAS_STATE_DIR": STATE, "DIBOAS_INSTANCES": "1",
           "DIBOAS_MESSAGING_TRANSPORT": "rabbitmq", "DIBOAS_PUBLIC_METRICS": "on", "DIBOAS_MODE": "services",
           "DIBOAS_GATEWAY_HTTP": f"0.0.0.0:{topology.gateway.http.port}",
           "DIBOAS_GATEWAY_HTTPS": f"0.0.0.0:{topology.gateway.https.port}"}
    for name, service in topology.services.items():
        key = name.upper().replace("-", "_")
        env[f"DIBOAS_{key}_ADDRESS"] = f"{host(name, namespace)}:{service.address.port}"
        env[f"DIBOAS_{key}_LISTEN"] = f"0.0.0.0:{service.address.port}"
        if service.metrics is not None:
            env[f"DIBOAS_{key}_METRICS"] = f"0.0.0.0:{service.metrics.port}"
    return env


def _meta(name: str, namespace: str, labels: Mapping[str, str] | None = None) -> dict:
    return {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": name, **PART_OF, **(labels or {})}}


def _security() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def _certs_volume(name: str, keys: list[tuple[str, str]]) -> dict:
    """The identity's certificate, key and the CA (from its cert-manager Secret), named as
    services/runtime/tls.py reads them, with the shared files in `keys` (Secret, file)."""
    sources = [{"secret": {"name": f"diboas-{name}-tls", "items": [
        {"key": "tls.crt", "path": f"{name}.crt"}, {"key": "tls.key", "path": f"{name}.key"},
        {"key": "ca.crt", "path": "ca.crt"}]}}]
    sources += [{"secret": {"name": secret, "items": [{"key": file, "path": file}]}} for secret, file in keys]
    return {"name": "certs", "projected": {"sources": sources, "defaultMode": 0o440}}


def _probe(service: str, live: bool, period: int) -> dict:
    command = ["python", "-m", "services.cli", "probe", service] + (["--live"] if live else [])
    return {"exec": {"command": command}, "periodSeconds": period, "timeoutSeconds": 5,
            "failureThreshold": 3 if live else 2}


def grace_seconds(topology: Topology) -> int:
    d = topology.defaults
    return math.ceil(d.unready_seconds + d.drain_seconds) + GRACE_MARGIN_SECONDS


def service_documents(topology: Topology, service: ServiceConfig, namespace: str, image: str) -> list[dict]:
    name, port = service.name, service.address.port
    labels = {"app.kubernetes.io/name": name}
    keys = [("diboas-users-jwks", JWKS)] + ([("diboas-event-keys", EVENT_KEYS)]
                                           if service.publishes or service.subscribes else [])
    ports = [{"name": "grpc", "containerPort": port}]
    if service.metrics is not None:
        ports.append({"name": "metrics", "containerPort": service.metrics.port})
    container = {
        "name": name, "image": image, "args": ["python", "-m", "services", name],
        "envFrom": [{"configMapRef": {"name": "diboas-mesh"}}, {"secretRef": {"name": "diboas-connections"}}],
        "ports": ports,
        # Starting includes the database migrations: up to a minute before the first SERVING.
        "startupProbe": {**_probe(name, live=True, period=2), "failureThreshold": 30},
        # Ready only while SERVING: not while its database is away, nor once SIGTERM began the drain.
        # (The callers' own gRPC health watch sees NOT_SERVING at once; these keep DNS and restarts right.)
        "readinessProbe": _probe(name, live=False, period=10),
        # Alive while it answers at all (NOT_SERVING included): restarting cannot bring a database back.
        "livenessProbe": _probe(name, live=True, period=20),
        "resources": RESOURCES,
        "securityContext": _security(),
        "volumeMounts": [{"name": "certs", "mountPath": CERTS, "readOnly": True},
                         {"name": "state", "mountPath": STATE}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, namespace),
        "spec": {
            "replicas": service.instances,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {**labels, **PART_OF}},
                "spec": {
                    # SIGTERM: NOT_SERVING for unready_seconds, then in-flight calls get drain_seconds.
                    "terminationGracePeriodSeconds": grace_seconds(topology),
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                        "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [_certs_volume(name, keys), {"name": "state", "emptyDir": {}}],
                },
            },
        },
    }
    headless = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace),
        # Headless: the name resolves to every ready pod; callers balance themselves (round_robin
        # with gRPC health), as a connection-level proxy would pin each HTTP/2 connection to one pod.
        "spec": {"clusterIP": "None", "selector": labels, "publishNotReadyAddresses": False,
                 "ports": [{"name": "grpc", "port": port, "targetPort": "grpc", "appProtocol": "grpc"}]},
    }
    budget = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(name, namespace),
        # A voluntary eviction (a node drain) keeps one pod serving; with one replica it may take
        # it (the Deployment's surge brings another), so a drain is never blocked forever.
        "spec": {"selector": {"matchLabels": labels},
                 **({"minAvailable": 1} if service.instances > 1 else {"maxUnavailable": 1})},
    }
    return [deployment, headless, budget]


def gateway_documents(topology: Topology, namespace: str, image: str) -> list[dict]:
    g = topology.gateway
    config = render(topology, Path("/dev/stdout"), DESCRIPTORS)
    # The files Envoy reads from this repository (the descriptor set, the pages it serves) are
    # under /app in the image.
    text = json.dumps(config, indent=1, sort_keys=True).replace(f'"{REPO_ROOT}/', f'"{APP}/')
    labels = {"app.kubernetes.io/name": g.name}
    ready = ("import sys, urllib.request; "
             f"sys.exit(urllib.request.urlopen('http://{g.admin}/ready', timeout=3).status != 200)")
    drain = math.ceil(topology.defaults.drain_seconds)
    # Envoy stops at once on SIGTERM: before it, its listeners drain (new connections refused,
    # open ones closed as their requests finish) for the drain time.
    drain_first = ("import time, urllib.request; urllib.request.urlopen(urllib.request.Request("
                   f"'http://{g.admin}/drain_listeners?graceful', method='POST'), timeout=3); time.sleep({drain})")
    container = {
        "name": "envoy", "image": image,
        "args": ["envoy", "-c", f"{ENVOY_CONFIG}/envoy.json", "--drain-time-s", str(drain),
                 "--parent-shutdown-time-s", str(drain + 2)],
        "lifecycle": {"preStop": {"exec": {"command": ["python", "-c", drain_first]}}},
        "ports": [{"name": "http", "containerPort": g.http.port}, {"name": "https", "containerPort": g.https.port}],
        "readinessProbe": {"exec": {"command": ["python", "-c", ready]}, "periodSeconds": 5, "timeoutSeconds": 5},
        "livenessProbe": {"exec": {"command": ["python", "-c", ready]}, "periodSeconds": 10, "timeoutSeconds": 5,
                          "failureThreshold": 3},
        "resources": GATEWAY_RESOURCES,
        "securityContext": _security(),
        "volumeMounts": [{"name": "certs", "mountPath": CERTS, "readOnly": True},
                         {"name": "envoy-config", "mountPath": ENVOY_CONFIG, "readOnly": True}],
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("gateway-envoy", namespace),
         "data": {"envoy.json": text + "\n"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(g.name, namespace),
         "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                  "template": {"metadata": {"labels": {**labels, **PART_OF}}, "spec": {
                      "terminationGracePeriodSeconds": grace_seconds(topology),
                      # fsGroup: the mounted certificates and keys are readable by the group only.
                      "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                          "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                      "containers": [container],
                      "volumes": [_certs_volume(g.name, [("diboas-users-jwks", JWKS)]),
                                  {"name": "envoy-config", "configMap": {"name": "gateway-envoy"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(g.name, namespace),
         "spec": {"selector": labels, "ports": [
             {"name": "http", "port": g.http.port, "targetPort": "http"},
             {"name": "https", "port": g.https.port, "targetPort": "https"}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(g.name, namespace),
         "spec": {"selector": {"matchLabels": labels}, "minAvailable": 1}},
    ]


def certificate_documents(topology: Topology, namespace: str) -> list[dict]:
    """The mesh CA as a cert-manager Issuer, and a Certificate per identity: the SPIFFE URI the
    services authorize by, and the DNS names they are dialled by (certs/pki.py issues the same
    for `make certs`)."""
    issuer = {"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": _meta("diboas-mesh-ca", namespace),
              # The CA's certificate and key (tls.crt, tls.key): `make certs` makes one, or bring your own.
              "spec": {"ca": {"secretName": "diboas-mesh-ca"}}}
    documents = [issuer]
    for name, spiffe in topology.identities().items():
        dns = [name, host(name, namespace)] if name in topology.services or name == topology.gateway.name else [name]
        documents.append({
            "apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": _meta(f"diboas-{name}", namespace),
            "spec": {"secretName": f"diboas-{name}-tls", "commonName": name, "dnsNames": dns, "uris": [spiffe],
                     "duration": "2160h", "renewBefore": "720h",
                     "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"},
                     "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
                     "issuerRef": {"name": "diboas-mesh-ca", "kind": "Issuer", "group": "cert-manager.io"}}})
    return documents


def external_documents(topology: Topology, namespace: str) -> list[dict]:
    """PostgreSQL and RabbitMQ run outside the cluster's workloads: names to point at them, and
    the connection URLs (placeholders until filled in) every service reads."""
    secret = {"DIBOAS_RABBITMQ_URL": f"amqp://diboas:CHANGE-ME@rabbitmq.{namespace}.svc.cluster.local:5672/diboas"}
    for name in topology.services:
        secret[f"DIBOAS_{name.upper().replace('-', '_')}_DATABASE"] = (
            f"postgresql+psycopg://diboas_{name}:CHANGE-ME@postgres.{namespace}.svc.cluster.local:5432/{name}")
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta("postgres", namespace),
         "spec": {"type": "ExternalName", "externalName": "postgres.example.internal"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta("rabbitmq", namespace),
         "spec": {"type": "ExternalName", "externalName": "rabbitmq.example.internal"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta("diboas-connections", namespace),
         "type": "Opaque", "stringData": secret},
    ]


def manifests(env: Mapping[str, str], namespace: str = NAMESPACE, image: str = IMAGE) -> dict[str, list[dict]]:
    """File name -> its documents. `env`: the environment the topology is read with (replicas
    come from its instances, DIBOAS_INSTANCES included)."""
    chosen = load_topology(env=env)
    inherited = {k: v for k, v in env.items() if k.startswith("DIBOAS_") and not MACHINE_OWN.fullmatch(k)}
    pod_env = {**inherited, **pod_environment(chosen, namespace)}
    topology = load_topology(env={**env, **pod_env})          # as each pod sees it
    files = {"namespace.yaml": [{"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": namespace, "labels": dict(PART_OF)}}],
             "mesh-config.yaml": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("diboas-mesh", namespace),
                                   "data": dict(sorted(pod_env.items()))}],
             "external.yaml": external_documents(topology, namespace),
             "certificates.yaml": certificate_documents(topology, namespace)}
    for name in topology.services:
        files[f"{name}.yaml"] = service_documents(topology, chosen.services[name], namespace, image)
    files["gateway.yaml"] = gateway_documents(topology, namespace, image)
    files["kustomization.yaml"] = [{"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                    "namespace": namespace,
                                    "resources": [f for f in files if f != "kustomization.yaml"]}]
    return files


def texts(files: Mapping[str, list[dict]]) -> dict[str, str]:
    return {name: HEADER + yaml.safe_dump_all(docs, sort_keys=False, width=120) for name, docs in files.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kubernetes", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the folder (default: {OUT.relative_to(REPO_ROOT)})")
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--image", default=IMAGE)
    args = parser.parse_args(argv)
    try:
        rendered = texts(manifests(os.environ, args.namespace, args.image))
    except ConfigError as exc:
        print(f"kubernetes: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = sorted(n for n, t in rendered.items() if not (args.out / n).exists() or (args.out / n).read_text() != t)
        extra = sorted(p.name for p in args.out.glob("*.yaml") if p.name not in rendered) if args.out.exists() else []
        for name in stale:
            print(f"kubernetes: {args.out / name} differs from what mesh.yaml renders: run `make kubernetes`",
                  file=sys.stderr)
        for name in extra:
            print(f"kubernetes: {args.out / name} is not rendered from mesh.yaml any more: remove it", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text)
    print(f"kubernetes: wrote {len(rendered)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m services.meshclient IDENTITY`: check that IDENTITY can call the mesh (it is in the
topology, its certificate is there and valid) and print what the policy lets it call.

Exit codes: 0 ready, 1 the policy lets it call nothing yet, 2 a configuration error (one line on
stderr saying what is missing and what to run)."""
from __future__ import annotations

import argparse
import sys

from cryptography import x509

from services.config_files import ConfigError

from .client import MeshClient


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.meshclient", description=__doc__.split("\n\n")[0])
    p.add_argument("identity", help="the caller's name in the topology (under clients: or services:)")
    p.add_argument("--topology", metavar="FILE", help="topology file (default: DIBOAS_TOPOLOGY or mesh.yaml)")
    p.add_argument("--certs-dir", metavar="DIR", help="certificates (default: DIBOAS_CERTS_DIR or the topology's)")
    args = p.parse_args(argv)
    try:
        mesh = MeshClient.from_topology(args.identity, args.topology, certs_dir=args.certs_dir)
    except ConfigError as exc:
        print(f"meshclient: {exc}", file=sys.stderr)
        return 2
    cert = mesh.topology.certs_dir / f"{mesh.identity}.crt"
    expires = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
    print(f"{mesh.identity}: {mesh.spiffe_id}\ncertificate {cert}, valid until {expires:%Y-%m-%d}")
    allowed = mesh.allowed()
    for service, methods in allowed.items():
        policy = mesh.topology.services[service].policy
        if "*" in methods:
            refused = sorted(m for m, callers in policy.items() if mesh.identity not in callers)
            shown = "every method" + (f" but {', '.join(refused)}" if refused else "")
        else:
            shown = ", ".join(methods)
        print(f"may call {service} ({mesh.topology.services[service].address}): {shown}")
    if not allowed:
        print(f"the policy of {mesh.topology.path} lets {mesh.identity} call nothing yet: name it in a service's "
              "`policy:` (docs/guide-new-service.md, step 3)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`diboas`: the operator's command line for the mesh.

  diboas health                 health of every service (the spec's ServiceHealthMonitor)
  diboas token --for wallet     a service JWT for grpcurl (as the operator, by default)

Every command has --help. Exit codes: 0 ok, 1 something is unhealthy, 2 bad usage or config.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from services.monitor import health_report
from services.runtime.auth import MAX_TOKEN_LIFETIME_SECONDS, TokenIssuer
from services.runtime.config import ConfigError, Topology, load_topology
from services.runtime.tls import load_identity


def cmd_health(args, topology: Topology) -> int:
    report = asyncio.run(health_report(topology, args.identity, args.timeout))
    healthy = all(r.status == "SERVING" for r in report)
    if args.json:
        print(json.dumps({"healthy": healthy, "services": [r.as_dict() for r in report]}, indent=2))
    else:
        for r in report:
            detail = f"  ({r.error})" if r.error else ""
            print(f"{r.service:<12} {r.address:<18} {r.status:<12} {r.latency_ms:>7.1f} ms{detail}")
        print("all services SERVING" if healthy else "some services are not SERVING")
    return 0 if healthy else 1


def cmd_token(args, topology: Topology) -> int:
    identities = topology.identities()
    if args.identity not in identities:
        raise ConfigError(f"'{args.identity}' is not an identity of the mesh (known: {', '.join(sorted(identities))})")
    if not 0 < args.ttl <= MAX_TOKEN_LIFETIME_SECONDS:
        raise ConfigError(f"--ttl must be between 1 and {MAX_TOKEN_LIFETIME_SECONDS} seconds (services refuse "
                          f"longer-lived tokens), got {args.ttl:g}")
    audience = topology.service(args.audience).identity
    files = load_identity(topology.certs_dir, args.identity)
    print(TokenIssuer(identities[args.identity], files.key, ttl_seconds=args.ttl).token_for(audience))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="diboas", description="Operate the diBoaS mesh.")
    top.add_argument("--topology", help="topology file (default: DIBOAS_TOPOLOGY or mesh.yaml)")
    sub = top.add_subparsers(dest="command", required=True)

    health = sub.add_parser("health", help="health of every service",
                            description="Ask every service of the topology for its gRPC health, concurrently.")
    health.add_argument("--as", dest="identity", default="operator", help="client identity (default: operator)")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds per service (default: 2)")
    health.add_argument("--json", action="store_true", help="machine-readable output")
    health.set_defaults(run=cmd_health)

    token = sub.add_parser("token", help="print a service JWT (for grpcurl -H 'authorization: Bearer ...')",
                           description="Mint a short-lived service JWT signed with an identity's mesh key. "
                                       "It is only accepted over a connection that presents that identity's "
                                       "certificate.")
    token.add_argument("--for", dest="audience", required=True, help="the service to call, e.g. wallet")
    token.add_argument("--as", dest="identity", default="operator", help="whose token (default: operator)")
    token.add_argument("--ttl", type=float, default=300.0, help="lifetime in seconds (default: 300)")
    token.set_defaults(run=cmd_token)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args, load_topology(args.topology))
    except ConfigError as exc:
        print(f"diboas: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

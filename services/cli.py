"""`diboas`: the operator's command line for the mesh.

  diboas health                 health of every service (the spec's ServiceHealthMonitor)
  diboas probe wallet           is this machine's wallet SERVING (a Kubernetes exec probe; --live)
  diboas token --for wallet     a service JWT for grpcurl (as the operator, by default)
  diboas user-token alice       a development user JWT for the REST gateway
  diboas dead-letters list      events and parked sagas given up on; `replay ID... | --all` again
  diboas faults provider NAME   switch a simulated provider's faults (or `chain NAME`; --clear)
  diboas watch transactions/ID  a transaction's state now and at every change, until it settles
  diboas screenings list        compliance screenings (--held: those waiting for a review)
  diboas screenings review ID approve|reject --reason "..."   an operator's review of a held one
  diboas demo                   wallets, a deposit, a send, a bridge and a withdrawal over REST,
                                a transfer held for review and approved, one refused by sanctions

Every command has --help. Exit codes: 0 ok, 1 something is unhealthy (or a call failed), 2 bad
usage or config, 3 the watched transaction FAILED.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any, Coroutine, TypeVar

import grpc
from google.protobuf import json_format

from diboas.blockchain.v1 import blockchain_pb2, blockchain_pb2_grpc
from diboas.compliance.v1 import compliance_pb2, compliance_pb2_grpc
from diboas.events.v1 import events_pb2, events_pb2_grpc
from diboas.provider.v1 import provider_pb2, provider_pb2_grpc
from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from services.config_files import ConfigError
from services.monitor import health_report, probe
from services.runtime.auth import MAX_TOKEN_LIFETIME_SECONDS, TokenIssuer
from services.runtime.client import Caller
from services.runtime.config import Topology, load_topology
from services.runtime.tls import mesh_channel
from services.runtime.users import issue_user_token
from services.runtime.wire import duration, timestamp_text

T = TypeVar("T")


def cmd_health(args, topology: Topology) -> int:
    report = asyncio.run(health_report(topology, args.identity, args.timeout, gateway=not args.no_gateway))
    healthy = all(r.status == "SERVING" for r in report)
    if args.json:
        print(json.dumps({"healthy": healthy, "services": [r.as_dict() for r in report]}, indent=2))
    else:
        for r in report:
            detail = f"  ({r.error})" if r.error else ""
            print(f"{r.service:<12} {r.address:<18} {r.status:<12} {r.latency_ms:>7.1f} ms{detail}")
        print("all SERVING" if healthy else "some are not SERVING")
    return 0 if healthy else 1


def cmd_probe(args, topology: Topology) -> int:
    name = topology.service(args.service).name
    result = asyncio.run(probe(topology, name, args.timeout))
    # Alive is answering at all: NOT_SERVING (a database away, a drain) is the readiness' business.
    ok = result.status in ("SERVING", "NOT_SERVING") if args.live else result.status == "SERVING"
    print(f"{name}: {result.status}{f' ({result.error})' if result.error else ''}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_user_token(args, topology: Topology) -> int:
    try:
        print(issue_user_token(topology.certs_dir, args.user, args.roles or ["user"], ttl_seconds=args.ttl))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return 0


def cmd_token(args, topology: Topology) -> int:
    me = Caller.load(topology, args.identity)
    if not 0 < args.ttl <= MAX_TOKEN_LIFETIME_SECONDS:
        raise ConfigError(f"--ttl must be between 1 and {MAX_TOKEN_LIFETIME_SECONDS} seconds (services refuse "
                          f"longer-lived tokens), got {args.ttl:g}")
    audience = topology.service(args.audience).identity
    print(TokenIssuer(me.issuer.identity, me.files.key, ttl_seconds=args.ttl).token_for(audience))
    return 0


class CallFailed(Exception):
    """A command's call was refused or failed: one line, exit code 1."""


def _calls(what: str, calls: Coroutine[Any, Any, T]) -> T:
    """Run a command's calls; a gRPC error becomes CallFailed naming `what`, its code and details."""
    try:
        return asyncio.run(calls)
    except grpc.aio.AioRpcError as exc:
        raise CallFailed(f"{what}: {exc.code().name}: {exc.details()}") from None


def _operator_channel(topology: Topology, identity: str, name: str):
    """(channel, metadata) to a service as `identity`, with its service token."""
    service = topology.service(name)
    me = Caller.load(topology, identity)
    token = me.issuer.token_for(service.identity)
    channel = mesh_channel(str(service.address), me.files, service.name)
    return channel, (("authorization", f"Bearer {token}"),)


_KINDS = {None: events_pb2.DEAD_LETTER_KIND_UNSPECIFIED, "event": events_pb2.DEAD_LETTER_KIND_EVENT_DELIVERY,
          "work-item": events_pb2.DEAD_LETTER_KIND_WORK_ITEM}


def _dead_letter_line(d: events_pb2.DeadLetter) -> str:
    replayed = f"  replayed {timestamp_text(d.replay_time)}" if d.HasField("replay_time") else ""
    if d.kind == events_pb2.DEAD_LETTER_KIND_WORK_ITEM:
        replayed += f" by {d.replayed_by}" if replayed and d.replayed_by else ""
        return (f"work-item #{d.id:<5} {d.queue:<24} {d.item}  {d.attempts} attempt(s)  {d.reason}"
                f"  {timestamp_text(d.create_time)}  by {d.parked_by}{replayed}\n       {d.error[:200]}")
    return (f"event #{d.id:<5} {d.topic:<24} {d.event_id}  to {d.subscriber:<12} {d.attempts} attempt(s)  {d.reason}"
            f"  {timestamp_text(d.create_time)}{replayed}\n       {d.error[:200]}")


async def _dead_letters(args, topology: Topology):
    channel, metadata = _operator_channel(topology, args.identity, args.service)
    async with channel:
        stub = events_pb2_grpc.DeadLetterServiceStub(channel)
        if args.action == "list":
            letters, page = [], ""
            while True:
                reply = await stub.ListDeadLetters(events_pb2.ListDeadLettersRequest(
                    include_replayed=args.all, page_size=500, page_token=page, kind=_KINDS[args.kind]),
                    metadata=metadata, timeout=10)
                letters += reply.dead_letters
                if not (page := reply.next_page_token):
                    return letters
        request = events_pb2.ReplayDeadLettersRequest(ids=args.ids, all=args.all, request_id=uuid.uuid4().hex,
                                                      kind=_KINDS[args.kind])
        return (await stub.ReplayDeadLetters(request, metadata=metadata, timeout=10)).replayed


def cmd_dead_letters(args, topology: Topology) -> int:
    if args.action == "replay" and args.all == bool(args.ids):
        raise ConfigError("replay: give dead letter ids, or --all (not both)")
    result = _calls(args.service, _dead_letters(args, topology))
    if args.action == "replay":
        print(f"replayed {result} dead letter(s) of {args.service}; events are delivered again now, "
              f"work items are back on their queue")
        return 0
    if args.json:
        print(json.dumps([json_format.MessageToDict(d) for d in result], indent=2))
        return 0
    if not result:
        print(f"no dead letters in {args.service}" + ("" if args.all else " waiting for replay"))
        return 0
    for d in result:
        print(_dead_letter_line(d))
    return 0


async def _set_faults(args, topology: Topology):
    seconds = duration((0 if args.clear else args.latency_ms) / 1000)
    flap = duration((int(args.flap_seconds * 1000) if args.flapping and not args.clear else 0) / 1000)
    rates = dict(error_rate_percent=0 if args.clear else args.error_rate,
                 timeout_rate_percent=0 if args.clear else args.timeout_rate,
                 extra_latency=seconds, flapping=args.flapping and not args.clear, flap_period=flap)
    if args.kind == "provider":
        channel, metadata = _operator_channel(topology, args.identity, "provider")
        request = provider_pb2.SetProviderFaultsRequest(provider=f"providers/{args.name}", request_id=uuid.uuid4().hex,
                                                        faults=provider_pb2.ProviderFaults(**rates))
        async with channel:
            reply = await provider_pb2_grpc.ProviderServiceStub(channel).SetProviderFaults(
                request, metadata=metadata, timeout=10)
        return reply.provider.name, reply.provider.faults
    steps = [] if args.clear else [blockchain_pb2.TransferStep.Value(f"TRANSFER_STEP_{s}") for s in args.failing_step]
    channel, metadata = _operator_channel(topology, args.identity, "blockchain")
    request = blockchain_pb2.SetChainFaultsRequest(chain=f"chains/{args.name}", request_id=uuid.uuid4().hex,
                                                   faults=blockchain_pb2.ChainFaults(**rates, failing_steps=steps))
    async with channel:
        reply = await blockchain_pb2_grpc.BlockchainServiceStub(channel).SetChainFaults(
            request, metadata=metadata, timeout=10)
    return reply.chain.name, reply.chain.faults


def cmd_faults(args, topology: Topology) -> int:
    if args.kind == "provider" and args.failing_step:
        raise ConfigError("--failing-step is for chains (diboas faults chain NAME --failing-step TARGET)")
    name, faults = _calls(f"{args.kind} {args.name}", _set_faults(args, topology))
    shown = {k: v for k, v in json_format.MessageToDict(faults).items() if v != "0s"}
    print(f"{name} faults: {json.dumps(shown) if shown else 'none'}")
    return 0


def _transaction_line(tx: transaction_pb2.Transaction) -> str:
    state = transaction_pb2.TransactionState.Name(tx.state).removeprefix("TRANSACTION_STATE_")
    held = tx.compliance.decision == transaction_pb2.COMPLIANCE_DECISION_HELD
    facts = [f"{tx.compliance.reason} ({tx.compliance.screening})" if held else "",
             f"hold {tx.hold}" if tx.hold else "", tx.provider_payment, tx.cross_chain_transfer,
             f"failed: {tx.failure_reason}" if tx.failure_reason else "",
             f"PARKED after {tx.parked.attempts} attempt(s): {tx.parked.last_error or tx.parked.reason}"
             if tx.HasField("parked") else ""]
    return "  ".join([timestamp_text(tx.update_time), f"{tx.name}", state, *filter(None, facts)])


async def _watch(args, topology: Topology) -> transaction_pb2.Transaction | None:
    channel, metadata = _operator_channel(topology, args.identity, "transaction")
    last = None
    async with channel:
        stream = transaction_pb2_grpc.TransactionServiceStub(channel).WatchTransaction(
            transaction_pb2.WatchTransactionRequest(name=args.transaction), metadata=metadata,
            timeout=args.timeout)
        async for reply in stream:
            last = reply.transaction
            print(_transaction_line(last), flush=True)
    return last


def cmd_watch(args, topology: Topology) -> int:
    if not args.transaction.startswith("transactions/"):
        args.transaction = f"transactions/{args.transaction}"
    last = _calls(args.transaction, _watch(args, topology))
    return 3 if last is not None and last.state == transaction_pb2.TRANSACTION_STATE_FAILED else 0


def _screening_line(sc: compliance_pb2.Screening) -> str:
    decision = compliance_pb2.Decision.Name(sc.decision).removeprefix("DECISION_")
    kind = compliance_pb2.TransactionType.Name(sc.type).removeprefix("TRANSACTION_TYPE_")
    line = (f"{timestamp_text(sc.screen_time)}  {sc.name}  {sc.transaction}  {kind} {sc.amount.amount} "
            f"{sc.amount.currency_code}  user {sc.user_id}  {decision}")
    if sc.HasField("review"):
        line += f" on review by {sc.review.reviewer} ({sc.review.reason})"
    return line + (f"\n       {sc.explanation}" if sc.explanation else "")


async def review_screening(topology: Topology, screening: str, approve: bool, reason: str,
                           identity: str = "operator") -> compliance_pb2.Screening:
    """An operator's review of a held screening: approved or rejected, with the reason."""
    channel, metadata = _operator_channel(topology, identity, "compliance")
    decision = compliance_pb2.DECISION_APPROVED if approve else compliance_pb2.DECISION_REJECTED
    async with channel:
        reply = await compliance_pb2_grpc.ComplianceServiceStub(channel).ReviewScreening(
            compliance_pb2.ReviewScreeningRequest(name=screening, decision=decision, reason=reason,
                                                  request_id=uuid.uuid4().hex), metadata=metadata, timeout=10)
    return reply.screening


async def _screenings(args, topology: Topology) -> list[compliance_pb2.Screening]:
    if args.action == "review":
        return [await review_screening(topology, args.screening, args.decision == "approve", args.reason,
                                       args.identity)]
    channel, metadata = _operator_channel(topology, args.identity, "compliance")
    decision = compliance_pb2.DECISION_HELD if args.held else compliance_pb2.DECISION_UNSPECIFIED
    found, page = [], ""
    async with channel:
        stub = compliance_pb2_grpc.ComplianceServiceStub(channel)
        while len(found) < args.limit:
            reply = await stub.ListScreenings(compliance_pb2.ListScreeningsRequest(
                page_size=min(500, args.limit - len(found)), page_token=page, decision=decision, user_id=args.user),
                metadata=metadata, timeout=10)
            found += reply.screenings
            if not (page := reply.next_page_token):
                break
    return found


def cmd_screenings(args, topology: Topology) -> int:
    if args.action == "review":
        if not args.screening.startswith("screenings/"):
            args.screening = f"screenings/{args.screening}"
        if not args.reason.strip():
            raise ConfigError("review: --reason is required (why, for the audit record)")
    found = _calls("compliance", _screenings(args, topology))
    if args.action == "list" and args.json:
        print(json.dumps([json_format.MessageToDict(sc) for sc in found], indent=2))
        return 0
    if not found:            # a list found none (a review answers its screening)
        print("no screenings" + (" held for review" if args.held else ""))
    for sc in found:
        print(_screening_line(sc))
    return 0


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse names the option when it refuses)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def cmd_demo(args, topology: Topology) -> int:
    from services import demo
    return demo.run(topology)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="diboas", description="Operate the diBoaS mesh.")
    top.add_argument("--topology", help="topology file (default: DIBOAS_TOPOLOGY or mesh.yaml)")
    sub = top.add_subparsers(dest="command", required=True)

    health = sub.add_parser("health", help="health of every service",
                            description="Ask every service of the topology for its gRPC health, concurrently.")
    health.add_argument("--as", dest="identity", default="operator", help="client identity (default: operator)")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds per service (default: 2)")
    health.add_argument("--json", action="store_true", help="machine-readable output")
    health.add_argument("--no-gateway", action="store_true", help="only the services, not the Envoy gateway")
    health.set_defaults(run=cmd_health)

    probing = sub.add_parser("probe", help="is this machine's instance of a service SERVING (a Kubernetes probe)",
                             description="Ask the local instance of SERVICE (DIBOAS_INSTANCE, on 127.0.0.1 at "
                                         "the port it listens on) for its gRPC health over mTLS, as the service "
                                         "itself. Exit 0 when SERVING (with --live: when it answers at all), else 1.")
    probing.add_argument("service", help="the service whose local instance to ask")
    probing.add_argument("--live", action="store_true", help="succeed on any answer, NOT_SERVING included")
    probing.add_argument("--timeout", type=float, default=2.0, help="seconds (default: 2)")
    probing.set_defaults(run=cmd_probe)

    token = sub.add_parser("token", help="print a service JWT (for grpcurl -H 'authorization: Bearer ...')",
                           description="Mint a short-lived service JWT signed with an identity's mesh key. "
                                       "It is only accepted over a connection that presents that identity's "
                                       "certificate.")
    token.add_argument("--for", dest="audience", required=True, help="the service to call, e.g. wallet")
    token.add_argument("--as", dest="identity", default="operator", help="whose token (default: operator)")
    token.add_argument("--ttl", type=float, default=300.0, help="lifetime in seconds (default: 300)")
    token.set_defaults(run=cmd_token)

    user = sub.add_parser("user-token", help="print a development user JWT (for the REST gateway)",
                          description="Mint an external user's JWT signed with certs/out/users-jwt.key, the key "
                                      "whose public half (jwks.json) the gateway and the services trust. A user "
                                      "sees and moves only their own wallets; the operator role sees all.")
    user.add_argument("user", help="the user id (the `sub` claim), e.g. alice")
    user.add_argument("--role", dest="roles", action="append", default=None,
                      help="a role; repeat for more (default: user; `operator` sees everything)")
    user.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: 3600, at most 86400)")
    user.set_defaults(run=cmd_user_token)

    dead = sub.add_parser("dead-letters", help="list or replay a service's dead letters (events, parked work items)",
                          description="Events a subscriber failed to handle after every attempt (or rejected as "
                                      "tampered or stale) are dead-lettered by the producer's relay; work items "
                                      "(sagas) whose retry policy is spent are parked by the service's queue, "
                                      "whatever they hold staying held until they are replayed.")
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the dead letters waiting for a replay",
                                 description="List dead letters, oldest first.")
    listing.add_argument("--all", action="store_true", help="include those already replayed")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    replay = actions.add_parser("replay", help="deliver dead letters again",
                                description="Put dead letters back for delivery, or parked work items back on "
                                            "their queue, with a fresh attempt count (after fixing what made "
                                            "them fail).")
    replay.add_argument("ids", nargs="*", type=int, help="dead letter ids (from `list`) of one --kind")
    replay.add_argument("--all", action="store_true", help="every dead letter waiting for a replay")
    for action in (listing, replay):
        action.add_argument("--kind", choices=["event", "work-item"], default=None,
                            help="only event deliveries or only work items (ids without --kind are events')")
        action.add_argument("--service", default="transaction", help="the producing service (default: transaction)")
        action.add_argument("--as", dest="identity", default="operator", help="client identity (default: operator)")
    dead.set_defaults(run=cmd_dead_letters)

    faults = sub.add_parser("faults", help="switch a simulated provider's or chain's faults on or off",
                            description="Set the faults of one simulated payment provider or chain while the mesh "
                                        "runs (they replace its current faults; --clear removes them), to watch "
                                        "failover, breakers and compensation happen.")
    faults.add_argument("kind", choices=["provider", "chain"], help="what to fault")
    faults.add_argument("name", help="e.g. alpha-pay, beta-ramp, gamma-exchange; ethereum, polygon, solana")
    faults.add_argument("--error-rate", type=int, default=0, metavar="PERCENT", help="calls that fail (0-100)")
    faults.add_argument("--timeout-rate", type=int, default=0, metavar="PERCENT", help="calls that hang (0-100)")
    faults.add_argument("--latency-ms", type=int, default=0, help="latency added to every call")
    faults.add_argument("--flapping", action="store_true", help="alternately down and up")
    faults.add_argument("--flap-seconds", type=float, default=5.0, help="half-period of flapping (default: 5)")
    faults.add_argument("--failing-step", action="append", default=[], choices=["SOURCE", "BRIDGE", "TARGET"],
                        help="chains: a cross-chain transfer step that always fails here (repeatable)")
    faults.add_argument("--clear", action="store_true", help="remove every fault")
    faults.add_argument("--as", dest="identity", default="operator", help="client identity (default: operator)")
    faults.set_defaults(run=cmd_faults)

    watch = sub.add_parser("watch", help="a transaction's state now and at every change, until it settles",
                           description="Follow one transaction through WatchTransaction (a server stream, as the "
                                       "operator): a line for its state now and one for every change, until it is "
                                       "COMPLETED (exit 0) or FAILED (exit 3), or --timeout passes (exit 1).")
    watch.add_argument("transaction", help="transactions/ID (or just the ID)")
    watch.add_argument("--timeout", type=float, default=300.0, help="seconds to watch at most (default: 300)")
    watch.add_argument("--as", dest="identity", default="operator", help="client identity (default: operator)")
    watch.set_defaults(run=cmd_watch)

    screenings = sub.add_parser("screenings", help="list compliance screenings, or review a held one",
                                description="Every transaction is screened by the compliance service before its "
                                            "money moves (compliance.yaml). A HELD one waits, PENDING, until an "
                                            "operator approves it (its saga goes on) or rejects it (it FAILS).")
    screening_actions = screenings.add_subparsers(dest="action", required=True)
    listing = screening_actions.add_parser("list", help="screenings, newest first, with the rules that fired")
    listing.add_argument("--held", action="store_true", help="only those waiting for a review")
    listing.add_argument("--user", default="", help="only this user's")
    listing.add_argument("--limit", type=_at_least_one, default=100, help="at most this many (default: 100)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    review = screening_actions.add_parser("review", help="approve or reject a held screening",
                                          description="Approve (the transaction's saga goes on) or reject (it "
                                                      "FAILS, nothing moved) a HELD screening; who, when and "
                                                      "why are stored with it.")
    review.add_argument("screening", help="screenings/ID (or just the ID), from `list --held`")
    review.add_argument("decision", choices=["approve", "reject"])
    review.add_argument("--reason", required=True, help="why (stored for the audit; never shown to the user)")
    for action in (listing, review):
        action.add_argument("--as", dest="identity", default="operator", help="client identity (default: operator)")
    screenings.set_defaults(run=cmd_screenings)

    demo = sub.add_parser("demo", help="walk through wallets, a deposit, a send, a bridge and a withdrawal over REST",
                          description="Act as new users through the Envoy gateway (REST): open wallets, get "
                                      "quotes, deposit, send, bridge and withdraw, then a deposit that compliance "
                                      "holds (approved by the operator's review, over gRPC) and a send that it "
                                      "refuses (sanctions), printing every call and what came back. Needs `make "
                                      "run` to be running.")
    demo.set_defaults(run=cmd_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args, load_topology(args.topology))
    except ConfigError as exc:
        print(f"diboas: {exc}", file=sys.stderr)
        return 2
    except CallFailed as exc:
        print(f"diboas: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

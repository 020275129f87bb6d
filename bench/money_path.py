"""The money path under load: SENDs per second from request to settled balances.

    .venv/bin/python -m bench.money_path [--modes services,monolith] [--backends sqlite,postgres]
                                          [--transports embedded,rabbitmq] [--instances 1,2]
                                          [--concurrency 16,64] [--duration 10] [--warmup 2] [--wallets 1000]
                                          [--many-wallets 100000]
                                          [--open-loop 0.5] [--overload 2] [--overload-backlog-seconds 2]

For each shape, backend and concurrency a fresh mesh (the five services in the shape's processes:
a process each, or all in one for the monolith; default configuration: mTLS, tokens, tracing on)
is started by the same launcher as `make run`, with events over each transport (embedded: the
relay calls the wallet over the mesh, workers poll the work queue; rabbitmq: events and the work
queue through the local broker, in a virtual host of its own made for the run and deleted after).
Two instances of every service are measured in the scaled-out configuration only: a process per
service, over RabbitMQ (the client balances over both transaction instances). This process is
the client: N workers in a closed loop create SENDs between random wallets for warm-up + duration
seconds. Then, for each shape, backend, transport and instance count, a fresh mesh is driven in an
open loop: requests start at a fixed rate (--open-loop times the best settled/s of the closed-loop
runs just measured), whatever the answers, so what is measured is the latency of a mesh that keeps
up, not of a queue; and once more at --overload times that rate, with the transaction queue's
backlog bound set to --overload-backlog-seconds of it: the mesh must refuse what it cannot
take (RESOURCE_EXHAUSTED, counted as refused) and keep the settle latency of what it took
bounded. Last, the first configuration's closed loop at the first concurrency runs three times
more, back to back: with --wallets, with --many-wallets funded wallets (seeded on the wallet's
database by the wallet service's own code, not over RPC), and with --wallets again; the ratio of
the middle run to the mean of the other two says how much throughput depends on the number of
wallets (measured minutes apart, the ratio moved with the machine more than with the wallets).
Every SEND is screened by the compliance service before its saga (with bench/compliance.yaml:
every check of the shipped rules, limits the load stays under). Each run then waits until
everything is settled and reads the two services' databases for the timings:
  settled/s         captures (HOLD_CAPTURE journals in the wallet) inside the measured window
  request->settled  from the client's request to the wallet's capture, for requests in the window
  event latency     from the outbox row (transaction service commit) to the inbox row (wallet handled)
and each process's CPU time per settled transfer (and their sum), each process's resident memory
(RSS) at the end of the run, and the backlog (transactions accepted and not settled yet) once a
second. Beside the mesh's CPU, where the rest of the machine's went in the window: this client's,
and the others' (the database server, the broker, the kernel), per settled transfer; how busy the
CPUs were; and each process's CPU in cores, since one process cannot use much more than one core
(its GIL): together they say whether a run was bound by the machine or by one process. Results: bench/results/money_path.json.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from sqlalchemy import create_engine, func, select

from diboas.common.v1 import common_pb2
from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.config_files import ConfigError
from services.launcher import Launcher
from services.runtime.auth import TokenIssuer
from services.runtime.client import channel_options
from services.runtime.config import load_topology
from services.runtime.db import Database, scratch_schema
from services.runtime.tls import load_identity, mesh_channel
from services.runtime.users import issue_user_token
from services.transaction.tables import messaging as tx_messaging
from services.transaction.tables import transactions
from services.wallet.app import MIGRATIONS as WALLET_MIGRATIONS
from services.wallet.service import WalletService
from services.wallet.servicer import WalletServicer
from services.wallet.tables import journals
from services.wallet.tables import messaging as wallet_messaging
from tools import rabbitmq
from tools.environment import overridden
from tools.ports import mesh_addresses

from .client import non_negative, parse_concurrency, positive, whole
from .load import CLK_TCK, compliance_rules, cpu_seconds, machine_ticks
from .stats import git

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "money_path.json"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET = 1000
FUNDS = "1000000.00"     # each bench wallet's opening credit
SEED_BATCH = 500         # wallets seeded at once


def rss_megabytes(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MB; NaN when it is not there."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


CLIENT, MACHINE = "bench_client", "machine"


def _machine_share(cpu: dict[str, float], processes: list[str], settled: int) -> dict:
    """Where the machine's CPU went in the window, beside the mesh's processes: this client's, and
    the rest's (the database server, the broker, the kernel, anything else running), per settled
    transfer; how busy all CPUs were; and each mesh process's CPU in cores (one process cannot use
    much more than one: its GIL)."""
    wall = max(1e-9, cpu["wall_end"] - cpu["wall_start"])
    busy_jiffies = cpu[f"{MACHINE}_end"] - cpu[f"{MACHINE}_start"]
    busy = busy_jiffies / CLK_TCK
    jiffies = max(1, cpu[f"{MACHINE}_jiffies_end"] - cpu[f"{MACHINE}_jiffies_start"])
    mesh = {name: cpu[f"{name}_end"] - cpu[f"{name}_start"] for name in processes}
    client = cpu[f"{CLIENT}_end"] - cpu[f"{CLIENT}_start"]
    per_transfer = 1000 / max(settled, 1)
    return {
        "client_cpu_ms_per_transfer": round(client * per_transfer, 3),
        "other_cpu_ms_per_transfer": round(max(0.0, busy - client - sum(mesh.values())) * per_transfer, 3),
        "machine_cpu_busy": round(busy_jiffies / jiffies, 3),
        "cores_by_process": {name: round(seconds / wall, 2) for name, seconds in mesh.items()},
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _seed(database: str, numbers: range) -> list[str]:
    """Funded wallets bench-N for each N of `numbers`, made by the wallet service's own servicer
    in this process on the service's database: what CreateWallet and CreditWallet over the mesh
    would write, idempotency answers included, without an RPC each (100,000 take about a minute,
    not ten). The service's process is idle meanwhile."""
    db = Database(database, WALLET_MIGRATIONS)
    servicer = WalletServicer(WalletService(db))

    async def one(i: int) -> str:
        name = (await servicer.CreateWallet(wallet_pb2.CreateWalletRequest(
            wallet=wallet_pb2.Wallet(owner_id=f"bench-{i}", currency_code="USD"), request_id=f"w{i}"), None)).wallet.name
        await servicer.CreditWallet(wallet_pb2.CreditWalletRequest(
            wallet=name, amount=common_pb2.Money(currency_code="USD", amount=FUNDS), request_id=f"f{i}"), None)
        return name

    names: list[str] = []
    begin = time.time()
    try:
        for start in range(numbers.start, numbers.stop, SEED_BATCH):
            names += await asyncio.gather(*(one(i) for i in range(start, min(start + SEED_BATCH, numbers.stop))))
            if len(names) % 10_000 == 0:
                print(f"    seeded {len(names)} of {len(numbers)} wallets ({time.time() - begin:.0f} s)", flush=True)
    finally:
        db.close()
    return names


async def _run_one(mode: str, backend: str, transport: str, instances: int, concurrency: int, args,
                   rate: float | None = None, max_backlog: int | None = None, wallets: int | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="diboas-bench-") as state, contextlib.ExitStack() as stack:
        env = {"DIBOAS_STATE_DIR": state, "DIBOAS_UNREADY_SECONDS": "0", "DIBOAS_LOG_LEVEL": "WARNING",
               "DIBOAS_MODE": mode, "DIBOAS_MESSAGING_TRANSPORT": transport, "DIBOAS_INSTANCES": str(instances),
               **compliance_rules(), **mesh_addresses(gateway=False, instances=instances)}
        if max_backlog:
            env["DIBOAS_QUEUE_MAX_BACKLOG"] = str(max_backlog)
        if transport == "rabbitmq":
            env["DIBOAS_RABBITMQ_URL"] = stack.enter_context(rabbitmq.scratch_vhost("diboas-bench"))
        if backend == "postgres":
            env["DIBOAS_WALLET_DATABASE"] = stack.enter_context(scratch_schema(POSTGRES_URL, "bench"))
            env["DIBOAS_TRANSACTION_DATABASE"] = stack.enter_context(scratch_schema(POSTGRES_URL, "bench"))
            env["DIBOAS_COMPLIANCE_DATABASE"] = stack.enter_context(scratch_schema(POSTGRES_URL, "bench"))
        # The launcher's children read their settings from the environment: this run's only.
        with overridden(env):
            try:
                topology = load_topology()
            except ConfigError as exc:
                raise SystemExit(f"bench: {exc}") from None
            launcher = Launcher(topology)
            launcher.start()
            try:
                if not await launcher.wait_until_serving():
                    raise SystemExit(f"bench: the mesh did not start ({mode}, {backend}, {transport})")
                return {"transport": transport, "instances": instances,
                        "max_backlog": topology.queue_policy("transaction", "financial.transactions").max_backlog,
                        **await _measure(topology, launcher, mode, backend, concurrency, args, rate,
                                         wallets or args.wallets)}
            finally:
                launcher.stop(timeout=15)


async def _measure(topology, launcher, mode, backend, concurrency, args, rate: float | None, wallets: int) -> dict:
    """A closed loop of `concurrency` workers, or (`rate`) an open loop starting `rate` requests a
    second, at most `concurrency` of them in flight (more are counted as not sent by the client).
    Requests the service refuses (RESOURCE_EXHAUSTED: its backlog is at its bound) are counted as
    refused; a closed-loop worker waits the retry delay the refusal gives, the open loop goes on."""
    def channel(identity: str, service: str):
        files = load_identity(topology.certs_dir, identity)
        svc = topology.services[service]
        # The gateway calls for an external user: its bearer is that user's JWT (an operator here,
        # who may move every bench wallet); everyone else signs a service token.
        token = (issue_user_token(topology.certs_dir, "bench", ["operator"]) if identity == "gateway"
                 else TokenIssuer(topology.identities()[identity], files.key).token_for(svc.identity))
        ch = mesh_channel(svc.target, files, service, channel_options(topology, svc))
        return ch, (("authorization", f"Bearer {token}"),)

    wallet_ch, as_operator = channel("operator", "wallet")
    tx_ch, as_gateway = channel("gateway", "transaction")
    wallet_stub = wallet_pb2_grpc.WalletServiceStub(wallet_ch)
    txs = transaction_pb2_grpc.TransactionServiceStub(tx_ch)
    # The first wallet through the running service (it answers as it should), the rest seeded.
    first = (await wallet_stub.CreateWallet(wallet_pb2.CreateWalletRequest(
        wallet=wallet_pb2.Wallet(owner_id="bench-0", currency_code="USD"), request_id="w0"),
        metadata=as_operator, timeout=10)).wallet.name
    await wallet_stub.CreditWallet(wallet_pb2.CreditWalletRequest(
        wallet=first, amount=common_pb2.Money(currency_code="USD", amount=FUNDS), request_id="f0"),
        metadata=as_operator, timeout=10)
    names = [first, *await _seed(topology.services["wallet"].database, range(1, wallets))]

    rng = random.Random(1)
    started: dict[str, float] = {}            # transaction name -> wall-clock request start
    request_latency: list[float] = []
    errors = refused = 0
    t0 = time.time()
    window = (t0 + args.warmup, t0 + args.warmup + args.duration)
    pids = {name: process.pid for name, process in launcher.processes.items()}
    cpu: dict[str, float] = {}

    backlog: list[tuple[float, int]] = []       # (seconds since the window opened, open transactions)
    tx_db = create_engine(topology.services["transaction"].database)
    unsettled = select(func.count()).select_from(transactions).where(transactions.c.state.in_(("PENDING", "PROCESSING")))
    in_flight = 0
    not_sent = 0

    async def send(k: int, n: int) -> float:
        """0, or the seconds a refusal asks to wait before the next request."""
        nonlocal errors, refused, in_flight
        source, destination = rng.sample(names, 2)
        begin = time.time()
        in_flight += 1
        try:
            reply = await txs.CreateTransaction(transaction_pb2.CreateTransactionRequest(
                request_id=f"{k}-{n}", transaction=transaction_pb2.Transaction(
                    type=transaction_pb2.TRANSACTION_TYPE_SEND, source_wallet=source, destination_wallet=destination,
                    amount=common_pb2.Money(currency_code="USD", amount=f"{rng.randint(1, 100) / 100:.2f}"))),
                metadata=as_gateway, timeout=30)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                refused += window[0] <= begin
                return float(dict(exc.trailing_metadata() or ()).get("retry-after", 1))
            errors += 1
            return 0.0
        finally:
            in_flight -= 1
        started[reply.transaction.name] = begin
        if window[0] <= begin:
            request_latency.append(time.time() - begin)
        return 0.0

    async def worker(k: int):
        n = 0
        while time.time() < window[1]:
            n += 1
            if delay := await send(k, n):
                await asyncio.sleep(min(delay, max(0.0, window[1] - time.time())))

    async def arrivals():
        """Open loop: request i starts at t0 + i / rate, whether the earlier ones have answered or not."""
        nonlocal not_sent
        pending: set[asyncio.Task] = set()
        i = 0
        while (due := t0 + i / rate) < window[1]:
            await asyncio.sleep(max(0.0, due - time.time()))
            i += 1
            if in_flight >= concurrency:
                not_sent += 1
                continue
            task = asyncio.create_task(send(0, i))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(set(pending))

    async def sample_backlog():
        while time.time() < window[1]:
            await asyncio.sleep(1.0)
            with tx_db.connect() as c:
                backlog.append((round(time.time() - window[0], 1), c.execute(unsettled).scalar_one()))

    def sample_cpus(when: str) -> None:
        cpu.update({f"{n}_{when}": cpu_seconds(p) for n, p in pids.items()})
        cpu[f"{CLIENT}_{when}"] = time.process_time()
        cpu[f"{MACHINE}_{when}"], cpu[f"{MACHINE}_jiffies_{when}"] = machine_ticks()
        cpu[f"wall_{when}"] = time.monotonic()

    async def sample_cpu():
        await asyncio.sleep(max(0.0, window[0] - time.time()))
        sample_cpus("start")
        await asyncio.sleep(max(0.0, window[1] - time.time()))
        sample_cpus("end")

    shape = mode if topology.services["transaction"].instances == 1 else f"{mode}x{topology.services['transaction'].instances}"
    load = (f"open loop {rate:>5.0f}/s" if rate else f"concurrency {concurrency:>3}") + f", {wallets} wallets"
    run = f"{shape:<11} {backend:<9} {topology.messaging.transport:<9} {load}"
    print(f"  {run}: warm-up {args.warmup:g}s, measuring {args.duration:g}s ...", flush=True)
    clients = [arrivals()] if rate else [worker(k) for k in range(concurrency)]
    await asyncio.gather(sample_cpu(), sample_backlog(), *clients)
    for ch in (wallet_ch, tx_ch):
        await ch.close()

    wallet_db = create_engine(topology.services["wallet"].database)

    def utc(value: dt.datetime) -> float:
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()

    deadline = time.time() + 120
    while True:   # until every created transaction is settled (or failed)
        with tx_db.connect() as c:
            open_ = c.execute(select(transactions.c.id).where(transactions.c.state.in_(("PENDING", "PROCESSING"))).limit(1)).first()
        with wallet_db.connect() as c:
            captured = {r.reference: utc(r.created_at) for r in c.execute(
                select(journals.c.reference, journals.c.created_at).where(journals.c.type == "HOLD_CAPTURE"))}
        with tx_db.connect() as c:
            completed = c.execute(select(transactions.c.id).where(transactions.c.state == "COMPLETED")).all()
        if (not open_ and len(captured) >= len(completed)) or time.time() > deadline:
            break
        await asyncio.sleep(0.5)
    with tx_db.connect() as c:
        sent = {r.event_id: utc(r.created_at) for r in c.execute(select(tx_messaging.outbox.c.event_id,
                                                                         tx_messaging.outbox.c.created_at))}
    with wallet_db.connect() as c:
        handled = {r.event_id: utc(r.handled_at) for r in c.execute(select(wallet_messaging.inbox.c.event_id,
                                                                           wallet_messaging.inbox.c.handled_at))}
    wallet_db.dispose()
    tx_db.dispose()
    rss = {name: rss_megabytes(pid) for name, pid in pids.items()}

    settled_in_window = [t for t in captured.values() if window[0] <= t < window[1]]
    to_settle = [captured[name] - begin for name, begin in started.items()
                 if name in captured and window[0] <= begin < window[1]]
    delivery = [handled[e] - t for e, t in sent.items() if e in handled and window[0] <= t < window[1]]
    settled = len(settled_in_window)
    cpu_ms = {name: round((cpu[f"{name}_end"] - cpu[f"{name}_start"]) / max(settled, 1) * 1000, 3) for name in pids}
    ceiling = _machine_share(cpu, list(pids), settled)
    result = {
        "mode": mode, "backend": backend, "concurrency": concurrency, "open_loop_rate": rate, "wallets": wallets,
        "not_sent": not_sent, "refused": refused,
        "settled_per_second": round(settled / args.duration, 1),
        "created": len(started), "errors": errors,
        "request_p50_ms": round(_pct(request_latency, 0.5) * 1000, 2),
        "request_p99_ms": round(_pct(request_latency, 0.99) * 1000, 2),
        "settled_p50_ms": round(_pct(to_settle, 0.5) * 1000, 2),
        "settled_p99_ms": round(_pct(to_settle, 0.99) * 1000, 2),
        "event_p50_ms": round(_pct(delivery, 0.5) * 1000, 2),
        "event_p99_ms": round(_pct(delivery, 0.99) * 1000, 2),
        "cpu_ms_per_transfer": round(sum(cpu_ms.values()), 3),
        "cpu_ms_per_transfer_by_process": cpu_ms,
        **ceiling,
        "mean_settled_ms": round(statistics.fmean(to_settle) * 1000, 2) if to_settle else None,
        "rss_mb_at_end": rss,
        "backlog": backlog,
    }
    print(f"  {run}: {result['settled_per_second']:>7.1f} settled/s, "
          f"request p50 {result['request_p50_ms']} ms, settled p50 {result['settled_p50_ms']} ms "
          f"p99 {result['settled_p99_ms']} ms, event p50 {result['event_p50_ms']} ms, refused {refused}, "
          f"errors {errors}", flush=True)
    return result


def _shape(run: dict) -> str:
    return run["mode"] if run["instances"] == 1 else f"{run['mode']}x{run['instances']}"


def _load(run: dict) -> str:
    return f"{run['open_loop_rate']:.0f}/s" if run["open_loop_rate"] else f"c{run['concurrency']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.money_path", description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="services,monolith",
                        help="comma-separated shapes of mesh.yaml: services, monolith, hybrid")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--transports", default="embedded,rabbitmq",
                        help="comma-separated: embedded, rabbitmq (the local broker at 127.0.0.1:5672, as root)")
    parser.add_argument("--instances", type=parse_concurrency, default=[1, 2],
                        help="instances of every service; more than one only in the services shape over rabbitmq")
    parser.add_argument("--concurrency", type=parse_concurrency, default=[16, 64])
    parser.add_argument("--duration", type=positive, default=10.0)
    parser.add_argument("--warmup", type=non_negative, default=2.0)
    parser.add_argument("--wallets", type=whole(2), default=1000, help="funded wallets the SENDs move between")
    parser.add_argument("--many-wallets", type=whole(0), default=100_000,
                        help="then the first configuration's closed loop at the first concurrency with this many "
                             "funded wallets, between two more runs with --wallets (0: none): throughput should not "
                             "depend on it")
    parser.add_argument("--open-loop", type=non_negative, default=0.5,
                        help="after the closed-loop runs of each configuration, an open-loop run at this fraction "
                             "of their best settled/s (0: none)")
    parser.add_argument("--overload", type=non_negative, default=2.0,
                        help="then an open-loop run at this multiple of the best settled/s (0: none), its backlog "
                             "bounded to about --overload-backlog-seconds of settling: what is past the bound is "
                             "refused with RESOURCE_EXHAUSTED")
    parser.add_argument("--overload-backlog-seconds", type=positive, default=2.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if set(transports) - {"embedded", "rabbitmq"}:
        parser.error(f"unknown transport(s): {', '.join(sorted(set(transports) - {'embedded', 'rabbitmq'}))}")
    if "rabbitmq" in transports and not rabbitmq.reachable():
        parser.error(f"--transports rabbitmq: RabbitMQ at {rabbitmq.HOST}:{rabbitmq.PORT} is unreachable "
                     "(start it, or leave rabbitmq out)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    known = set(load_topology().modes)
    if set(modes) - known:
        parser.error(f"unknown shape(s): {', '.join(sorted(set(modes) - known))} (known: {', '.join(sorted(known))})")
    print(f"money path: {', '.join(modes)} x {', '.join(backends)} x {', '.join(transports)} x instances "
          f"{args.instances} (more than one: services over rabbitmq only) x concurrency "
          f"{args.concurrency}; "
          f"{args.warmup:g}s warm-up + {args.duration:g}s each; {args.wallets} wallets", flush=True)
    runs = []
    for mode in modes:
        for backend in backends:
            for transport in transports:
                for instances in args.instances:
                    if instances > 1 and (mode, transport) != ("services", "rabbitmq"):
                        continue
                    closed = [asyncio.run(_run_one(mode, backend, transport, instances, concurrency, args))
                              for concurrency in args.concurrency]
                    runs += closed
                    # (at least 1/s: a window too short to settle anything still runs the open loops)
                    best = max(1.0, *(r["settled_per_second"] for r in closed))
                    if args.open_loop:
                        runs.append(asyncio.run(_run_one(mode, backend, transport, instances, max(args.concurrency),
                                                         args, rate=round(args.open_loop * best, 1))))
                    if args.overload:      # in flight: up to the backlog bound's worth of requests
                        bound = max(10, round(best * args.overload_backlog_seconds))
                        runs.append(asyncio.run(_run_one(mode, backend, transport, instances, bound, args,
                                                         rate=round(args.overload * best, 1), max_backlog=bound)))
    wallet_counts = None
    if args.many_wallets:
        # Back to back, the few on both sides of the many: what the machine does meanwhile cancels out.
        pair = [asyncio.run(_run_one(modes[0], backends[0], transports[0], 1, args.concurrency[0], args,
                                     wallets=count)) for count in (args.wallets, args.many_wallets, args.wallets)]
        runs += pair
        few = statistics.fmean(r["settled_per_second"] for r in (pair[0], pair[2]))
        wallet_counts = {"few": args.wallets, "many": args.many_wallets, "few_settled_per_second": round(few, 1),
                         "many_settled_per_second": pair[1]["settled_per_second"],
                         "ratio": round(pair[1]["settled_per_second"] / max(few, 0.1), 3)}
    print(f"\n{'shape':<11} {'backend':<9} {'transport':<9} {'load':>9} {'wallets':>7} {'settled/s':>9} {'req p50':>8} {'req p99':>8} "
          f"{'settle p50':>10} {'settle p99':>10} {'event p50':>9} {'event p99':>9} {'refused':>7} {'CPU/transfer':>12}  by process"
          f"  (RSS MB)")
    for r in runs:
        by_process = ", ".join(f"{name} {ms:.2f} ({r['rss_mb_at_end'][name]:.0f})"
                               for name, ms in r["cpu_ms_per_transfer_by_process"].items())
        print(f"{_shape(r):<11} {r['backend']:<9} {r['transport']:<9} {_load(r):>9} {r['wallets']:>7} {r['settled_per_second']:>9.1f} "
              f"{r['request_p50_ms']:>6.1f}ms {r['request_p99_ms']:>6.1f}ms {r['settled_p50_ms']:>8.1f}ms "
              f"{r['settled_p99_ms']:>8.1f}ms {r['event_p50_ms']:>7.1f}ms {r['event_p99_ms']:>7.1f}ms "
              f"{r['refused']:>7} {r['cpu_ms_per_transfer']:>10.2f}ms  {by_process}")
    print(f"\nwhere the machine's CPU went, per settled transfer (others: the database server, the broker, the "
          f"kernel, anything else running)\n{'shape':<11} {'backend':<9} {'transport':<9} {'load':>9} {'CPUs busy':>9} "
          f"{'mesh':>8} {'client':>8} {'others':>8}  cores by process")
    for r in runs:
        cores = ", ".join(f"{name} {n:.2f}" for name, n in r["cores_by_process"].items() if n >= 0.01)
        print(f"{_shape(r):<11} {r['backend']:<9} {r['transport']:<9} {_load(r):>9} {r['machine_cpu_busy']:>9.0%} "
              f"{r['cpu_ms_per_transfer']:>6.2f}ms {r['client_cpu_ms_per_transfer']:>6.2f}ms "
              f"{r['other_cpu_ms_per_transfer']:>6.2f}ms  {cores}")
    print(f"target: {TARGET} settled transfers per second on {os.cpu_count()} CPUs")
    if wallet_counts:
        print(f"settled/s with {wallet_counts['many']} wallets / the mean with {wallet_counts['few']} just before "
              f"and after ({modes[0]}, {backends[0]}, {transports[0]}, c{args.concurrency[0]}): "
              f"{wallet_counts['many_settled_per_second']:.1f} / {wallet_counts['few_settled_per_second']:.1f} = "
              f"{wallet_counts['ratio']:.2f}")
    conditions = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "cpus": os.cpu_count(),
                  "git_commit": git("rev-parse", "--short", "HEAD"),
                  "services_modified": bool(git("status", "--porcelain", "--", "services")),
                  "python": sys.version.split()[0], "duration_seconds": args.duration, "warmup_seconds": args.warmup,
                  "wallets": args.wallets, "many_wallets": args.many_wallets,
                  "client": "this process (asyncio): closed loops of N workers, then an open loop at "
                            f"{args.open_loop:g} x the best settled/s of each configuration's closed loops, and "
                            f"one at {args.overload:g} x with the backlog bound (DIBOAS_QUEUE_MAX_BACKLOG) at "
                            f"{args.overload_backlog_seconds:g} s of that rate",
                  "services": "the five services in each shape's processes (services: one each; monolith: one "
                              "for all), default configuration (mTLS, tokens, tracing on)",
                  "broker": "transport rabbitmq: the local RabbitMQ (one node, this machine); its CPU is not in "
                            "cpu_ms_per_transfer, which counts the mesh's processes only, but in "
                            "other_cpu_ms_per_transfer with the database server's and the kernel's",
                  "client_cpu": "client_cpu_ms_per_transfer: this process's CPU (the load's client and the launcher "
                                "that started the mesh)"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"benchmark": "money_path", "conditions": conditions, "runs": runs,
                                       "wallet_counts": wallet_counts, "target_settled_per_second": TARGET},
                                      indent=2) + "\n")
    print(f"results written to {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 1 if any(r["errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())

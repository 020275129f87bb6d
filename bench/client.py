"""One benchmark client process: a closed loop of GetWallet calls against one server.

    python -m bench.client STACK PORT [--server-pid PID] [--concurrency 1,16] [--duration 5] [--warmup 1] [--serve]

For each concurrency N, N workers each call GetWallet, wait for the answer and call again,
for `warmup` seconds (not recorded) and then `duration` seconds (recorded). A call counts in
the window when it both started and finished inside it. The client for each stack is what
a caller of that stack (bench/stacks.py) really runs:
  bare             grpc.aio.insecure_channel, the generated stub, nothing else;
  bare-tls         an mTLS channel (services.runtime.tls.mesh_channel) with the "transaction" certificate, nothing else;
  full, full-exported, full-no-tracing
                   services.runtime.client.Upstream as the "transaction" identity: mTLS with
                   its own certificate, service JWT, circuit breaker, deadline, retry policy,
                   and the stack's tracing.
Progress goes to stderr; the results are JSON on stdout. With --serve the process stays up and
measures on command (one JSON line in, one out), so the orchestrator can interleave rounds.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
from typing import Callable

import grpc

from .load import closed_loop
from .servicer import REQUEST
from .stacks import ALL_STACKS, install_tracing


async def _open(stack: str, port: int, folder: str):
    """(stub, close) for the stack's client; a stack that exports spans writes them in `folder`."""
    from diboas.wallet.v1 import wallet_pb2_grpc
    if stack == "bare":
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return wallet_pb2_grpc.WalletServiceStub(channel), channel.close
    if stack == "bare-tls":
        from services.runtime.config import load_topology
        from services.runtime.tls import load_identity, mesh_channel
        channel = mesh_channel(f"127.0.0.1:{port}", load_identity(load_topology().certs_dir, "transaction"), "wallet")
        return wallet_pb2_grpc.WalletServiceStub(channel), channel.close

    from services.runtime.auth import TokenIssuer
    from services.runtime.client import Upstream
    from services.runtime.config import Address, load_topology
    from services.runtime.tls import load_identity

    topology = load_topology()
    tracing_on = install_tracing(stack, "transaction", folder)
    wallet = dataclasses.replace(topology.service("wallet"), address=Address("127.0.0.1", port))
    caller = topology.service("transaction")
    files = load_identity(topology.certs_dir, caller.name)
    issuer = TokenIssuer(caller.identity, files.key)
    upstream = Upstream(topology, caller.name, wallet, files, issuer, tracing=tracing_on)
    return upstream.stub(wallet_pb2_grpc.WalletServiceStub), upstream.channel.close


async def _measure(stub, stack: str, n: int, warmup: float, duration: float, server_pid: int | None) -> dict:
    print(f"  {stack:<16} concurrency {n:>3}: warm-up {warmup:g}s, measuring {duration:g}s ...",
          file=sys.stderr, flush=True)
    async def call(worker: int, n: int) -> None:
        await stub.GetWallet(REQUEST)
    r = await closed_loop(call, n, warmup, duration, {"server": [server_pid]} if server_pid else {})
    r.setdefault("server_cpu_us_per_call", None)
    r["stack"] = stack
    print(f"  {stack:<16} concurrency {n:>3}: {r['qps']:>8.0f} calls/s, p50 {r['p50_ms']:.3f} ms, "
          f"p99 {r['p99_ms']:.3f} ms, errors {r['errors']}", file=sys.stderr, flush=True)
    return r


async def _run(args) -> list[dict]:
    stub, close = await _open(args.stack, args.port, args.folder)
    try:
        return [await _measure(stub, args.stack, n, args.warmup, args.duration, args.server_pid)
                for n in args.concurrency]
    finally:
        await close()


async def _serve(args) -> None:
    """--serve: one JSON command per stdin line ({"concurrency", "warmup", "duration"}), one JSON
    result per stdout line, until stdin closes. The channel stays open between commands."""
    stub, close = await _open(args.stack, args.port, args.folder)
    loop = asyncio.get_running_loop()
    try:
        print(json.dumps({"ready": True}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            r = await _measure(stub, args.stack, int(cmd["concurrency"]), float(cmd["warmup"]),
                               float(cmd["duration"]), args.server_pid)
            print(json.dumps(r), flush=True)
    finally:
        await close()


def parse_concurrency(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("the values must be positive integers")
    return values


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number, at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return value
    return parse


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__.splitlines()[0])
    parser.add_argument("stack", choices=ALL_STACKS)
    parser.add_argument("port", type=int)
    parser.add_argument("--server-pid", type=int, help="server process, to report its CPU time per call")
    parser.add_argument("--concurrency", type=parse_concurrency, default=[1, 16])
    parser.add_argument("--duration", type=positive, default=5.0)
    parser.add_argument("--warmup", type=non_negative, default=1.0)
    parser.add_argument("--serve", action="store_true", help="take measurement commands on stdin (used by "
                        "bench.runtime_overhead)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="diboas-bench-client-") as args.folder:
        if args.serve:
            asyncio.run(_serve(args))
            return
        results = asyncio.run(_run(args))
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

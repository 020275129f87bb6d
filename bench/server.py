"""One benchmark server process: `python -m bench.server STACK [--profile PATH]`.

STACK is one of bench/stacks.py's: the bench servicer on a plain grpc.aio server (bare,
bare-tls), or served by MeshServer as "wallet" (mTLS, service JWT, policy, deadlines, error
mapping, metrics, and the stack's tracing).

The process binds port 0 on 127.0.0.1 (the OS picks a free port) and prints one line
`PORT <port>` on stdout once it serves. It stops on SIGTERM/SIGINT or when its stdin reaches
EOF, so it never outlives the benchmark that started it (the parent holds the pipe).
With --profile PATH the server's event loop thread runs under cProfile from the moment it
serves until it stops, and the stats are written to PATH (pstats format).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import signal
import sys
import tempfile
import threading

import grpc

from .servicer import BenchWalletServicer
from .stacks import ALL_STACKS, install_tracing


class _BareServer:
    def __init__(self, tls: bool = False):
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._tls = tls

    async def start(self) -> None:
        from diboas.wallet.v1 import wallet_pb2_grpc
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        wallet_pb2_grpc.add_WalletServiceServicer_to_server(BenchWalletServicer(), server)
        if self._tls:
            from services.runtime.config import load_topology
            from services.runtime.tls import load_identity, server_credentials
            files = load_identity(load_topology().certs_dir, "wallet")
            self.port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
        else:
            self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        await self._server.stop(1.0)


class _MeshStack:
    def __init__(self, stack: str, state_dir: str):
        # The topology is the real mesh.yaml with the wallet's addresses moved to port 0 and
        # its state (SQLite health probe) in a temporary folder: environment overrides, the
        # same mechanism a deployment uses.
        os.environ["DIBOAS_WALLET_ADDRESS"] = "127.0.0.1:0"
        os.environ["DIBOAS_WALLET_METRICS"] = "127.0.0.1:0"
        os.environ["DIBOAS_STATE_DIR"] = state_dir
        from diboas.events.v1 import events_pb2_grpc
        from diboas.wallet.v1 import wallet_pb2_grpc
        from services.runtime.config import load_topology
        from services.runtime.server import MeshServer, Registration
        from services.runtime.unimplemented import unimplemented_registration

        topology = load_topology()
        tracing_on = install_tracing(stack, "wallet", state_dir)

        def build(_runtime):
            # The event sink as well: the wallet's policy in mesh.yaml names DeliverEvent.
            return [Registration(wallet_pb2_grpc.add_WalletServiceServicer_to_server, BenchWalletServicer()),
                    unimplemented_registration(events_pb2_grpc, "EventSinkService", "wallet", "not benchmarked")]

        self._tracing = tracing_on
        self._server = MeshServer(topology, "wallet", build, tracing_enabled=tracing_on, unready_seconds=0)
        self.port: int | None = None

    async def start(self) -> None:
        await self._server.start()
        self.port = self._server.port

    async def stop(self) -> None:
        await self._server.stop(grace=1.0)
        if self._tracing:
            from opentelemetry import trace
            trace.get_tracer_provider().shutdown()


async def _serve(stack: str, profile_path: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="diboas-bench-") as state_dir:
        if stack in ("bare", "bare-tls"):
            server = _BareServer(tls=stack == "bare-tls")
        else:
            server = _MeshStack(stack, state_dir)
        await server.start()

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def watch_stdin() -> None:  # EOF: the parent is gone or done with us
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            finally:
                loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

        profiler = cProfile.Profile() if profile_path else None
        print(f"PORT {server.port}", flush=True)
        if profiler:
            profiler.enable()
        try:
            await stop.wait()
        finally:
            if profiler:
                profiler.disable()
                profiler.dump_stats(profile_path)
            await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.splitlines()[0])
    parser.add_argument("stack", choices=ALL_STACKS)
    parser.add_argument("--profile", metavar="PATH", help="run under cProfile and write the stats to PATH")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.stack, args.profile))


if __name__ == "__main__":
    main()

"""Health (per service and overall), reflection, metrics and the database probe."""
from __future__ import annotations

import asyncio
import shutil
import urllib.request

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.runtime.config import Address
from services.runtime.server import MeshServer
from services.wallet.app import build as wallet_app

from conftest import bearer, client_channel, free_port, require_postgres, service_token, with_service
from fakes import EchoWallets, wallet_build

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(topology, port, service="") -> int:
    async with client_channel(topology, "operator", port, "wallet") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                               timeout=3)
    return reply.status


async def wait_for(topology, port, status, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await health(topology, port)
        if current == status:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"health stayed {current}, expected {status}")
        await asyncio.sleep(0.05)


async def test_serving_overall_and_per_service(topology, start_server):
    server = await start_server(topology, "wallet", wallet_app)
    assert await health(topology, server.port) == SERVING
    assert await health(topology, server.port, "diboas.wallet.v1.WalletService") == SERVING
    assert await health(topology, server.port, "diboas.events.v1.EventSinkService") == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health(topology, server.port, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_never_serving_before_the_database_answers(topology, tmp_path):
    """A database that accepts connections but never answers: while the first check waits (2 s),
    no health check may see SERVING."""
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    topology = with_service(topology, "wallet", address=Address("127.0.0.1", free_port()),
                            database=f"postgresql+psycopg://postgres@127.0.0.1:{port}/test")
    server = MeshServer(topology, "wallet", wallet_build(EchoWallets()), tracing_enabled=False,
                        serve_metrics_endpoint=False, unready_seconds=0)
    starting = asyncio.ensure_future(server.start())
    seen = set()
    try:
        while not starting.done():
            try:
                seen.add(await health(topology, topology.services["wallet"].address.port))
            except grpc.aio.AioRpcError:
                seen.add("unreachable")
            await asyncio.sleep(0.05)
        await starting
        seen.add(await health(topology, server.port))
    finally:
        await server.stop(grace=0)
        silent.close()
    assert SERVING not in seen and NOT_SERVING in seen


async def test_not_serving_while_the_sqlite_database_is_lost(topology, start_server, tmp_path):
    db_dir = tmp_path / "db"
    topology = with_service(topology, "wallet", database=f"sqlite:///{db_dir}/wallet.db")
    server = await start_server(topology, "wallet", wallet_build(EchoWallets()), health_interval=0.1)
    assert await health(topology, server.port) == SERVING
    shutil.rmtree(db_dir)                     # the volume is gone
    await wait_for(topology, server.port, NOT_SERVING)
    assert await health(topology, server.port, "diboas.wallet.v1.WalletService") == NOT_SERVING
    db_dir.mkdir()                            # and back
    await wait_for(topology, server.port, SERVING)


class TcpProxy:
    """A loopback TCP proxy we can cut, to lose a real database server without stopping it."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self):
        self.server.close()
        await self.server.wait_closed()
        for writer in self._writers:
            writer.close()
        self._writers.clear()


@pytest.mark.postgres
async def test_not_serving_while_postgres_is_unreachable(topology, start_server):
    require_postgres()
    proxy = TcpProxy(("127.0.0.1", 5432))
    await proxy.start()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
    topology = with_service(topology, "wallet", database=url)
    server = await start_server(topology, "wallet", wallet_build(EchoWallets()), health_interval=0.1)
    assert await health(topology, server.port) == SERVING
    await proxy.cut()
    await wait_for(topology, server.port, NOT_SERVING)
    await proxy.start()                       # same port again
    await wait_for(topology, server.port, SERVING)
    await proxy.cut()


async def test_shutdown_reports_not_serving_and_drains_in_flight_calls(topology, start_server):
    from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
    server = await start_server(topology, "wallet", wallet_build(EchoWallets()), unready_seconds=0.5)
    async with client_channel(topology, "transaction", server.port, "wallet") as channel:
        slow = asyncio.ensure_future(wallet_pb2_grpc.WalletServiceStub(channel).GetWallet(
            wallet_pb2.GetWalletRequest(name="wallets/slow-1.0"), timeout=5,
            metadata=bearer(service_token(topology, "transaction", "wallet"))))
        await asyncio.sleep(0.2)              # the slow call is in flight
        stopping = asyncio.ensure_future(server.stop(grace=3))
        await asyncio.sleep(0.1)
        assert await health(topology, server.port) == NOT_SERVING
        reply = await slow                    # drained, not cut off
        assert reply.wallet.name == "wallets/slow-1.0"
        await stopping


async def test_reflection_lists_the_services(topology, start_server):
    server = await start_server(topology, "wallet", wallet_app)
    async with client_channel(topology, "operator", server.port, "wallet") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask(request):
            async for reply in stub.ServerReflectionInfo(iter([request]), timeout=3):
                return reply

        listed = await ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert {"diboas.wallet.v1.WalletService", "diboas.events.v1.EventSinkService",
                "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
        described = await ask(reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="diboas.wallet.v1.WalletService"))
        proto = descriptor_pb2.FileDescriptorProto.FromString(
            described.file_descriptor_response.file_descriptor_proto[0])
        assert proto.package == "diboas.wallet.v1"


async def test_reflection_v1_answers_like_v1alpha_and_describes_itself(topology, start_server):
    """Current grpcurl and buf curl ask grpc.reflection.v1 first; it must answer, not UNIMPLEMENTED."""
    server = await start_server(topology, "wallet", wallet_app)
    async with client_channel(topology, "operator", server.port, "wallet") as channel:
        # The v1 messages are byte-identical to v1alpha's: the v1alpha classes serve as codecs.
        info = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)

        async def ask(request):
            async for reply in info(iter([request]), timeout=3):
                return reply

        listed = await ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert {"diboas.wallet.v1.WalletService", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
        for symbol, package in (("diboas.wallet.v1.WalletService", "diboas.wallet.v1"),
                                ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1")):
            described = await ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
            assert not described.HasField("error_response"), described.error_response.error_message
            proto = descriptor_pb2.FileDescriptorProto.FromString(
                described.file_descriptor_response.file_descriptor_proto[0])
            assert proto.package == package
        v1 = next(s for s in proto.service if s.name == "ServerReflection")
        assert v1.method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"


async def test_a_service_served_only_in_part_says_unimplemented_clearly(topology, start_server):
    from diboas.events.v1 import events_pb2, events_pb2_grpc
    server = await start_server(topology, "wallet", wallet_build(EchoWallets()))   # no event sink here
    async with client_channel(topology, "transaction", server.port, "wallet") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await events_pb2_grpc.EventSinkServiceStub(channel).DeliverEvent(
                events_pb2.DeliverEventRequest(), timeout=3,
                metadata=bearer(service_token(topology, "transaction", "wallet")))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == "wallet.DeliverEvent is not served here (not in these tests)"


async def test_metrics_count_calls_by_method_and_code(topology, start_server):
    from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
    topology = with_service(topology, "wallet", metrics=Address("127.0.0.1", 0))
    server = await start_server(topology, "wallet", wallet_build(EchoWallets()), serve_metrics_endpoint=True)

    async def scrape() -> dict[str, float]:
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=3).read().decode())
        samples = {}
        for line in body.splitlines():
            if line.startswith("diboas_rpc_server_") and 'service="wallet"' in line and 'method="GetWallet"' in line:
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    before = await scrape()
    async with client_channel(topology, "transaction", server.port, "wallet") as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        md = bearer(service_token(topology, "transaction", "wallet"))
        for name in ("wallets/a", "wallets/b", "wallets/missing"):
            try:
                await stub.GetWallet(wallet_pb2.GetWalletRequest(name=name), metadata=md, timeout=3)
            except grpc.aio.AioRpcError:
                pass
    after = await scrape()

    def delta(prefix: str, code: str | None = None) -> float:
        keys = [k for k in after if k.startswith(prefix) and (code is None or f'code="{code}"' in k)]
        return sum(after[k] - before.get(k, 0.0) for k in keys)
    assert delta("diboas_rpc_server_calls_total", "OK") == 2
    assert delta("diboas_rpc_server_calls_total", "NOT_FOUND") == 1
    assert delta("diboas_rpc_server_errors_total", "NOT_FOUND") == 1
    assert delta("diboas_rpc_server_errors_total", "OK") == 0
    assert delta("diboas_rpc_server_latency_seconds_count") == 3


async def test_background_work_that_ends_before_shutdown_is_an_alert(topology, start_server, caplog):
    """A queue worker or relay that stops by itself stops what it did, in silence unless told."""
    async def broken(stop: asyncio.Event) -> None:
        raise RuntimeError("the worker tripped")

    async def cancelled_under_it(stop: asyncio.Event) -> None:
        raise asyncio.CancelledError()      # a cancellation that is not the server's, say a call's

    async def finishes_on_stop(stop: asyncio.Event) -> None:
        await stop.wait()

    def build(runtime):
        runtime.background += [broken, cancelled_under_it, finishes_on_stop]
        return wallet_build(EchoWallets())(runtime)
    server = await start_server(topology, "wallet", build)
    await asyncio.sleep(0.1)
    alerts = sorted((r for r in caplog.records if getattr(r, "alert", None) == "background_stopped"),
                    key=lambda r: r.getMessage())
    assert len(alerts) == 2 and "broken" in alerts[0].getMessage()
    assert alerts[0].exc_info and "the worker tripped" in str(alerts[0].exc_info[1])
    assert "cancelled_under_it" in alerts[1].getMessage() and "(cancelled)" in alerts[1].getMessage()
    await server.stop(grace=0.5)                              # an orderly stop is no alert
    assert len([r for r in caplog.records if getattr(r, "alert", None) == "background_stopped"]) == 2

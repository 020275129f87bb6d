"""Coalescer (services/runtime/coalesce.py): the requests of concurrent callers in batch calls,
each caller answered with its own outcome; and the transaction service's adapters built on it
(the wallet's reads and holds, the compliance screenings), on fake stubs."""
from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from diboas.common.v1 import common_pb2
from diboas.wallet.v1 import wallet_pb2
from services.domain.errors import FailedPrecondition, NotFound, ServiceUnavailable, Unimplemented
from services.domain.money import Money
from services.runtime.coalesce import Coalescer
from services.runtime.context import current_deadline, within
from services.runtime.metrics import BATCH_SIZE
from services.runtime.tracing import RpcTracing
from services.transaction.wallet_client import WalletClient


class Upstream:
    """What the coalescer's send sees: each batch it was given, answered per request by `answer`
    (a request's answer, or the domain error to give it) once `release` is set."""

    def __init__(self, answer=lambda request: request * 10):
        self.batches: list[list] = []
        self.deadlines: list[float | None] = []
        self.answer, self.release, self.failure = answer, asyncio.Event(), None
        self.release.set()

    async def send(self, requests: list) -> list:
        self.batches.append(list(requests))
        self.deadlines.append(current_deadline())
        await self.release.wait()
        if self.failure is not None:
            raise self.failure
        return [self.answer(request) for request in requests]


def sizes_seen(method: str) -> float:
    return BATCH_SIZE.labels("test", method)._sum.get()


async def test_callers_of_one_turn_go_in_one_batch_and_each_gets_its_own_answer():
    upstream = Upstream()
    together = Coalescer(upstream.send, "test", "Together", max_batch=10)
    before = sizes_seen("Together")
    assert await asyncio.gather(*(together(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert upstream.batches == [[0, 1, 2, 3, 4]]
    assert sizes_seen("Together") - before == 5


async def test_callers_that_come_while_batches_are_on_their_way_go_together_in_the_next():
    upstream = Upstream()
    upstream.release.clear()
    batching = Coalescer(upstream.send, "test", "Waiting", max_batch=10, in_flight=2)
    first = asyncio.ensure_future(batching(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    second = asyncio.ensure_future(batching(2))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(batching(i)) for i in range(3, 7)]      # both batches on their way
    await asyncio.sleep(0.01)
    assert upstream.batches == [[1], [2]]
    upstream.release.set()
    assert await asyncio.gather(first, second, *later) == [10, 20, 30, 40, 50, 60]
    assert upstream.batches == [[1], [2], [3, 4, 5, 6]]


async def test_a_batch_holds_at_most_max_batch_requests_and_the_rest_leaves_at_once_when_there_is_room():
    upstream = Upstream()
    small = Coalescer(upstream.send, "test", "Small", max_batch=2, in_flight=1)
    assert await asyncio.gather(*(small(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert upstream.batches == [[0, 1], [2, 3], [4]]
    upstream.batches.clear()
    upstream.release.clear()
    two_at_once = Coalescer(upstream.send, "test", "Small", max_batch=2, in_flight=2)
    burst = [asyncio.ensure_future(two_at_once(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert upstream.batches == [[0, 1], [2, 3]]             # both on their way, not one after the other
    upstream.release.set()
    assert await asyncio.gather(*burst) == [0, 10, 20, 30, 40]


async def test_a_refused_request_fails_only_its_own_caller():
    upstream = Upstream(lambda request: FailedPrecondition("no funds", reason="INSUFFICIENT_FUNDS")
                        if request == 2 else request)
    coalescer = Coalescer(upstream.send, "test", "Refused", max_batch=10)
    outcomes = await asyncio.gather(*(coalescer(i) for i in range(4)), return_exceptions=True)
    assert outcomes[:2] == [0, 1] and outcomes[3] == 3
    assert isinstance(outcomes[2], FailedPrecondition) and outcomes[2].reason == "INSUFFICIENT_FUNDS"


async def test_a_failed_call_fails_every_caller_of_its_batch_and_the_next_batch_is_sent_all_the_same():
    upstream = Upstream()
    upstream.failure = ServiceUnavailable("wallet: down", reason="UNAVAILABLE")
    coalescer = Coalescer(upstream.send, "test", "Failed", max_batch=10)
    outcomes = await asyncio.gather(*(coalescer(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(outcome, ServiceUnavailable) for outcome in outcomes)
    upstream.failure = None
    assert await coalescer(7) == 70


async def test_a_send_that_answers_the_wrong_number_of_outcomes_fails_its_callers():
    upstream = Upstream()
    coalescer = Coalescer(lambda requests: upstream.send(requests[:-1]), "test", "Short", max_batch=10)
    outcomes = await asyncio.gather(coalescer(1), coalescer(2), return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) and "2 requests got 1 outcomes" in str(outcome)
               for outcome in outcomes)


async def test_a_caller_that_gave_up_before_its_batch_left_is_left_out_and_the_others_are_answered():
    upstream = Upstream()
    upstream.release.clear()
    coalescer = Coalescer(upstream.send, "test", "GaveUp", max_batch=10, in_flight=1)
    first = asyncio.ensure_future(coalescer(1))
    await asyncio.sleep(0.01)
    quitter, stayer = asyncio.ensure_future(coalescer(2)), asyncio.ensure_future(coalescer(3))
    await asyncio.sleep(0)
    quitter.cancel()
    upstream.release.set()
    assert await asyncio.gather(first, stayer) == [10, 30]
    assert upstream.batches == [[1], [3]]
    # and one that gives up while its batch is on its way does not keep the others from their answers
    upstream.release.clear()
    gives_up, waits = asyncio.ensure_future(coalescer(4)), asyncio.ensure_future(coalescer(5))
    await asyncio.sleep(0.01)
    gives_up.cancel()
    upstream.release.set()
    assert await waits == 50


async def test_a_batch_is_sent_outside_its_callers_deadlines():
    upstream = Upstream()
    coalescer = Coalescer(upstream.send, "test", "Deadline", max_batch=10)
    with within(0.5):
        assert await coalescer(1) == 10
    assert upstream.deadlines == [None]


async def test_the_batch_call_span_is_a_child_of_the_first_caller_and_links_every_caller():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    tracing = RpcTracing(tracer=tracer)

    async def send(requests):
        for name in ("/test.Service/BatchDo", "/test.Service/Then"):       # a call after the batch's
            span, headers = tracing.start_client(name, {})
            tracing.end(span, 0)
        return requests

    coalescer = Coalescer(send, "test", "Traced", max_batch=10)

    async def caller(i: int) -> trace.SpanContext:
        with tracer.start_as_current_span(f"caller {i}") as span:
            await coalescer(i)
            return span.get_span_context()
    callers = await asyncio.gather(*(caller(i) for i in range(3)))
    [batch] = [s for s in exporter.get_finished_spans() if s.name == "/test.Service/BatchDo"]
    assert batch.parent.span_id == callers[0].span_id
    assert [link.context.span_id for link in batch.links] == [c.span_id for c in callers]
    [then] = [s for s in exporter.get_finished_spans() if s.name == "/test.Service/Then"]
    assert then.parent.span_id == callers[0].span_id and not then.links


def test_a_coalescer_needs_room_for_one_request():
    with pytest.raises(ValueError):
        Coalescer(Upstream().send, "test", "None", max_batch=0)


# --- the wallet's adapter ---------------------------------------------------------------------

def a_wallet(name: str) -> wallet_pb2.Wallet:
    return wallet_pb2.Wallet(name=name, owner_id="o-" + name, currency_code="USD",
                             available_balance=common_pb2.Money(currency_code="USD", amount="5.00"),
                             held_balance=common_pb2.Money(currency_code="USD", amount="1.00"))


class FakeWalletStub:
    """BatchGetWallets as the wallet answers it: NOT_FOUND for the whole call when one name is
    missing; BatchCreateHolds: one outcome per request, refused for wallets/poor."""

    def __init__(self):
        self.asked: list[list[str]] = []
        self.holds: list[list[str]] = []
        self.singles: list[str] = []
        self.batch_served = True        # False: a wallet of a release without BatchCreateHolds

    async def BatchGetWallets(self, request):
        self.asked.append(list(request.names))
        for name in request.names:
            if name.endswith("missing"):
                raise NotFound(f"wallet: wallet {name} does not exist", reason="WALLET_NOT_FOUND")
        return wallet_pb2.BatchGetWalletsResponse(wallets=[a_wallet(name) for name in request.names])

    async def CreateHold(self, request):
        self.singles.append(request.request_id)
        if request.parent == "wallets/poor":
            raise FailedPrecondition("wallet: insufficient funds", reason="INSUFFICIENT_FUNDS")
        return wallet_pb2.CreateHoldResponse(hold=wallet_pb2.Hold(name=f"{request.parent}/holds/{request.request_id}"))

    async def BatchCreateHolds(self, request):
        if not self.batch_served:
            raise Unimplemented("wallet: Method not found!", reason="UNIMPLEMENTED")
        self.holds.append([one.request_id for one in request.requests])
        refused = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="insufficient funds")
        return wallet_pb2.BatchCreateHoldsResponse(outcomes=[
            wallet_pb2.CreateHoldOutcome(status=refused) if one.parent == "wallets/poor" else
            wallet_pb2.CreateHoldOutcome(response=wallet_pb2.CreateHoldResponse(
                hold=wallet_pb2.Hold(name=f"{one.parent}/holds/{one.request_id}")))
            for one in request.requests])


class FakeUpstream:
    name = "wallet"

    def __init__(self):
        self.wallet = FakeWalletStub()

    def stub(self, stub_class):
        return self.wallet


async def test_wallet_reads_of_concurrent_callers_go_in_one_call_and_a_missing_wallet_fails_only_who_named_it():
    upstream = FakeUpstream()
    client = WalletClient(upstream)
    found = await asyncio.gather(client.describe_all(["wallets/a", "wallets/b"]),
                                 client.describe_all(["wallets/c", "wallets/d"]))
    assert [[facts.owner for facts in pair] for pair in found] == [["o-wallets/a", "o-wallets/b"],
                                                                   ["o-wallets/c", "o-wallets/d"]]
    assert found[0][0].available == Money("USD", Decimal("5.00")) and found[0][0].balance == Money("USD", Decimal("6.00"))
    assert upstream.wallet.asked == [["wallets/a", "wallets/b", "wallets/c", "wallets/d"]]
    upstream.wallet.asked.clear()
    outcomes = await asyncio.gather(client.describe_all(["wallets/a", "wallets/missing"]),
                                    client.describe_all(["wallets/c", "wallets/d"]), return_exceptions=True)
    assert isinstance(outcomes[0], NotFound) and [facts.owner for facts in outcomes[1]] == ["o-wallets/c",
                                                                                             "o-wallets/d"]
    assert upstream.wallet.asked == [["wallets/a", "wallets/missing", "wallets/c", "wallets/d"],
                                     ["wallets/a", "wallets/missing"], ["wallets/c", "wallets/d"]]


async def test_a_missing_wallet_among_many_readers_costs_a_few_calls_more_not_one_per_reader():
    upstream = FakeUpstream()
    client = WalletClient(upstream)
    asks = [[f"wallets/s{i}", f"wallets/d{i}"] for i in range(16)]
    asks[5][1] = "wallets/missing"
    outcomes = await asyncio.gather(*(client.describe_all(ask) for ask in asks), return_exceptions=True)
    assert [i for i, outcome in enumerate(outcomes) if isinstance(outcome, NotFound)] == [5]
    assert all(outcome[1].owner == f"o-wallets/d{i}" for i, outcome in enumerate(outcomes) if i != 5)
    assert len(upstream.wallet.asked) == 9          # 1 + 2 per halving (16, 8, 4, 2, 1)


async def test_wallet_holds_of_concurrent_sagas_go_in_one_call_each_answered_on_its_own():
    upstream = FakeUpstream()
    client = WalletClient(upstream)
    amount = Money("USD", Decimal("1"))
    outcomes = await asyncio.gather(client.hold("wallets/a", amount, "transactions/1", "t1:hold"),
                                    client.hold("wallets/poor", amount, "transactions/2", "t2:hold"),
                                    return_exceptions=True)
    assert outcomes[0] == "wallets/a/holds/t1:hold"
    assert isinstance(outcomes[1], FailedPrecondition) and "insufficient funds" in outcomes[1].message
    assert upstream.wallet.holds == [["t1:hold", "t2:hold"]]


async def test_a_wallet_without_the_batch_rpc_is_asked_hold_by_hold():
    upstream = FakeUpstream()
    upstream.wallet.batch_served = False
    client = WalletClient(upstream)
    amount = Money("USD", Decimal("1"))
    outcomes = await asyncio.gather(client.hold("wallets/a", amount, "transactions/1", "t1:hold"),
                                    client.hold("wallets/poor", amount, "transactions/2", "t2:hold"),
                                    return_exceptions=True)
    assert outcomes[0] == "wallets/a/holds/t1:hold"
    assert isinstance(outcomes[1], FailedPrecondition) and outcomes[1].reason == "INSUFFICIENT_FUNDS"
    assert upstream.wallet.singles == ["t1:hold", "t2:hold"] and upstream.wallet.holds == []


async def test_an_answer_of_the_wrong_shape_is_the_upstream_failing_for_every_caller():
    upstream = FakeUpstream()
    client = WalletClient(upstream)

    async def short(request):
        return wallet_pb2.BatchGetWalletsResponse(wallets=[a_wallet("wallets/a")])
    upstream.wallet.BatchGetWallets = short
    outcomes = await asyncio.gather(client.describe_all(["wallets/a", "wallets/b"]), client.describe_all(["wallets/c"]),
                                    return_exceptions=True)
    assert all(isinstance(o, ServiceUnavailable) and o.reason == "UPSTREAM_MALFORMED_ANSWER" for o in outcomes)
    assert outcomes[0] is not outcomes[1]                   # each caller its own error

    async def without_response(request):
        return wallet_pb2.BatchCreateHoldsResponse(outcomes=[wallet_pb2.CreateHoldOutcome()])
    upstream.wallet.BatchCreateHolds = without_response
    with pytest.raises(ServiceUnavailable, match="OK without a response"):
        await client.hold("wallets/a", Money("USD", Decimal("1")), "transactions/1", "t1:hold")

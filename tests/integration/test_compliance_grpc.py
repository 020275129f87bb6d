"""The compliance service as a real mTLS server on SQLite and PostgreSQL: each decision with its
explanation, a transaction screened once, request_id reuse, review (approve, reject, audited,
only a held one), bad input named by field, reads of another user's screening; the user's past
read in the screening's transaction, so concurrent screenings cannot both pass a limit; and a
bad rules file stopping the service with one line."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import grpc
import pytest
from prometheus_client import REGISTRY

from diboas.common.v1 import common_pb2
from diboas.compliance.v1 import compliance_pb2 as C
from diboas.compliance.v1 import compliance_pb2_grpc
from services.compliance.app import MIGRATIONS
from services.compliance.app import build as compliance_app
from services.compliance.domain import APPROVED, HELD, REJECTED, Subject
from services.compliance.rules import parse_rules
from services.compliance.service import ComplianceService
from services.compliance.servicer import screening_pb
from services.domain.clock import utcnow
from services.domain.errors import NotFound
from services.domain.money import Money
from services.runtime.db import Database
from services.runtime.users import User

from conftest import bearer, client_channel, operator_calls, service_token, user_token, with_service

DAILY_100 = {"rules": {"daily": {"check": "daily_limit", "action": "hold", "limits": {"USD": "100.00"}}}}


@pytest.fixture
async def compliance(topology, start_server, database_url):
    topology = with_service(topology, "compliance", database=database_url)
    server = await start_server(topology, "compliance", compliance_app)
    call, channel = operator_calls(topology, server.port, "compliance", compliance_pb2_grpc.ComplianceServiceStub)
    call.topology, call.port = topology, server.port
    yield call
    await channel.close()


def usd(amount: str) -> common_pb2.Money:
    return common_pb2.Money(currency_code="USD", amount=amount)


def screen_request(transaction: str, amount: str, user: str = "alice", request_id: str | None = None,
                   type=C.TRANSACTION_TYPE_DEPOSIT, **parties) -> C.ScreenTransactionRequest:
    return C.ScreenTransactionRequest(request_id=request_id or f"screen-{transaction}", screening=C.Screening(
        transaction=f"transactions/{transaction}", type=type, user_id=user, amount=usd(amount), **parties))


async def screened(call, *args, **kwargs) -> C.Screening:
    return (await call("ScreenTransaction", screen_request(*args, **kwargs))).screening


async def refused(call, method: str, request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(method, request)
    return caught.value


async def test_each_decision_with_the_rule_and_its_explanation(compliance):
    approved = await screened(compliance, "t1", "100.00")
    assert (approved.decision, approved.rule, approved.reason) == (C.DECISION_APPROVED, "", "")
    assert approved.explanation == "no rule fired on 100.00 USD (DEPOSIT)"
    held = await screened(compliance, "t2", "10000.01")
    assert (held.decision, held.rule, held.reason) == (C.DECISION_HELD, "large-transaction",
                                                       "held for a compliance review")
    assert "10000.01 USD is more than the limit of 10000.00 USD" in held.explanation
    rejected = await screened(compliance, "t3", "5.00", user="sanctioned-demo-user")
    assert (rejected.decision, rejected.rule) == (C.DECISION_REJECTED, "sanctioned-owners")
    assert rejected.reason == "refused by compliance screening (sanctions)"
    bridge = await screened(compliance, "t4", "1.00", type=C.TRANSACTION_TYPE_BRIDGE,
                            destination_address="0x000000000000000000000000000000000000BAD0")
    assert (bridge.decision, bridge.rule) == (C.DECISION_REJECTED, "sanctioned-addresses")
    got = (await compliance("GetScreening", C.GetScreeningRequest(name=held.name))).screening
    assert got == held
    listed = await compliance("ListScreenings", C.ListScreeningsRequest(decision=C.DECISION_REJECTED))
    assert [s.name for s in listed.screenings] == [bridge.name, rejected.name]       # newest first
    first = await compliance("ListScreenings", C.ListScreeningsRequest(page_size=3))
    second = await compliance("ListScreenings", C.ListScreeningsRequest(page_size=3,
                                                                         page_token=first.next_page_token))
    assert [s.name for s in [*first.screenings, *second.screenings]] == [bridge.name, rejected.name, held.name,
                                                                          approved.name]
    assert second.next_page_token == ""


def screenings_counted(decision: str, rule: str) -> float:
    return REGISTRY.get_sample_value("diboas_screenings_total", {"decision": decision, "rule": rule}) or 0.0


async def test_a_transaction_is_screened_once(compliance):
    before = screenings_counted(HELD, "large-transaction")
    first = await screened(compliance, "t1", "10000.01", request_id="a")
    assert await screened(compliance, "t1", "10000.01", request_id="a") == first         # the same request
    assert await screened(compliance, "t1", "10000.01", request_id="b") == first         # another key, same transaction
    error = await refused(compliance, "ScreenTransaction", screen_request("t1", "1.00", request_id="c"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "already screened" in error.details()
    error = await refused(compliance, "ScreenTransaction", screen_request("t9", "1.00", request_id="a"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "already used for a different request" in error.details()
    listed = await compliance("ListScreenings", C.ListScreeningsRequest())
    assert [s.name for s in listed.screenings] == [first.name]
    assert screenings_counted(HELD, "large-transaction") == before + 1          # the metric counts it once


async def test_review_approves_or_rejects_a_held_screening_once_audited(compliance):
    held = await screened(compliance, "t1", "10000.01")
    review = C.ReviewScreeningRequest(name=held.name, decision=C.DECISION_APPROVED, reason="source of funds checked",
                                      request_id="v1")
    reviews_before = REGISTRY.get_sample_value("diboas_screening_reviews_total", {"decision": APPROVED}) or 0.0
    approved = (await compliance("ReviewScreening", review)).screening
    assert approved.decision == C.DECISION_APPROVED and approved.rule == "large-transaction"
    assert (held.reason, approved.reason) == ("held for a compliance review", "")     # what the user is told
    assert (approved.review.decision, approved.review.reason, approved.review.reviewer) == (
        C.DECISION_APPROVED, "source of funds checked", "operator")
    assert approved.review.HasField("review_time")
    assert (await compliance("ReviewScreening", review)).screening == approved       # idempotent
    assert REGISTRY.get_sample_value("diboas_screening_reviews_total", {"decision": APPROVED}) == reviews_before + 1
    again = C.ReviewScreeningRequest(name=held.name, decision=C.DECISION_REJECTED, reason="no", request_id="v2")
    error = await refused(compliance, "ReviewScreening", again)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "is APPROVED, not HELD" in error.details()
    other = await screened(compliance, "t2", "10000.01")
    rejected = (await compliance("ReviewScreening", C.ReviewScreeningRequest(
        name=other.name, decision=C.DECISION_REJECTED, reason="documents do not match", request_id="v3"))).screening
    assert rejected.decision == C.DECISION_REJECTED and rejected.review.reviewer == "operator"
    assert rejected.reason == "refused by a compliance review"         # not the reviewer's words
    assert (await compliance("GetScreening", C.GetScreeningRequest(name=other.name))).screening == rejected
    approved_one = await screened(compliance, "t3", "1.00")
    error = await refused(compliance, "ReviewScreening", C.ReviewScreeningRequest(
        name=approved_one.name, decision=C.DECISION_REJECTED, reason="x", request_id="v4"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "is APPROVED, not HELD" in error.details()
    error = await refused(compliance, "ReviewScreening", C.ReviewScreeningRequest(
        name="screenings/nothing", decision=C.DECISION_REJECTED, reason="x", request_id="v5"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("method, request_, field", [
    ("ScreenTransaction", screen_request("t1", "1.001"), "screening.amount.amount"),
    ("ScreenTransaction", screen_request("t1", "-1.00"), "screening.amount.amount"),
    ("ScreenTransaction", screen_request("../x", "1.00"), "screening.transaction"),
    ("ScreenTransaction", screen_request("t1", "1.00", user=""), "screening.user_id"),
    ("ScreenTransaction", screen_request("t1", "1.00", type=C.TRANSACTION_TYPE_BRIDGE), "screening.destination_address"),
    ("ScreenTransaction", screen_request("t1", "1.00", request_id="x" * 129), "request_id"),
    ("GetScreening", C.GetScreeningRequest(name="screenings/"), "name"),
    ("ListScreenings", C.ListScreeningsRequest(page_size=-1), "page_size"),
    ("ListScreenings", C.ListScreeningsRequest(page_token="bm90IG1pbmU"), "page_token"),
    ("ReviewScreening", C.ReviewScreeningRequest(name="screenings/s", decision=C.DECISION_APPROVED,
                                                 request_id="r"), "reason"),
])
async def test_bad_input_is_invalid_argument_naming_the_field(compliance, method, request_, field):
    error = await refused(compliance, method, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field), error.details()


async def test_only_the_operator_reads_and_the_transaction_service_screens(compliance):
    await screened(compliance, "t1", "100.00")
    topology, port = compliance.topology, compliance.port
    async with client_channel(topology, "transaction", port, "compliance") as channel:
        stub = compliance_pb2_grpc.ComplianceServiceStub(channel)
        metadata = bearer(service_token(topology, "transaction", "compliance"))
        reply = await stub.ScreenTransaction(screen_request("t2", "5.00"), metadata=metadata, timeout=10)
        assert reply.screening.decision == C.DECISION_APPROVED
        read = await stub.GetScreening(C.GetScreeningRequest(name=reply.screening.name), metadata=metadata, timeout=10)
        assert read.screening == reply.screening            # a held transaction's saga asks for its review
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListScreenings(C.ListScreeningsRequest(), metadata=metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with client_channel(topology, "gateway", port, "compliance") as channel:
        stub = compliance_pb2_grpc.ComplianceServiceStub(channel)
        metadata = (*bearer(service_token(topology, "gateway", "compliance")),
                    ("x-diboas-user", user_token(topology, "alice", ())))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListScreenings(C.ListScreeningsRequest(), metadata=metadata, timeout=10)
        assert caught.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


# --- the use cases on each database, with rules and a clock of the test's ---------------------

@pytest.fixture
def service(database_url):
    db = Database(database_url, MIGRATIONS)
    db.migrate()
    yield lambda rules, **kw: ComplianceService(db, parse_rules(rules, "test.yaml"), **kw)
    db.close()


def subject(transaction: str, amount: str, user: str = "alice") -> Subject:
    return Subject(f"transactions/{transaction}", "DEPOSIT", user, Money.parse("USD", amount), utcnow())


async def screen(service: ComplianceService, transaction: str, amount: str, user: str = "alice") -> str:
    data = await service.screen(f"r-{transaction}", transaction, subject(transaction, amount, user),
                                lambda sc: screening_pb(sc).SerializeToString())
    screening = C.Screening.FromString(data)
    return C.Decision.Name(screening.decision).removeprefix("DECISION_"), screening.name


async def test_concurrent_screenings_of_one_user_cannot_both_pass_a_daily_limit(service):
    compliance = service(DAILY_100)
    outcomes = await asyncio.gather(*(screen(compliance, f"t{i}", "60.00") for i in range(6)))
    assert sorted(outcome for outcome, _ in outcomes) == [APPROVED] + [HELD] * 5
    assert (await screen(compliance, "b1", "100.00", user="bob"))[0] == APPROVED     # another user's day


async def test_held_screenings_count_toward_the_day_and_every_attempt_toward_velocity(service):
    compliance = service(DAILY_100)
    assert (await screen(compliance, "t1", "80.00"))[0] == APPROVED
    outcome, held = await screen(compliance, "t2", "30.00")
    assert outcome == HELD                                    # 110 > 100; held money still counts...
    assert (await screen(compliance, "t3", "20.00"))[0] == HELD
    await compliance.review("v1", "f", held.removeprefix("screenings/"), REJECTED, "not this one", "operator",
                            lambda sc: b"")
    assert (await screen(compliance, "t4", "20.00"))[0] == HELD     # 80 + 20 (t3, held) + 20 > 100
    velocity = service({"rules": {"burst": {"check": "velocity", "action": "reject", "max_transactions": 4}}})
    assert (await screen(velocity, "t5", "1.00"))[0] == REJECTED    # t1..t4 are four attempts; this is the fifth


async def test_a_reviewed_rejection_no_longer_counts(service):
    compliance = service(DAILY_100)
    assert (await screen(compliance, "t1", "80.00"))[0] == APPROVED
    outcome, held = await screen(compliance, "t2", "30.00")
    assert outcome == HELD
    await compliance.review("v1", "f", held.removeprefix("screenings/"), REJECTED, "not this one", "operator",
                            lambda sc: b"")
    assert (await screen(compliance, "t3", "20.00"))[0] == APPROVED   # 80 + 20 = 100: the rejected 30 is out


def test_a_bad_rules_file_stops_the_service_with_one_line(tmp_path, pki):
    bad = tmp_path / "rules.yaml"
    bad.write_text('rules:\n  large:\n    check: transaction_limit\n    action: hold\n    limits: {USD: "10.001"}\n')
    env = {**os.environ, "DIBOAS_COMPLIANCE_FILE": str(bad), "DIBOAS_CERTS_DIR": str(pki),
           "DIBOAS_STATE_DIR": str(tmp_path), "DIBOAS_COMPLIANCE_ADDRESS": "127.0.0.1:0",
           "DIBOAS_COMPLIANCE_METRICS": "127.0.0.1:0"}
    done = subprocess.run([sys.executable, "-m", "services.compliance"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "rules.yaml: rules.large.limits.USD: 10.001 has more decimal places than USD allows (2)" in lines[-1]
    assert "Traceback" not in done.stderr


async def test_a_user_reads_only_their_own_screenings_and_never_the_explanation(service):
    compliance = service(DAILY_100)
    _, name = await screen(compliance, "t1", "130.00")
    screening_id = name.removeprefix("screenings/")
    with pytest.raises(NotFound):
        await compliance.get(screening_id, User("bob", frozenset()))
    mine = await compliance.get(screening_id, User("alice", frozenset()))
    assert (mine.outcome, mine.decision.reason) == (HELD, "held for a compliance review")
    assert (mine.decision.rule, mine.decision.explanation, mine.decision.findings) == ("", "", ())
    assert (await compliance.list(None, "alice", 0, "", User("bob", frozenset()))).items == []
    operator = await compliance.get(screening_id, User("olga", frozenset({"operator"})))
    assert operator.decision.rule == "daily" and "more than the limit of 100.00 USD" in operator.decision.explanation

"""ComplianceServicer on a fake ComplianceService: the subject read from the request, each bad
field named, screenings written back (the explanation only to operators and services), reviews
with the reviewer's identity; and a stored screening's review rules (screening.py)."""
from __future__ import annotations

import dataclasses
import datetime as dt

import grpc
import pytest
from compliance_fakes import NOW, money

from diboas.common.v1 import common_pb2
from diboas.compliance.v1 import compliance_pb2 as C
from services.compliance.domain import APPROVED, HELD, HELD_FOR_REVIEW, REJECTED, Decision, Finding, Subject
from services.compliance.screening import Screening
from services.compliance.service import Page, shown_to
from services.compliance.servicer import ComplianceServicer
from services.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.users import User

from servicing import Recorder, Served, refusal_in

ALICE = User("alice", frozenset())
OPERATOR = User("olga", frozenset({"operator"}))
FINDING = Finding("large-transaction", "transaction_limit", "hold", "10000.01 USD is more than the limit")
HELD_DECISION = Decision(HELD, "large-transaction", "held by large-transaction (transaction_limit): ...",
                         HELD_FOR_REVIEW, (FINDING,))
SERVICE = C.DESCRIPTOR.services_by_name["ComplianceService"]


def a_screening(decision: Decision = HELD_DECISION, user: str = "alice") -> Screening:
    return Screening("s1", Subject("transactions/t1", "DEPOSIT", user, money("10000.01"), NOW), decision)


def a_request(**changes) -> C.ScreenTransactionRequest:
    screening = C.Screening(transaction="transactions/t1", type=C.TRANSACTION_TYPE_DEPOSIT, user_id="alice",
                            amount=common_pb2.Money(currency_code="USD", amount="10000.01"))
    for key, value in changes.items():
        if key == "amount":
            screening.amount.CopyFrom(value)
        else:
            setattr(screening, key, value)
    return C.ScreenTransactionRequest(screening=screening, request_id="r1")


class FakeComplianceService(Recorder):
    def __init__(self):
        super().__init__()
        self.screening = a_screening()

    async def screen(self, request_id, fingerprint, draft, encode):
        self.record("screen", request_id=request_id, draft=draft)
        return encode(dataclasses.replace(self.screening, subject=draft))

    async def review(self, request_id, fingerprint, screening_id, decision, reason, reviewer, encode):
        self.record("review", screening_id=screening_id, decision=decision, reason=reason, reviewer=reviewer)
        return encode(self.screening.reviewed(decision, reason, reviewer, NOW))

    async def get(self, screening_id, viewer=None):
        self.record("get", screening_id=screening_id, viewer=viewer)
        if screening_id != "s1":
            raise NotFound("screening screenings/x does not exist", reason="SCREENING_NOT_FOUND")
        return shown_to(self.screening, viewer)

    async def list(self, decision, user, size, token, viewer=None):
        self.record("list", decision=decision, user=user, size=size, token=token)
        return Page([shown_to(self.screening, viewer)], "next")


@pytest.fixture
def fake():
    return FakeComplianceService()


def served(fake, caller="transaction", user=None):
    return Served(SERVICE, ComplianceServicer(fake), caller=caller, user=user)


def test_screen_reads_the_subject_and_answers_the_decision_with_its_explanation(fake):
    response = served(fake).call("ScreenTransaction", a_request(source_owner="bob"))
    draft = fake.last("screen")["draft"]
    assert (draft.transaction, draft.type, draft.user, str(draft.amount), draft.source_owner) == \
        ("transactions/t1", "DEPOSIT", "alice", "10000.01 USD", "bob")
    assert fake.last("screen")["request_id"] == "r1"
    screening = response.screening
    assert screening.name == "screenings/s1" and screening.decision == C.DECISION_HELD
    assert screening.rule == "large-transaction" and screening.explanation.startswith("held by")
    assert screening.reason == HELD_FOR_REVIEW and [f.rule for f in screening.findings] == ["large-transaction"]


def test_batch_screen_answers_each_request_on_its_own(fake):
    second = a_request(transaction="transactions/t2")
    second.request_id = "r2"
    reply = served(fake).call("BatchScreenTransactions", C.BatchScreenTransactionsRequest(
        requests=[a_request(), a_request(user_id=""), second]))
    outcomes = [refusal_in(outcome.status) for outcome in reply.outcomes]
    assert [(o.code.name, list(o.fields)) for o in outcomes] == [
        ("OK", []), ("INVALID_ARGUMENT", ["screening.user_id"]), ("OK", [])]
    assert [outcome.response.screening.transaction for outcome in reply.outcomes] == [
        "transactions/t1", "", "transactions/t2"]
    assert reply.outcomes[0].response.screening.rule == "large-transaction"     # a service sees the rule
    assert [call["request_id"] for name, call in fake.calls if name == "screen"] == ["r1", "r2"]
    refused = served(fake).refusal("BatchScreenTransactions", C.BatchScreenTransactionsRequest())
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and list(refused.fields) == ["requests"]


def test_a_user_sees_the_reason_but_not_the_rules(fake):
    for method, request in (("GetScreening", C.GetScreeningRequest(name="screenings/s1")),
                            ("ListScreenings", C.ListScreeningsRequest())):
        response = served(fake, caller="gateway", user=ALICE).call(method, request)
        screening = response.screening if method == "GetScreening" else response.screenings[0]
        assert screening.reason == HELD_FOR_REVIEW
        assert (screening.rule, screening.explanation, list(screening.findings)) == ("", "", [])
    operator = served(fake, caller="gateway", user=OPERATOR).call("GetScreening", C.GetScreeningRequest(
        name="screenings/s1")).screening
    assert operator.explanation and operator.rule == "large-transaction"


def test_list_passes_its_filters_and_the_page(fake):
    response = served(fake, caller="operator").call("ListScreenings", C.ListScreeningsRequest(
        decision=C.DECISION_HELD, user_id="alice", page_size=7, page_token="t"))
    assert fake.last("list") == {"decision": HELD, "user": "alice", "size": 7, "token": "t"}
    assert response.next_page_token == "next"
    served(fake, caller="operator").call("ListScreenings", C.ListScreeningsRequest())
    assert fake.last("list")["decision"] is None


def test_review_names_the_reviewer_and_answers_the_reviewed_screening(fake):
    response = served(fake, caller="operator").call("ReviewScreening", C.ReviewScreeningRequest(
        name="screenings/s1", decision=C.DECISION_REJECTED, reason="documents do not match", request_id="v1"))
    assert fake.last("review") == {"screening_id": "s1", "decision": REJECTED, "reason": "documents do not match",
                                   "reviewer": "operator"}
    review = response.screening.review
    assert response.screening.decision == C.DECISION_REJECTED
    assert (review.decision, review.reason, review.reviewer) == (C.DECISION_REJECTED, "documents do not match",
                                                                 "operator")


def test_each_bad_field_is_invalid_argument_naming_it(fake):
    usd = common_pb2.Money
    assert served(fake).misnamed({
        "no request id": ("ScreenTransaction", C.ScreenTransactionRequest(screening=a_request().screening),
                          "request_id"),
        "no screening": ("ScreenTransaction", C.ScreenTransactionRequest(request_id="r"), "screening"),
        "a transaction without its collection": ("ScreenTransaction", a_request(transaction="t1"),
                                                 "screening.transaction"),
        "no type": ("ScreenTransaction", a_request(type=C.TRANSACTION_TYPE_UNSPECIFIED), "screening.type"),
        "an unknown type": ("ScreenTransaction", a_request(type=42), "screening.type"),
        "no user": ("ScreenTransaction", a_request(user_id=""), "screening.user_id"),
        "a user with a space": ("ScreenTransaction", a_request(user_id="al ice"), "screening.user_id"),
        "no amount": ("ScreenTransaction", C.ScreenTransactionRequest(request_id="r", screening=C.Screening(
            transaction="transactions/t1", type=C.TRANSACTION_TYPE_SEND, user_id="alice")), "screening.amount"),
        "a zero amount": ("ScreenTransaction", a_request(amount=usd(currency_code="USD", amount="0")),
                          "screening.amount.amount"),
        "a float-like amount": ("ScreenTransaction", a_request(amount=usd(currency_code="USD", amount="1e3")),
                                "screening.amount.amount"),
        "an unknown currency": ("ScreenTransaction", a_request(amount=usd(currency_code="XYZ", amount="1")),
                                "screening.amount.currency_code"),
        "a bridge without its address": ("ScreenTransaction", a_request(type=C.TRANSACTION_TYPE_BRIDGE),
                                         "screening.destination_address"),
        "a long owner": ("ScreenTransaction", a_request(destination_owner="x" * 129), "screening.destination_owner"),
        "a name without its collection": ("GetScreening", C.GetScreeningRequest(name="s1"), "name"),
        "a name with a path": ("GetScreening", C.GetScreeningRequest(name="screenings/../x"), "name"),
        "an unknown decision filter": ("ListScreenings", C.ListScreeningsRequest(decision=9), "decision"),
        "a review without a request id": ("ReviewScreening", C.ReviewScreeningRequest(
            name="screenings/s1", decision=C.DECISION_APPROVED, reason="ok"), "request_id"),
        "a review of a bad name": ("ReviewScreening", C.ReviewScreeningRequest(
            name="s1", decision=C.DECISION_APPROVED, reason="ok", request_id="v"), "name"),
        "a review to HELD": ("ReviewScreening", C.ReviewScreeningRequest(
            name="screenings/s1", decision=C.DECISION_HELD, reason="ok", request_id="v"), "decision"),
        "a review without a decision": ("ReviewScreening", C.ReviewScreeningRequest(
            name="screenings/s1", reason="ok", request_id="v"), "decision"),
        "a review without a reason": ("ReviewScreening", C.ReviewScreeningRequest(
            name="screenings/s1", decision=C.DECISION_APPROVED, reason=" ", request_id="v"), "reason"),
    }) == {}


def test_domain_errors_pass_through(fake):
    refused = served(fake, caller="operator").refusal("GetScreening", C.GetScreeningRequest(name="screenings/x"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "SCREENING_NOT_FOUND")
    fake.screening = a_screening(Decision(APPROVED, "", "no rule fired", ""))
    refused = served(fake, caller="operator").refusal("ReviewScreening", C.ReviewScreeningRequest(
        name="screenings/s1", decision=C.DECISION_APPROVED, reason="ok", request_id="v"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SCREENING_NOT_HELD")
    assert "is APPROVED, not HELD" in refused.message


def test_only_a_held_screening_is_reviewed_once():
    later = NOW + dt.timedelta(minutes=3)
    reviewed = a_screening().reviewed(APPROVED, "checked the source of funds", "olga", later)
    assert reviewed.outcome == APPROVED and reviewed.decision.outcome == HELD
    assert (reviewed.review.reviewer, reviewed.review.at) == ("olga", later)
    with pytest.raises(FailedPrecondition, match="is APPROVED, not HELD"):
        reviewed.reviewed(REJECTED, "changed my mind", "olga", later)
    with pytest.raises(InvalidArgument, match="decision"):
        a_screening().reviewed(HELD, "why", "olga", later)
    seen = reviewed.seen_by_user()
    assert (seen.decision.rule, seen.decision.explanation, seen.decision.findings) == ("", "", ())
    assert seen.decision.reason == HELD_FOR_REVIEW

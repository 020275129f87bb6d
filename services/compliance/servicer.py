"""ComplianceService over gRPC: requests to domain values (every problem named by its field),
the use cases, and screenings back to protobuf. No business rules here."""
from __future__ import annotations

from diboas.compliance.v1 import compliance_pb2, compliance_pb2_grpc
from services.domain.clock import utcnow
from services.domain.errors import InvalidArgument
from services.runtime.context import current_caller, current_user
from services.runtime.requests import fingerprint, money, request_id, resource_id
from services.runtime.status import answer_each
from services.runtime.wire import money_pb, timestamp

from .domain import Subject
from .screening import Screening
from .service import ComplianceService

MAX_PARTY = 128         # characters of a user id, an owner or an address
MAX_BATCH_SCREENINGS = 100      # requests in one BatchScreenTransactions


def decision_pb(outcome: str) -> int:
    return compliance_pb2.Decision.Value(f"DECISION_{outcome}")


def decision_of(value: int, field: str) -> str:
    if value not in compliance_pb2.Decision.values():
        raise InvalidArgument.field(field, f"{value} is not a decision")
    return compliance_pb2.Decision.Name(value).removeprefix("DECISION_").replace("UNSPECIFIED", "")


def screening_pb(sc: Screening) -> compliance_pb2.Screening:
    subject, decision, review = sc.subject, sc.decision, sc.review
    return compliance_pb2.Screening(
        name=sc.name, transaction=subject.transaction,
        type=compliance_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{subject.type}"), user_id=subject.user,
        amount=money_pb(subject.amount), source_owner=subject.source_owner,
        destination_owner=subject.destination_owner, destination_address=subject.destination_address,
        decision=decision_pb(sc.outcome), rule=decision.rule, explanation=decision.explanation, reason=sc.user_reason,
        findings=[compliance_pb2.Finding(rule=f.rule, check=f.check, action=f.action, explanation=f.explanation)
                  for f in decision.findings],
        screen_time=timestamp(subject.at),
        review=compliance_pb2.Review(decision=decision_pb(review.decision), reason=review.reason,
                                     reviewer=review.reviewer, review_time=timestamp(review.at)) if review else None)


def _party(value: str, field: str, required: bool = False) -> str:
    if required and not value:
        raise InvalidArgument.field(field, "is required")
    if len(value) > MAX_PARTY or any(c.isspace() for c in value):
        raise InvalidArgument.field(field, f"must be up to {MAX_PARTY} characters without spaces")
    return value


def subject_of(sc: compliance_pb2.Screening) -> Subject:
    """The subject a ScreenTransaction asks about; its time is set when it is screened."""
    transaction = f"transactions/{resource_id(sc.transaction, 'transactions', 'screening.transaction')}"
    if sc.type not in compliance_pb2.TransactionType.values() or sc.type == 0:
        raise InvalidArgument.field("screening.type", "is required: SEND, DEPOSIT, WITHDRAW or BRIDGE")
    kind = compliance_pb2.TransactionType.Name(sc.type).removeprefix("TRANSACTION_TYPE_")
    user = _party(sc.user_id, "screening.user_id", required=True)
    amount = money(sc.amount, sc.HasField("amount"), "screening.amount")
    parties = (_party(sc.source_owner, "screening.source_owner"),
               _party(sc.destination_owner, "screening.destination_owner"),
               _party(sc.destination_address, "screening.destination_address"))
    try:
        return Subject(transaction, kind, user, amount, utcnow(), *parties)
    except InvalidArgument as error:
        if not error.violations:
            raise
        raise InvalidArgument.field(f"screening.{error.violations[0].field}", error.violations[0].description) \
            from None


class ComplianceServicer(compliance_pb2_grpc.ComplianceServiceServicer):
    """`domain`: of the ErrorInfo in a refused request's outcome (BatchScreenTransactions)."""

    def __init__(self, service: ComplianceService, domain: str = "compliance"):
        self._service, self._domain = service, domain

    async def ScreenTransaction(self, request, context):
        rid = request_id(request)
        if not request.HasField("screening"):
            raise InvalidArgument.field("screening", "is required")
        draft = subject_of(request.screening)
        data = await self._service.screen(
            rid, fingerprint(request), draft,
            lambda sc: compliance_pb2.ScreenTransactionResponse(screening=screening_pb(sc)).SerializeToString())
        return compliance_pb2.ScreenTransactionResponse(
            screening=_shown(compliance_pb2.ScreenTransactionResponse.FromString(data).screening))

    async def BatchScreenTransactions(self, request, context):
        outcomes = await answer_each(request.requests, lambda one: self.ScreenTransaction(one, context),
                                     self._domain, most=MAX_BATCH_SCREENINGS)
        return compliance_pb2.BatchScreenTransactionsResponse(outcomes=[
            compliance_pb2.ScreenTransactionOutcome(status=status, response=response)
            for status, response in outcomes])

    async def GetScreening(self, request, context):
        screening = await self._service.get(resource_id(request.name, "screenings", "name"), current_user())
        return compliance_pb2.GetScreeningResponse(screening=screening_pb(screening))

    async def ListScreenings(self, request, context):
        decision = decision_of(request.decision, "decision")
        if len(request.user_id) > MAX_PARTY:
            raise InvalidArgument.field("user_id", f"must be up to {MAX_PARTY} characters")
        page = await self._service.list(decision or None, request.user_id, request.page_size, request.page_token,
                                        current_user())
        return compliance_pb2.ListScreeningsResponse(screenings=[screening_pb(sc) for sc in page.items],
                                                     next_page_token=page.next_page_token)

    async def ReviewScreening(self, request, context):
        rid = request_id(request)
        screening_id = resource_id(request.name, "screenings", "name")
        decision = decision_of(request.decision, "decision")
        viewer = current_user()
        reviewer = viewer.id if viewer is not None else (current_caller() or "")
        data = await self._service.review(
            rid, fingerprint(request), screening_id, decision, request.reason, reviewer,
            lambda sc: compliance_pb2.ReviewScreeningResponse(screening=screening_pb(sc)).SerializeToString())
        return compliance_pb2.ReviewScreeningResponse.FromString(data)


def _shown(screening: compliance_pb2.Screening) -> compliance_pb2.Screening:
    """A stored answer as the caller may see it: a user gets no rule, explanation or findings."""
    viewer = current_user()
    if viewer is not None and not viewer.is_operator:
        screening.rule, screening.explanation = "", ""
        del screening.findings[:]
    return screening

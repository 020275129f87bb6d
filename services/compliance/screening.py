"""A stored screening: the subject, the decision on it, and an operator's review of a held one.
Pure Python (the domain's values); the rules and the decision itself are domain.py's."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from services.domain.errors import FailedPrecondition, InvalidArgument

from .domain import APPROVED, HELD, REJECTED, Decision, Finding, Subject

REVIEWED = (APPROVED, REJECTED)
MAX_REVIEW_REASON = 1000
# What a user is told of a held screening rejected on review (the reviewer's words are for the audit).
REFUSED_ON_REVIEW = "refused by a compliance review"


def check_review(decision: str, reason: str) -> None:
    """A review's decision and reason as they must be, whatever the screening."""
    if decision not in REVIEWED:
        raise InvalidArgument.field("decision", f"must be APPROVED or REJECTED, not {decision or 'unspecified'}")
    if not reason.strip() or len(reason) > MAX_REVIEW_REASON:
        raise InvalidArgument.field("reason", f"is required: why, in 1 to {MAX_REVIEW_REASON} characters")


@dataclass(frozen=True)
class Review:
    decision: str
    reason: str
    reviewer: str
    at: dt.datetime


@dataclass(frozen=True)
class Screening:
    id: str
    subject: Subject
    decision: Decision
    review: Review | None = None

    @property
    def name(self) -> str:
        return f"screenings/{self.id}"

    @property
    def outcome(self) -> str:
        """The decision now: the review's once reviewed."""
        return self.review.decision if self.review else self.decision.outcome

    @property
    def user_reason(self) -> str:
        """What the user is told now: the decision's reason; once reviewed, nothing when approved
        and that a review refused it when rejected (never the reviewer's own words)."""
        if self.review is None:
            return self.decision.reason
        return REFUSED_ON_REVIEW if self.review.decision == REJECTED else ""

    def reviewed(self, decision: str, reason: str, reviewer: str, at: dt.datetime) -> Screening:
        """This screening approved or rejected by `reviewer`; only a HELD one can be."""
        check_review(decision, reason)
        if self.outcome != HELD:
            raise FailedPrecondition(f"screening {self.name} is {self.outcome}, not HELD: only a held screening "
                                     "can be reviewed", reason="SCREENING_NOT_HELD", metadata={"state": self.outcome})
        return replace(self, review=Review(decision, reason, reviewer, at))

    def seen_by_user(self) -> Screening:
        """What the user may see: the decision and the user's reason, not the rules that fired."""
        return replace(self, decision=replace(self.decision, rule="", explanation="", findings=()))


def findings_of(raw: list[dict]) -> tuple[Finding, ...]:
    return tuple(Finding(f["rule"], f["check"], f["action"], f["explanation"]) for f in raw)

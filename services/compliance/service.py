"""Compliance use cases: each one a database transaction; screening and review idempotent by
request_id. The user's past (History) is read in the transaction that writes the screening,
after that user's lock, so two concurrent screenings of one user cannot both pass a limit.
Nothing here knows grpc: responses are stored as the bytes the caller's `encode` gives.
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Sequence, TypeVar

from prometheus_client import Counter

from services.domain.clock import utcnow
from services.domain.errors import AlreadyExists, NotFound
from services.runtime.db import Database
from services.runtime.requests import SEQUENCE, PageTokens, page_size
from services.runtime.unit_of_work import UnitOfWork, UnitsOfWork
from services.runtime.users import User

from .domain import Rule, Subject, screen
from .repository import ScreeningRepository
from .screening import Screening, check_review
from .tables import idempotency_keys

T = TypeVar("T")
SCREENING_PAGES = PageTokens("screenings", SEQUENCE)     # before this screening's seq
SCREENINGS = Counter("diboas_screenings", "Transactions screened, by decision and the rule that decided",
                     ["decision", "rule"])
REVIEWS = Counter("diboas_screening_reviews", "Held screenings reviewed by an operator, by decision", ["decision"])


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Page:
    items: list[Screening]
    next_page_token: str


def shown_to(screening: Screening, viewer: User | None) -> Screening:
    """Operators and services see the explanation; a user only the user's reason."""
    return screening if viewer is None or viewer.is_operator else screening.seen_by_user()


def _not_found(screening_id: str) -> NotFound:
    return NotFound(f"screening screenings/{screening_id} does not exist", reason="SCREENING_NOT_FOUND")


class ComplianceService:
    def __init__(self, db: Database, rules: Sequence[Rule], clock: Callable[[], dt.datetime] = utcnow,
                 ids: Callable[[], str] = new_id):
        self.db = db
        self.rules = list(rules)
        self.units = UnitsOfWork(db, ScreeningRepository, idempotency=idempotency_keys, clock=clock)
        self._ids = ids

    async def screen(self, request_id: str, fingerprint: str, draft: Subject,
                     encode: Callable[[Screening], bytes]) -> bytes:
        """Screen `draft` (its time is the screening's, now). A transaction is screened once:
        screening it again returns the first screening; with another subject it is ALREADY_EXISTS."""
        fresh: set[str] = set()                 # ids of the screenings made here (in any attempt)
        made: dict[bytes, Screening] = {}       # each of them by the answer it was encoded as

        def answer(screening: Screening) -> bytes:
            encoded = encode(screening)
            if screening.id in fresh:
                made[encoded] = screening
            return encoded

        def work(unit: UnitOfWork[ScreeningRepository]) -> Screening:
            repo = unit.repo
            repo.lock_user(draft.user)
            subject = replace(draft, at=unit.now)
            first = repo.of_transaction(subject.transaction)
            if first is not None:
                if replace(first.subject, at=unit.now) != subject:
                    raise AlreadyExists(f"{subject.transaction} was already screened as another transaction "
                                        f"({first.name}); a transaction is screened once",
                                        reason="TRANSACTION_ALREADY_SCREENED", metadata={"screening": first.name})
                return first
            screening = Screening(self._ids(), subject, screen(self.rules, subject, repo))
            repo.add(screening)
            fresh.add(screening.id)
            return screening
        response = await self.db.run(self.units.idempotent, "ScreenTransaction", request_id, fingerprint, work,
                                     answer)
        if (new := made.get(response)) is not None:        # the answer returned: the attempt that committed
            SCREENINGS.labels(new.decision.outcome, new.decision.rule or "none").inc()
        return response

    async def review(self, request_id: str, fingerprint: str, screening_id: str, decision: str, reason: str,
                     reviewer: str, encode: Callable[[Screening], bytes]) -> bytes:
        """An operator approves or rejects a HELD screening (FAILED_PRECONDITION naming any other
        state); who, when and why are stored with it."""
        check_review(decision, reason)          # bad input is named before anything is looked up

        def work(unit: UnitOfWork[ScreeningRepository]) -> Screening:
            found = unit.repo.get(screening_id)
            if found is None:
                raise _not_found(screening_id)
            unit.repo.lock_user(found.subject.user)       # the daily total changes when it is rejected
            found = unit.repo.get(screening_id)
            reviewed = found.reviewed(decision, reason, reviewer, unit.now)
            unit.repo.save_review(reviewed)
            return reviewed

        answers: set[bytes] = set()             # each attempt's (a request_id answered before makes none)

        def answer(reviewed: Screening) -> bytes:
            answers.add(encoded := encode(reviewed))
            return encoded
        response = await self.db.run(self.units.idempotent, "ReviewScreening", request_id, fingerprint, work, answer)
        if response in answers:
            REVIEWS.labels(decision).inc()
        return response

    def _read(self, fn: Callable[[ScreeningRepository], T]) -> T:
        with self.units.reading() as unit:
            return fn(unit.repo)

    async def get(self, screening_id: str, viewer: User | None = None) -> Screening:
        """The screening; NOT_FOUND also when it is another user's (ids cannot be probed)."""
        found = await self.db.run(self._read, lambda repo: repo.get(screening_id))
        if found is None or (viewer is not None and not viewer.may_see(found.subject.user)):
            raise _not_found(screening_id)
        return shown_to(found, viewer)

    async def list(self, decision: str | None, user: str, size: int, token: str,
                   viewer: User | None = None) -> Page:
        """Newest first; a user who is not an operator sees only their own."""
        if viewer is not None and not viewer.is_operator:
            if user and user != viewer.id:
                return Page([], "")
            user = viewer.id
        before, limit = SCREENING_PAGES.read(token), page_size(size)
        found = await self.db.run(self._read, lambda repo: repo.newest(decision, user or None,
                                                                        before and int(before[0]), limit + 1))
        items = [shown_to(screening, viewer) for _, screening in found[:limit]]
        more = len(found) > limit
        return Page(items, SCREENING_PAGES.write(found[limit - 1][0]) if more else "")

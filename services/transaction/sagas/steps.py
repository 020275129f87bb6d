"""Steps more than one saga takes: an upstream call judged definitive or not, a hold on the
source wallet, a payment through a provider. Each is idempotent by a key made of the
transaction id, so a retried step never holds or pays twice."""
from __future__ import annotations

from typing import Awaitable, TypeVar

from services.domain.errors import DeadlineExceeded, DomainError, FailedPrecondition, InvalidArgument, NotFound, ServiceUnavailable

from ..domain import Transaction
from .saga import Fail, SagaContext

T = TypeVar("T")


def definitive(exc: DomainError) -> bool:
    """An upstream refusal that says the step did not and will not happen (bad input, a missing
    wallet, no funds, no provider able): the saga can fail. Anything else may have happened."""
    return (isinstance(exc, (InvalidArgument, NotFound, FailedPrecondition))
            or getattr(exc, "reason", "") == "NO_PROVIDER_AVAILABLE")


async def step(call: Awaitable[T], atomic: bool = False) -> T:
    """Run one upstream step. A definitive refusal fails the saga; anything else is retried
    later. For an atomic step (one database transaction upstream, like a hold) every answer
    but unavailable or too late is definitive: it did not happen."""
    try:
        return await call
    except DomainError as exc:
        retryable = isinstance(exc, (ServiceUnavailable, DeadlineExceeded))
        if (atomic and not retryable) or definitive(exc):
            raise Fail(exc.message) from None
        raise


async def hold(tx: Transaction, context: SagaContext, record: bool = True) -> None:
    """Reserve the amount on the source wallet (key "<tx>:hold"), unless an earlier attempt did.
    `record`: write PROCESSING with the hold before the next step (a saga whose only step is
    the hold needs not)."""
    if tx.hold:
        return
    made = await step(context.wallet.hold(tx.source_wallet, tx.amount, tx.name, request_id=f"{tx.id}:hold"),
                      atomic=True)
    if record:
        await context.progress(tx, hold=made)
    else:
        tx.hold = made


async def pay(tx: Transaction, context: SagaContext, pay_in: bool, wallet: str) -> None:
    """A payment in or out through a provider (key "<tx>:payment"); a payment still PENDING is
    asked about again later, a FAILED one fails the saga."""
    payment = await step(context.providers.pay(pay_in, tx.amount, wallet, tx.name, tx.provider,
                                               request_id=f"{tx.id}:payment"))
    if payment.state == "PENDING":
        raise ServiceUnavailable(f"{payment.name} is still pending", reason="PAYMENT_PENDING")
    tx.provider_payment = payment.name
    if payment.state != "SUCCEEDED":
        raise Fail(f"{payment.name} failed: {payment.failure_reason}")
    tx.provider = payment.provider

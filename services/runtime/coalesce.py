"""Calls of many callers to one upstream, sent together: each caller awaits its own answer to
its own request, and the requests made while earlier batches are on their way go in the next
batch RPC (what TigerBeetle and LMAX call smart batching). Under light load a request goes at
once, alone (one turn of the event loop later); under load, batches grow by themselves with the
number of callers waiting, and one RPC, one server-side span and one database batch serve them
all.

The upstream answers each request on its own (its domain error, or its answer: `answers_of`
reads such an answer): one refused request changes nothing of the others. A failure of the
whole call (the upstream unavailable, too late) is every request's failure, as if each had been
called alone; an upstream without the batch RPC is asked request by request.

A batch is sent outside the RPC being served, if any (the callers of a batch may serve different
RPCs, with different deadlines): it gets the upstream's default timeout. Its CLIENT span is a
child of the first caller's span and links to every caller's span (OpenTelemetry's way for
one operation done on behalf of many).
"""
from __future__ import annotations

import asyncio
import contextvars
import copy
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

from services.domain.errors import ServiceUnavailable, Unimplemented

from .context import CURRENT_CALL
from .metrics import BATCH_SIZE
from .status import from_status_message
from .tracing import batch_links

Request = TypeVar("Request")
Answer = TypeVar("Answer")
# send(requests) -> one outcome per request, in order: its answer, or the error it got
Send = Callable[[list[Request]], Awaitable[Sequence["Answer | Exception"]]]


class Coalescer(Generic[Request, Answer]):
    """`await coalescer(request)`: the request's answer, sent in a batch with the requests of
    other callers (see the module docstring). At most `in_flight` batches are on their way at
    once, each of at most `max_batch` requests. The size of each batch is observed in the
    diboas_rpc_client_batch_size histogram of `upstream` and `method`."""

    def __init__(self, send: Send, upstream: str, method: str, *, max_batch: int, in_flight: int = 2):
        if max_batch < 1 or in_flight < 1:
            raise ValueError("max_batch and in_flight must be at least 1")
        self._send, self._max_batch, self._in_flight = send, max_batch, in_flight
        self._sizes = BATCH_SIZE.labels(upstream, method)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[tuple[Request, asyncio.Future, contextvars.Context]] = []
        self._sending: set[asyncio.Task] = set()    # batches on their way
        self._flush_due = False                     # a flush is scheduled for this turn of the loop

    async def __call__(self, request: Request) -> Answer:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:          # a new event loop (a test's): nothing of the old one carries over
            self._loop, self._waiting, self._sending, self._flush_due = loop, [], set(), False
        answer = loop.create_future()
        self._waiting.append((request, answer, contextvars.copy_context()))
        self._schedule()
        return await answer

    def _schedule(self) -> None:
        if not self._flush_due and len(self._sending) < self._in_flight and self._waiting:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what waits (callers that gave up meanwhile are left out), up to max_batch; what
        is left goes next, at once if there is room for another batch on its way."""
        self._flush_due = False
        live = [waiting for waiting in self._waiting if not waiting[1].done()]
        batch, self._waiting = live[:self._max_batch], live[self._max_batch:]
        if not batch:
            return
        self._sizes.observe(len(batch))
        first = batch[0][2].copy()            # the first caller's context, without its RPC's deadline
        first.run(CURRENT_CALL.set, None)
        first.run(batch_links, [context for _, _, context in batch])
        task = self._loop.create_task(self._send_batch(batch), context=first)
        self._sending.add(task)
        task.add_done_callback(lambda done: self._sent(done, batch))
        self._schedule()

    def _sent(self, task: asyncio.Task, batch: list[tuple[Request, asyncio.Future, contextvars.Context]]) -> None:
        self._sending.discard(task)
        for _, answer, _ in batch:            # a batch cancelled before it ran answered no one
            if not answer.done():
                answer.set_exception(RuntimeError("the batch call was cancelled before it answered"))
        self._schedule()

    async def _send_batch(self, batch: list[tuple[Request, asyncio.Future, contextvars.Context]]) -> None:
        try:
            outcomes = await self._send([request for request, _, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} requests got {len(outcomes)} outcomes")
        except Exception as failed:  # noqa: BLE001 - every caller gets the whole call's failure
            for _, answer, _ in batch:
                if not answer.done():
                    answer.set_exception(copy.copy(failed))    # its own: each caller's handling adds to it
            return
        for (_, answer, _), outcome in zip(batch, outcomes, strict=True):
            if answer.done():
                continue
            if isinstance(outcome, BaseException):
                answer.set_exception(outcome)
            else:
                answer.set_result(outcome)


async def answers_of(batch: Callable[[list[Request]], Awaitable[Sequence]], single: Callable[[Request], Awaitable],
                     requests: list[Request], upstream: str) -> list:
    """The responses to `requests` from a batch RPC that answers one outcome per request, in
    order (a message with a google.rpc.Status `status` and, when OK, a `response`: what
    status.answer_each makes), each refused one as the domain error its status stands for. An
    upstream of an older release, without the batch RPC (UNIMPLEMENTED), is asked request by
    request with the single RPC, so a rolling upgrade fails nothing. `batch(requests)` returns
    the outcomes; `single(request)` the response of one."""
    try:
        outcomes = await batch(requests)
    except Unimplemented:
        return list(await asyncio.gather(*(single(request) for request in requests), return_exceptions=True))
    if len(outcomes) != len(requests):
        raise ServiceUnavailable(f"{upstream} answered {len(outcomes)} outcomes to {len(requests)} requests",
                                 reason="UPSTREAM_MALFORMED_ANSWER")
    return [_answer_in(outcome, upstream) for outcome in outcomes]


def _answer_in(outcome, upstream: str):
    if outcome.status.code != 0:
        return from_status_message(outcome.status, upstream)
    if not outcome.HasField("response"):
        return ServiceUnavailable(f"{upstream} answered OK without a response", reason="UPSTREAM_MALFORMED_ANSWER")
    return outcome.response

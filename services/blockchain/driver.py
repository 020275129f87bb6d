"""Driving transfers: one drive of a transfer at a time in this process, drives that go on beside
the requests that started them, and the background resumption of the transfers left unfinished
(after a crash; a mint that did not answer)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Awaitable, Protocol

from services.domain.errors import DomainError, NotFound
from services.runtime.loops import repeat

from .saga import TransferSaga
from .transfers import TERMINAL, Transfer

log = logging.getLogger("diboas.blockchain")


class TransferSource(Protocol):
    async def get(self, transfer_id: str) -> Transfer | None: ...

    async def unfinished(self) -> list[str]:
        """The ids of the transfers that are not terminal, oldest first."""


def not_found(transfer_id: str) -> NotFound:
    return NotFound(f"cross-chain transfer crossChainTransfers/{transfer_id} does not exist",
                    reason="CROSS_CHAIN_TRANSFER_NOT_FOUND")


class TransferDriver:
    def __init__(self, transfers: TransferSource, saga: TransferSaga, *, resume_concurrency: int = 8):
        self._transfers, self._saga = transfers, saga
        self._resume_concurrency = resume_concurrency
        self._locks: dict[str, list] = {}            # transfer id -> [asyncio.Lock, users]
        self._tasks: set[asyncio.Task] = set()       # drives running beside the requests that started them

    @contextlib.asynccontextmanager
    async def _serialized(self, transfer_id: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(transfer_id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(transfer_id, None)

    async def drive(self, transfer_id: str) -> Transfer:
        """Take the transfer as far as it can go now (see TransferSaga.advance). Safe to call any
        number of times, from anywhere: drives of one transfer run one after the other."""
        async with self._serialized(transfer_id):
            t = await self._transfers.get(transfer_id)
            if t is None:
                raise not_found(transfer_id)
            if t.state in TERMINAL:
                return t
            return await self._saga.advance(t)

    def spawn(self, transfer_id: str, work: Awaitable[Transfer] | None = None) -> asyncio.Task:
        """Drive the transfer (or run `work` about it) in a task of its own, which outlives the
        request that started it; its failure is logged."""
        task = asyncio.ensure_future(work if work is not None else self.drive(transfer_id))
        self._tasks.add(task)

        def finished(done: asyncio.Task) -> None:
            self._tasks.discard(done)
            if not done.cancelled() and done.exception() is not None:
                exc = done.exception()
                log.log(logging.WARNING if isinstance(exc, DomainError) else logging.ERROR,
                        "crossChainTransfers/%s: drive stopped: %s", transfer_id, getattr(exc, "message", None) or exc,
                        exc_info=not isinstance(exc, DomainError))
        task.add_done_callback(finished)
        return task

    async def resume_once(self) -> int:
        """Drive every transfer that is not terminal and not being driven now; how many."""
        ids = [i for i in await self._transfers.unfinished() if i not in self._locks]
        if not ids:
            return 0
        limit = asyncio.Semaphore(self._resume_concurrency)

        async def one(transfer_id: str) -> Transfer:
            async with limit:
                return await self.drive(transfer_id)
        await asyncio.gather(*(self.spawn(i, one(i)) for i in ids), return_exceptions=True)
        log.info("resumed %d cross-chain transfers", len(ids))
        return len(ids)

    async def resume(self, stop: asyncio.Event, interval: float = 5.0) -> None:
        """At start-up, and then every `interval` seconds until `stop` is set, drive the transfers
        that are not terminal. At `stop`, drives still running are cancelled: they resume at the
        next start, without repeating what was done."""
        try:
            await repeat(stop, interval, self.resume_once, failure="could not resume cross-chain transfers",
                         logger=log)
        finally:
            await self.close()

    async def close(self, grace: float = 1.0) -> None:
        """Let running drives finish for up to `grace` seconds, then cancel them."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

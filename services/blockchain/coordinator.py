"""Cross-chain transfer use cases, as the servicer calls them: create a transfer (idempotent by
request_id) and drive it, read one, switch a simulated chain's faults. The saga (saga.py) does
the steps, the driver (driver.py) runs drives and resumes the unfinished ones, the repository
(repository.py) stores them. No grpc."""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import uuid
from typing import Callable

from services.domain.chains import address_problem
from services.domain.clock import utcnow
from services.domain.errors import InvalidArgument
from services.domain.money import Money
from services.runtime.db import Database
from services.simulation import Faults, fault_switch

from .driver import TransferDriver, not_found
from .registry import ChainRegistry
from .repository import TransferRepository
from .saga import COMPENSATION_ATTEMPTS, COMPENSATION_BACKOFF, TransferSaga
from .transfers import NO_STEP, PENDING, Transfer

log = logging.getLogger("diboas.blockchain")
OPERATION = "ExecuteCrossChainTransfer"


class TransferCoordinator:
    def __init__(self, db: Database, registry: ChainRegistry, *, step_timeout: float = 1.0,
                 compensation_attempts: int = COMPENSATION_ATTEMPTS, compensation_backoff: float = COMPENSATION_BACKOFF,
                 resume_concurrency: int = 8,
                 clock: Callable[[], dt.datetime] = utcnow, ids: Callable[[], str] = lambda: uuid.uuid4().hex):
        self.registry = registry
        self._transfers = TransferRepository(db, clock)
        saga = TransferSaga(registry, self._transfers, step_timeout=step_timeout,
                            compensation_attempts=compensation_attempts, compensation_backoff=compensation_backoff,
                            clock=clock)
        self.driver = TransferDriver(self._transfers, saga, resume_concurrency=resume_concurrency)
        self._ids = ids

    def _check_request(self, source_chain: str, target_chain: str, amount: Money, destination_address: str) -> None:
        """INVALID_ARGUMENT or NOT_FOUND naming what is wrong; nothing is written before this passes."""
        self.registry.adapter(source_chain)
        self.registry.adapter(target_chain)
        if source_chain == target_chain:
            raise InvalidArgument.field("target_chain", f"must differ from source_chain (both are chains/{source_chain})")
        amount.require_positive("amount.amount")
        problem = address_problem(destination_address)
        if problem:
            raise InvalidArgument.field("destination_address", problem)

    async def execute(self, request_id: str, source_chain: str, target_chain: str, amount: Money,
                      destination_address: str, transaction: str = "", *, fingerprint: str | None = None,
                      wait: float | None = None) -> Transfer:
        """Create the transfer (a repeated request_id gets the first one; with another request,
        ALREADY_EXISTS) and drive it; the transfer as it is when it is terminal, or after `wait`
        seconds (the drive goes on in the background)."""
        if not request_id or len(request_id) > 128:
            raise InvalidArgument.field("request_id", "is required: a unique key of up to 128 characters per request")
        fingerprint = fingerprint or hashlib.sha256("|".join(
            (source_chain, target_chain, amount.currency, amount.text, destination_address, transaction)).encode()).hexdigest()
        # A repeat finds its transfer before anything is checked again: a rule or a chain list that
        # changed since must not refuse a transfer that exists (its steps may have happened).
        first = await self._transfers.first_response(OPERATION, request_id, fingerprint)
        if first is not None:
            transfer_id = first.decode()
        else:
            self._check_request(source_chain, target_chain, amount, destination_address)
            transfer_id = await self._transfers.create(OPERATION, request_id, fingerprint, lambda now: Transfer(
                self._ids(), source_chain, target_chain, amount, destination_address, transaction, PENDING, NO_STEP,
                now, now))
        task = self.driver.spawn(transfer_id)
        if wait is not None and wait <= 0:
            return await self.get(transfer_id)
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            return await self.get(transfer_id)

    async def get(self, transfer_id: str) -> Transfer:
        transfer = await self._transfers.get(transfer_id)
        if transfer is None:
            raise not_found(transfer_id)
        return transfer

    async def set_faults(self, request_id: str, fingerprint: str, chain: str, faults: Faults,
                         encode: Callable[[str], bytes]) -> bytes:
        """Replace a simulated chain's faults (idempotent by request_id: a repeat changes nothing
        and gets the first answer); `encode(chain)` makes the answer."""
        switch = fault_switch(self.registry.adapter(chain), f"chains/{chain}")

        def work(now: dt.datetime) -> str:
            switch.faults = faults
            log.warning("chains/%s: simulated faults are now %s", chain, faults, extra={"chain": chain})
            return chain
        return await self._transfers.once("SetChainFaults", request_id, fingerprint, work, encode)


"""What a service has accepted and not finished, and the refusal of new work past a bound.

The backlog is counted in the service's database (every instance's work, a restart's too), plus
what waits outside it (messages in a broker's queues), by a background task, every
BACKLOG_INTERVAL seconds; what this process accepts in between is added as it is accepted, and
a request being accepted keeps its place from the check to its commit, so a burst cannot pass
the bound by more than what other instances accept in one interval. Past the bound, `admit`
raises ResourceExhausted with a retry delay: about how long what is held now takes to drain,
from the rate it drained at over the last counts.
"""
from __future__ import annotations

import asyncio
import logging
import math
from contextlib import contextmanager
from typing import Awaitable, Callable, Iterator, Sequence

from prometheus_client import Gauge
from sqlalchemy import Select

from services.domain.errors import ResourceExhausted

from .db import Database
from .loops import repeat

log = logging.getLogger("diboas.backlog")
BACKLOG = Gauge("diboas_backlog", "Work a service accepted and has not finished (counted in its database)",
                ["service"])
BACKLOG_INTERVAL = 0.25        # seconds between counts
RETRY_WHEN_STUCK = 10          # seconds a refusal asks to wait while nothing drains
MAX_RETRY_AFTER = 60


class Backlog:
    """`counts`: statements that each count a part of the backlog (queued sagas, undelivered
    events ...); `waiting`: counts of what waits outside the database (events in the broker's
    queues); the backlog is the sum of both. `bound`: the backlog at which new work is refused;
    `what`: how a refusal names the work (e.g. "transactions accepted and not settled")."""

    def __init__(self, db: Database, service: str, bound: int, counts: Sequence[Select], what: str,
                 waiting: Sequence[Callable[[], Awaitable[int]]] = ()):
        self._db, self._counts, self.bound, self._what = db, list(counts), bound, what
        self._waiting = list(waiting)
        self._gauge = BACKLOG.labels(service)
        self.held = 0                  # the last count, plus what was accepted here since
        self._admitting = 0            # places kept for work being accepted here now
        self._accepted = 0             # accepted here, ever
        self._drain_rate = 0.0         # per second, smoothed over the counts

    def accepted(self) -> None:
        """One more piece of work was accepted here (called once it is committed)."""
        self._accepted += 1
        self.held += 1

    def count_in_database(self) -> int:
        with self._db.reading() as connection:
            return sum(connection.execute(statement).scalar_one() for statement in self._counts)

    async def count(self) -> int:
        return await self._db.run(self.count_in_database) + sum([await waiting() for waiting in self._waiting])

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Raise ResourceExhausted (reason BACKLOG_FULL, with a retry delay) while the backlog is at
        its bound. Otherwise keep one place below the bound while the block runs (the work being
        accepted: its checks, its upstream calls, its commit), so that requests accepted together
        cannot pass the bound together; `accepted()` counts the work once it is committed."""
        held = self.held + self._admitting
        if held >= self.bound:
            rate = self._drain_rate
            retry_after = RETRY_WHEN_STUCK if rate <= 0 else min(MAX_RETRY_AFTER, max(1, math.ceil(held / rate)))
            raise ResourceExhausted(f"too much work in hand: {held} {self._what} (the bound is {self.bound}); "
                                    f"nothing was done, send the same request again in {retry_after} s",
                                    reason="BACKLOG_FULL", retry_after_seconds=retry_after,
                                    metadata={"backlog": str(held), "max_backlog": str(self.bound)})
        self._admitting += 1
        try:
            yield
        finally:
            self._admitting -= 1

    async def watch(self, stop: asyncio.Event, interval: float = BACKLOG_INTERVAL) -> None:
        """Background work: count the backlog every `interval` seconds (the diboas_backlog metric)
        and learn how fast it drains, until `stop` is set."""
        last: tuple[int, int, float] | None = None       # (count, accepted here by then, when)

        async def measure() -> None:
            nonlocal last
            accepted, now = self._accepted, asyncio.get_running_loop().time()
            counted = await self.count()
            self.held = counted + self._accepted - accepted       # and what was accepted meanwhile
            self._gauge.set(self.held)
            if last is not None and now > last[2]:
                # Work accepted by other instances is not seen here: the rate is an underestimate
                # where several instances take work, which only lengthens a refusal's delay.
                drained = last[0] + (accepted - last[1]) - counted
                if drained >= 0:
                    rate = drained / (now - last[2])
                    self._drain_rate = 0.7 * self._drain_rate + 0.3 * rate if self._drain_rate else rate
            last = (counted, accepted, now)
        await repeat(stop, interval, measure, failure="could not count the backlog", logger=log)

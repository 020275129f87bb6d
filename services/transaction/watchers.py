"""Who in this process watches which transaction (WatchTransaction), and the wake-up each gets
when a change to it is committed: by this process (the saga's progress, its outcome with its
event in the outbox, its item parked after a failed attempt), or, over RabbitMQ, by another
instance (its event heard back, rabbit_echo.py). Nothing here reads the database; a watcher
re-reads its transaction when woken."""
from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Callable, Iterator

from services.domain.errors import ResourceExhausted, ServiceUnavailable


class Watchers:
    """At most `limit` open watches in the process, and `per_user` for one user (a user is a
    watcher's `who`; None, a service or the operator calling for itself, has only the first)."""

    def __init__(self, limit: int, per_user: int):
        self._limit, self._per_user = limit, per_user
        self._by_transaction: dict[str, set[asyncio.Event]] = {}
        self._by_user: collections.Counter[str] = collections.Counter()
        self._count = 0
        self._listeners: list[Callable[[], None]] = []
        self.closing = False

    def on_watch(self, listener: Callable[[], None]) -> None:
        """Call `listener` each time a watch opens (to start listening for changes made elsewhere)."""
        self._listeners.append(listener)

    @contextlib.contextmanager
    def watch(self, transaction_id: str, who: str | None = None) -> Iterator[asyncio.Event]:
        """An event set at every change to the transaction (and when the process shuts down), for
        as long as the block runs. ResourceExhausted while `limit` watches are open here, or
        `per_user` of `who`'s; ServiceUnavailable once the process is shutting down."""
        if self.closing:
            raise shutting_down()
        if self._count >= self._limit:
            raise ResourceExhausted(f"{self._limit} transactions are watched already: try again later",
                                    reason="TOO_MANY_WATCHES", retry_after_seconds=5)
        if who is not None and self._by_user[who] >= self._per_user:
            raise ResourceExhausted(f"{who} watches {self._per_user} transactions already: end one first",
                                    reason="TOO_MANY_WATCHES_OF_USER", retry_after_seconds=5)
        for listener in self._listeners:
            listener()
        changed = asyncio.Event()
        self._by_transaction.setdefault(transaction_id, set()).add(changed)
        self._count += 1
        if who is not None:
            self._by_user[who] += 1
        try:
            yield changed
        finally:
            self._count -= 1
            if who is not None:
                self._by_user[who] -= 1
                if not self._by_user[who]:
                    del self._by_user[who]
            watching = self._by_transaction[transaction_id]
            watching.discard(changed)
            if not watching:
                del self._by_transaction[transaction_id]

    def changed(self, transaction_id: str) -> None:
        """Wake whoever watches the transaction (called from the event loop, after the commit)."""
        for event in self._by_transaction.get(transaction_id, ()):
            event.set()

    def close(self) -> None:
        """The process is shutting down: every watch ends now (its caller is told to watch
        again, elsewhere), instead of holding the server's drain to its end; no new one opens."""
        self.closing = True
        for watching in self._by_transaction.values():
            for event in watching:
                event.set()

    @property
    def open(self) -> int:
        return self._count


def shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable("the transaction service is shutting down: watch again", reason="SHUTTING_DOWN")

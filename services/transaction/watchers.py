"""Who in this process watches which transaction (WatchTransaction), and the wake-up each gets
when a change to it is committed: by this process (the saga's progress, its outcome with its
event in the outbox, its item parked), or, over RabbitMQ, by another instance (its event heard
back, rabbit_echo.py). Nothing here reads the database; a watcher re-reads its transaction
when woken."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Callable, Iterator

from services.domain.errors import ResourceExhausted


class Watchers:
    def __init__(self, limit: int):
        self._limit = limit
        self._by_transaction: dict[str, set[asyncio.Event]] = {}
        self._count = 0
        self._listeners: list[Callable[[], None]] = []

    def on_watch(self, listener: Callable[[], None]) -> None:
        """Call `listener` each time a watch opens (to start listening for changes made elsewhere)."""
        self._listeners.append(listener)

    @contextlib.contextmanager
    def watch(self, transaction_id: str) -> Iterator[asyncio.Event]:
        """An event set at every change to the transaction, for as long as the block runs;
        ResourceExhausted while `limit` watches are open in this process."""
        if self._count >= self._limit:
            raise ResourceExhausted(f"{self._limit} transactions are watched already: try again later",
                                    reason="TOO_MANY_WATCHES", retry_after_seconds=5)
        for listener in self._listeners:
            listener()
        changed = asyncio.Event()
        self._by_transaction.setdefault(transaction_id, set()).add(changed)
        self._count += 1
        try:
            yield changed
        finally:
            self._count -= 1
            watching = self._by_transaction[transaction_id]
            watching.discard(changed)
            if not watching:
                del self._by_transaction[transaction_id]

    def changed(self, transaction_id: str) -> None:
        """Wake whoever watches the transaction (called from the event loop, after the commit)."""
        for event in self._by_transaction.get(transaction_id, ()):
            event.set()

    @property
    def open(self) -> int:
        return self._count

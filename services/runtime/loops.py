"""Background loops that stop when asked: "do a round of work, then wait `interval` seconds or
until `stop` is set, until `stop` is set"."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

log = logging.getLogger("diboas.loops")


async def pause(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Wait `seconds`, or less when `stop` (or `wake`) is set meanwhile."""
    if wake is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def repeat(stop: asyncio.Event, interval: float, work: Callable[[], Awaitable[object]], *,
                 failure: str, wait_only_when_idle: bool = False, logger: logging.Logger = log,
                 wake: asyncio.Event | None = None) -> None:
    """Run `work()` now, then every `interval` seconds, until `stop` is set. A round that raises
    is logged to `logger` (`failure` says what could not be done) and the loop goes on: a database or network
    hiccup must not end background work. With `wait_only_when_idle`, a round that returns a true
    value (it found work) is followed by the next at once. Setting `wake` ends a pause early (it
    is cleared as each round starts, so a wake during a round brings another)."""
    while not stop.is_set():
        if wake is not None:
            wake.clear()
        try:
            busy = await work()
        except Exception:  # noqa: BLE001 - logged; the next round tries again
            logger.exception("%s; trying again", failure)
            busy = False
        if not (wait_only_when_idle and busy):
            await pause(stop, interval, wake)

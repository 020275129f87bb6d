"""Background loops that stop when asked: "do a round of work, then wait `interval` seconds or
until `stop` is set, until `stop` is set"."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

log = logging.getLogger("diboas.loops")


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less when `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def repeat(stop: asyncio.Event, interval: float, work: Callable[[], Awaitable[object]], *,
                 failure: str, wait_only_when_idle: bool = False, logger: logging.Logger = log) -> None:
    """Run `work()` now, then every `interval` seconds, until `stop` is set. A round that raises
    is logged to `logger` (`failure` says what could not be done) and the loop goes on: a database or network
    hiccup must not end background work. With `wait_only_when_idle`, a round that returns a true
    value (it found work) is followed by the next at once."""
    while not stop.is_set():
        try:
            busy = await work()
        except Exception:  # noqa: BLE001 - logged; the next round tries again
            logger.exception("%s; trying again", failure)
            busy = False
        if not (wait_only_when_idle and busy):
            await pause(stop, interval)

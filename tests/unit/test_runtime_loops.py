"""The stop-aware background loop (services/runtime/loops.py): a round now, then one every
interval, a failing round logged and survived, and `stop` obeyed at once, even mid-wait."""
from __future__ import annotations

import asyncio
import logging
import time

from services.runtime.loops import pause, repeat


async def test_a_round_runs_at_once_then_every_interval_until_stop():
    stop, rounds = asyncio.Event(), []

    async def work():
        rounds.append(time.monotonic())
        if len(rounds) == 3:
            stop.set()
    started = time.monotonic()
    await asyncio.wait_for(repeat(stop, 0.05, work, failure="x"), 2)
    assert len(rounds) == 3
    assert rounds[0] - started < 0.04
    assert all(later - earlier >= 0.045 for earlier, later in zip(rounds, rounds[1:], strict=False))


async def test_stop_ends_the_wait_at_once():
    stop = asyncio.Event()
    loop = asyncio.create_task(repeat(stop, 60, lambda: asyncio.sleep(0), failure="x"))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(loop, 1)
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    await pause(stop, 60)                  # already set: no wait at all
    assert time.monotonic() - started < 0.1


async def test_wake_ends_an_idle_pause_and_a_wake_during_a_round_brings_another():
    stop, wake, rounds = asyncio.Event(), asyncio.Event(), []

    async def work():
        rounds.append(time.monotonic())
        if len(rounds) == 2:
            wake.set()                  # something arrived while this round ran
        if len(rounds) == 3:
            stop.set()
    loop = asyncio.create_task(repeat(stop, 60, work, failure="x", wake=wake))
    await asyncio.sleep(0.05)
    assert len(rounds) == 1             # idle: waiting out its 60 s
    wake.set()
    await asyncio.wait_for(loop, 2)
    assert len(rounds) == 3


async def test_a_failing_round_is_logged_and_the_loop_goes_on(caplog):
    stop, rounds = asyncio.Event(), []
    logger = logging.getLogger("test.loops")

    async def work():
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("database away")
        stop.set()
    with caplog.at_level(logging.ERROR, "test.loops"):
        await asyncio.wait_for(repeat(stop, 0.01, work, failure="could not do x", logger=logger), 2)
    assert len(rounds) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "test.loops"] == ["could not do x; trying again"]


async def test_busy_rounds_follow_at_once_when_waiting_only_when_idle():
    stop, results = asyncio.Event(), [True, True, True, False]

    async def work():
        if not results:
            stop.set()
            return False
        return results.pop(0)
    started = time.monotonic()
    await asyncio.wait_for(repeat(stop, 0.2, work, failure="x", wait_only_when_idle=True), 2)
    # three busy rounds without a wait, then one idle wait of 0.2 s before the last round
    assert 0.19 <= time.monotonic() - started < 0.35

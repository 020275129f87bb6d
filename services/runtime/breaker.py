"""A circuit breaker per upstream for asyncio code, on top of pybreaker.

pybreaker has no asyncio API, so the guard admits a call itself and hands pybreaker the
call's outcome when it is known (through its `calling()` context manager, synchronously).
Three gaps are closed here: while half-open, pybreaker lets every concurrent call through, so
we admit exactly one trial call and fail the rest fast; a cancelled call is not a success (one
cancelled by its deadline is a failure); and an open breaker raises our ServiceUnavailable
(with the time until the trial) instead of pybreaker's error.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Callable

import pybreaker

from services.domain.clock import utcnow
from services.domain.errors import ServiceUnavailable

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN


class _StateListener(pybreaker.CircuitBreakerListener):
    def __init__(self, on_change: Callable[[str], None]):
        self._on_change = on_change

    def state_change(self, cb, old_state, new_state):
        self._on_change(new_state.name)


class AsyncCircuitBreaker:
    def __init__(self, name: str, fail_max: int, reset_timeout: float,
                 is_failure: Callable[[BaseException], bool], on_state_change: Callable[[str], None] | None = None):
        self.name = name
        listeners = [_StateListener(on_state_change)] if on_state_change else []
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max, reset_timeout=reset_timeout, name=name, listeners=listeners,
            # Only transport-level failures count; a NOT_FOUND is the upstream working fine.
            exclude=[lambda exc: not (isinstance(exc, UpstreamTimedOut) or is_failure(exc))],
            throw_new_error_on_trip=False,
        )
        self._is_failure = is_failure
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        return self._breaker.current_state

    def _seconds_until_trial(self) -> float:
        opened_at = self._breaker._state_storage.opened_at
        if opened_at is None:
            return 0.0
        due = opened_at + dt.timedelta(seconds=self._breaker.reset_timeout)
        return max(0.0, (due - utcnow()).total_seconds())

    def _unavailable(self, why: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"{self.name} is unavailable: {why}", reason="CIRCUIT_OPEN",
                                  metadata={"upstream": self.name})

    def record(self, failure: BaseException | None) -> None:
        """Tell pybreaker how a call ended (None: it worked, or the upstream answered on purpose)."""
        try:
            with self._breaker.calling():
                if failure is not None:
                    raise failure
        except pybreaker.CircuitBreakerError:
            pass  # another call opened the breaker meanwhile; this outcome changes nothing
        except BaseException as raised:
            if raised is not failure:
                raise

    def guard(self, deadline: float | None = None) -> "_Guard":
        """`async with breaker.guard(deadline):` admits the call, or raises ServiceUnavailable at once
        while the breaker is open or a half-open trial is in flight; on exit it records the outcome.
        A call cancelled at or after `deadline` (time.monotonic()) counts as a failure (the
        upstream did not answer in time); cancelled earlier, it counts as nothing."""
        return _Guard(self, deadline)


class UpstreamTimedOut(Exception):
    """Stands for a call that was cancelled because its deadline passed (for the breaker's count)."""


class _Guard:
    __slots__ = ("_owner", "_deadline", "_trial")

    def __init__(self, owner: AsyncCircuitBreaker, deadline: float | None):
        self._owner = owner
        self._deadline = deadline
        self._trial = False

    async def __aenter__(self) -> None:
        owner = self._owner
        state = owner._breaker.current_state
        if state == OPEN:
            wait = owner._seconds_until_trial()
            if wait > 0:
                raise owner._unavailable(f"circuit breaker open, next trial call in {wait:.1f}s")
            self._trial = True
        elif state == HALF_OPEN:
            self._trial = True
        if self._trial:
            if owner._trial_in_flight:
                self._trial = False
                raise owner._unavailable("circuit breaker half-open, a trial call is in flight")
            owner._trial_in_flight = True

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        owner = self._owner
        try:
            if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    owner.record(UpstreamTimedOut(f"{owner.name} did not answer before the deadline"))
                # cancelled for another reason: says nothing about the upstream
            elif exc is not None and owner._is_failure(exc):
                owner.record(exc)
            elif self._trial or owner._breaker.fail_counter:
                # Success (or an answer on purpose). Closed with nothing counted is the hot path:
                # there is nothing for pybreaker to reset, so it is not called.
                owner.record(None)
        finally:
            if self._trial:
                owner._trial_in_flight = False
        return False

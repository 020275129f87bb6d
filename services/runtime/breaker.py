"""A circuit breaker per upstream for asyncio code, on top of pybreaker.

pybreaker has no asyncio API; its `calling()` context manager works around an await. Two
gaps are closed here: while half-open, pybreaker lets every concurrent call through, so we
admit exactly one trial call and fail the rest fast; and an open breaker raises our
ServiceUnavailable (with the time until the trial) instead of pybreaker's error.
"""
from __future__ import annotations

import contextlib
import datetime as dt
from typing import Callable

import pybreaker

from .errors import ServiceUnavailable

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
            exclude=[lambda exc: not is_failure(exc)],
            throw_new_error_on_trip=False,
        )
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        return self._breaker.current_state

    def _seconds_until_trial(self) -> float:
        opened_at = self._breaker._state_storage.opened_at
        if opened_at is None:
            return 0.0
        due = opened_at + dt.timedelta(seconds=self._breaker.reset_timeout)
        return max(0.0, (due - dt.datetime.now(dt.timezone.utc)).total_seconds())

    def _unavailable(self, why: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"{self.name} is unavailable: {why}", reason="CIRCUIT_OPEN",
                                  metadata={"upstream": self.name})

    @contextlib.asynccontextmanager
    async def guard(self):
        """Run the body under the breaker; raise ServiceUnavailable at once while it is open."""
        state = self._breaker.current_state
        trial = False
        if state == OPEN:
            wait = self._seconds_until_trial()
            if wait > 0:
                raise self._unavailable(f"circuit breaker open, next trial call in {wait:.1f}s")
            trial = True
        elif state == HALF_OPEN:
            trial = True
        if trial:
            if self._trial_in_flight:
                raise self._unavailable("circuit breaker half-open, a trial call is in flight")
            self._trial_in_flight = True
        try:
            with self._breaker.calling():
                yield
        except pybreaker.CircuitBreakerError:
            raise self._unavailable("circuit breaker open") from None
        finally:
            if trial:
                self._trial_in_flight = False

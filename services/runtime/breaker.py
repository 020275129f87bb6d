"""A circuit breaker per upstream for asyncio code, on top of pybreaker.

pybreaker has no asyncio API; its `calling()` context manager works around an await. Two
gaps are closed here: while half-open, pybreaker lets every concurrent call through, so we
admit exactly one trial call and fail the rest fast; and an open breaker raises our
ServiceUnavailable (with the time until the trial) instead of pybreaker's error.
"""
from __future__ import annotations

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
        return max(0.0, (due - dt.datetime.now(dt.timezone.utc)).total_seconds())

    def _unavailable(self, why: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"{self.name} is unavailable: {why}", reason="CIRCUIT_OPEN",
                                  metadata={"upstream": self.name})

    def _record_failure(self, exc: BaseException) -> None:
        """Count a failure of a call made on the hot path, as if it had run under pybreaker."""
        try:
            with self._breaker.calling():
                raise exc
        except pybreaker.CircuitBreakerError:
            pass  # another call opened the breaker meanwhile; this failure changes nothing
        except BaseException as raised:
            if raised is not exc:
                raise

    def guard(self) -> "_Guard":
        """`async with breaker.guard():` runs the body under the breaker; while it is open, or a
        half-open trial is in flight, it raises ServiceUnavailable at once."""
        return _Guard(self)


class _Guard:
    __slots__ = ("_owner", "_trial", "_calling")

    def __init__(self, owner: AsyncCircuitBreaker):
        self._owner = owner
        self._trial = False

    async def __aenter__(self) -> None:
        owner = self._owner
        state = owner._breaker.current_state
        if state == CLOSED and owner._breaker.fail_counter == 0:
            # The hot path: closed and nothing to forget. Unless this call fails, there is
            # nothing for pybreaker to record, so it is only told about failures (__aexit__).
            self._calling = None
            return
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
        self._calling = owner._breaker.calling()
        try:
            self._calling.__enter__()
        except pybreaker.CircuitBreakerError:
            self._release()
            raise owner._unavailable("circuit breaker open") from None

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if self._calling is None:
            if exc is not None and self._owner._is_failure(exc):
                self._owner._record_failure(exc)
            return False
        try:
            # pybreaker counts the outcome and re-raises the body's exception (or not).
            return bool(self._calling.__exit__(exc_type, exc, tb))
        except pybreaker.CircuitBreakerError:
            raise self._owner._unavailable("circuit breaker open") from None
        finally:
            self._release()

    def _release(self) -> None:
        if self._trial:
            self._owner._trial_in_flight = False

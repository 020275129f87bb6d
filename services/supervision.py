"""`make run`'s restart policy for one supervised process, without processes or I/O.

Every exit the launcher did not ask for counts. The exits within the last `crash_loop_seconds`
decide what happens next: the n-th of them waits `initial_delay * multiplier**(n-1)` seconds
(at most `max_delay`) before the restart; the `crash_loop_exits`-th is a crash loop, and the
process is given up (not restarted) until the operator asks again (`reset`). A process that
stays up longer than the window starts over with the shortest delay.
"""
from __future__ import annotations

import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from services.runtime.config import RestartPolicy


@dataclass(frozen=True)
class Decision:
    restart: bool     # False: a crash loop, give up
    attempt: int      # exits within the window, this one included
    delay: float      # seconds to wait before the restart (0 when giving up)


class RestartBudget:
    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy, self._clock = policy, clock
        self._exits: deque[float] = deque()

    def exited(self) -> Decision:
        """Record an exit now; restart (after how long), or give up."""
        now = self._clock()
        self._exits.append(now)
        while self._exits and self._exits[0] <= now - self.policy.crash_loop_seconds:
            self._exits.popleft()
        attempt = len(self._exits)
        if attempt >= self.policy.crash_loop_exits:
            return Decision(False, attempt, 0.0)
        p = self.policy
        try:
            delay = min(p.max_delay_seconds, p.initial_delay_seconds * p.multiplier ** (attempt - 1))
        except OverflowError:   # a huge crash_loop_exits: long past the cap
            delay = p.max_delay_seconds
        return Decision(True, attempt, delay)

    def reset(self) -> None:
        """Forget earlier exits (the operator fixed the cause and asks for a retry)."""
        self._exits.clear()


def describe_exit(returncode: int) -> str:
    """`exit code 1`, or `killed by SIGKILL` for a process ended by a signal (Popen's negative code)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"

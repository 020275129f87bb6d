"""How calls to one outside system (a payment provider, a chain) have gone lately: what the
registries rank and report by. No grpc."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW = 20      # calls the success rate looks back over


@dataclass
class CallOutcomes:
    consecutive_failures: int = 0
    message: str = ""                          # the last problem
    latency: float = 0.0                       # moving average of answered calls, seconds
    recent: deque = field(default_factory=lambda: deque(maxlen=WINDOW))   # True/False per call

    @property
    def success_rate(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else 1.0

    def record(self, ok: bool, seconds: float = 0.0, message: str = "") -> None:
        self.recent.append(ok)
        if ok:
            self.latency = seconds if len(self.recent) == 1 else 0.8 * self.latency + 0.2 * seconds
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1
            self.message = message


"""What the simulated outside worlds (payment providers, chains) share: faults that can be
switched on and off at run time (FaultSwitch: what an adapter that supports them is), their
latency settings, and books kept on disk.

The simulators stand in for systems we cannot reach from here. Their books are *their* world,
not our state: JSON lines that outlive a restart of our services (as a real provider's or
chain's records would) and that tests read to prove nothing happened twice. No grpc.
"""
from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass
from pathlib import Path

from services.config_files import ConfigError
from services.domain.errors import FailedPrecondition, InvalidArgument
from services.runtime.wire import seconds_of

DEFAULT_FLAP_PERIOD = 5.0      # seconds, when flapping is on and no period is given (the contracts' default)
MAX_EXTRA_LATENCY = 60.0       # seconds


@dataclass
class Faults:
    error_rate: float = 0.0          # share of calls that fail (before doing anything)
    timeout_rate: float = 0.0        # share of calls that hang (until the caller's timeout)
    extra_latency: float = 0.0       # seconds added to every call
    flap_period: float = 0.0         # > 0: alternately up and down for this many seconds each

    def down_now(self, clock: float) -> bool:
        return self.flap_period > 0 and int(clock / self.flap_period) % 2 == 1


class FaultSwitch(abc.ABC):
    """An adapter whose faults can be switched on and off at run time (the simulators are; a
    real provider or chain is not). Assigning `faults` switches them."""

    faults: Faults


def faults_of(adapter) -> Faults | None:
    """The faults switched on at `adapter` now; None when it does not support faults."""
    return adapter.faults if isinstance(adapter, FaultSwitch) else None


def fault_switch(adapter, resource: str) -> FaultSwitch:
    """`adapter` as a FaultSwitch; FAILED_PRECONDITION naming `resource` ("chains/x") when it
    does not support faults."""
    if not isinstance(adapter, FaultSwitch):
        raise FailedPrecondition(f"{resource} does not support faults: they can be switched on simulators only, "
                                 f"and {resource} is served by {type(adapter).__name__}",
                                 reason="FAULTS_NOT_SUPPORTED")
    return adapter


def latency_settings(settings: dict, latency: float, jitter: float) -> tuple[float, float]:
    """(mean, jitter) seconds per call of a simulator, taken out of its catalogue settings
    `latency_seconds` and `latency_jitter_seconds` (these defaults when absent); ConfigError
    naming the setting."""
    values = settings.pop("latency_seconds", latency), settings.pop("latency_jitter_seconds", jitter)
    for key, value in zip(("latency_seconds", "latency_jitter_seconds"), values, strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{key}: must be a number of seconds, at least 0, got {value!r}")
    return float(values[0]), float(values[1])


def fault_settings(message) -> tuple[float, float, float, float]:
    """(error rate, timeout rate, extra latency, flap period) of a ProviderFaults or ChainFaults
    message (the same fields in both contracts), each checked; INVALID_ARGUMENT names the field."""
    for field, value in (("faults.error_rate_percent", message.error_rate_percent),
                         ("faults.timeout_rate_percent", message.timeout_rate_percent)):
        if not 0 <= value <= 100:
            raise InvalidArgument.field(field, f"must be between 0 and 100, got {value}")
    latency = seconds_of(message.extra_latency)
    if not 0 <= latency <= MAX_EXTRA_LATENCY:
        raise InvalidArgument.field("faults.extra_latency",
                                    f"must be between 0 and {MAX_EXTRA_LATENCY:g} seconds, got {latency:g}")
    period = seconds_of(message.flap_period)
    if period < 0:
        raise InvalidArgument.field("faults.flap_period", f"must not be negative, got {period:g} seconds")
    if not message.flapping and period:
        raise InvalidArgument.field("faults.flap_period", "is only meaningful with flapping on")
    if message.flapping:
        period = period or DEFAULT_FLAP_PERIOD
    return message.error_rate_percent / 100, message.timeout_rate_percent / 100, latency, period


class Books:
    """A simulated world's records: one JSON object per line, durable once written."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as books:       # it happened once it is on disk
            books.write(json.dumps(record) + "\n")
            books.flush()
            os.fsync(books.fileno())


def keep_books(worlds: list, books_dir: Path | None) -> list:
    """Give each simulator (with a `name` and an `open_books(Books)`) its books in `books_dir`."""
    if books_dir is not None:
        for world in worlds:
            world.open_books(Books(books_dir / f"{world.name}.jsonl"))
    return worlds

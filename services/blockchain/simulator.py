"""Simulated blockchains: each with its own block time, confirmation depth, fee and latency, and
faults that can be switched on and off at run time (errors, timeouts, slowness, flapping, and
transfer steps that always revert). They stand in for the real chains we cannot reach here.

Blocks: the height is the time since a fixed genesis (2020-01-01 UTC) over the block time, so
every process agrees on it and it survives restarts. A transaction is included in the next
block; its confirmations are latest - block + 1.

Books: every transaction the chain ever accepted, by (operation, key), so tests can prove that
nothing was locked, relayed or minted twice, and nothing left locked. With a books file (JSON
lines) the books are the chain's own world: they outlive our service, like a real chain, and a
restarted blockchain service still cannot make it lock one key twice.

A call picked for a timeout hangs until the caller gives up, but a transaction it was sending
is broadcast first: the answer is lost, not the transaction (the hard case for the caller).
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Callable, TypeVar

from services import simulation
from services.config_files import ConfigError
from services.domain.money import Money
from services.runtime.catalog import refuse_unknown

from .adapters import (
    CONFIRMING,
    FAILED,
    FINALIZED,
    NOT_FOUND,
    PENDING,
    ChainAdapter,
    ChainRejected,
    ChainTimeout,
    ChainTx,
    ChainUnavailable,
    TxStatus,
)
from .transfers import BRIDGE, SOURCE, TARGET

T = TypeVar("T")
GENESIS_EPOCH = 1_577_836_800.0          # 2020-01-01T00:00:00Z
LOCK, RELAY, MINT, UNLOCK, REVERT_RELAY = "lock", "relay", "mint", "unlock", "revert_relay"
_STEP_OF = {LOCK: SOURCE, RELAY: BRIDGE, MINT: TARGET}
_UNDONE_BY = {UNLOCK: LOCK, REVERT_RELAY: RELAY}


@dataclass
class Faults(simulation.Faults):
    failing_steps: frozenset[str] = frozenset()   # SOURCE, BRIDGE, TARGET: always reverted here

    @property
    def any(self) -> bool:
        return bool(self.error_rate or self.timeout_rate or self.extra_latency or self.flap_period or self.failing_steps)


@dataclass(frozen=True)
class Entry:
    """One transaction in the books."""

    op: str                   # lock, relay, mint, unlock, revert_relay
    key: str
    tx: ChainTx
    amount: Money
    detail: str               # relay: the target chain; mint: the destination address
    reverted: bool
    fee: Decimal              # in the native currency


@dataclass
class SimulatedChain(ChainAdapter, simulation.FaultSwitch):
    name: str
    display_name: str
    native_currency: str
    required_confirmations: int
    block_time: float
    fee: Decimal                               # per transaction, in the native currency
    latency: float = 0.03                      # mean seconds per call
    latency_jitter: float = 0.01
    faults: Faults = field(default_factory=Faults)
    rng: random.Random = field(default_factory=random.Random)
    books: simulation.Books | None = None  # where the books are kept (JSON lines), if anywhere
    skew: float = 0.0                          # seconds added to the clock
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)   # (op, key) -> entry: the books
    by_hash: dict[str, Entry] = field(default_factory=dict)
    voided: set[tuple[str, str]] = field(default_factory=set)   # (op, key) refused for good
    journal: list[tuple[str, str]] = field(default_factory=list)   # every (op, key) done, in order

    @classmethod
    def from_settings(cls, name: str, settings: dict) -> "SimulatedChain":
        settings = dict(settings)
        display_name = str(settings.pop("display_name", name))
        native = settings.pop("native_currency", None)
        if not isinstance(native, str) or not native.isalnum() or not native.isupper():
            raise ConfigError(f"native_currency: must be the code of the chain's native asset, e.g. ETH, got {native!r}")
        confirmations = settings.pop("required_confirmations", None)
        if isinstance(confirmations, bool) or not isinstance(confirmations, int) or confirmations < 1:
            raise ConfigError(f"required_confirmations: must be a whole number, at least 1, got {confirmations!r}")
        block_time = settings.pop("block_time_seconds", None)
        if isinstance(block_time, bool) or not isinstance(block_time, (int, float)) or not block_time > 0:
            raise ConfigError(f"block_time_seconds: must be a number of seconds, more than 0, got {block_time!r}")
        text = settings.pop("fee", None)
        try:
            fee = Decimal(text) if isinstance(text, str) else None
        except ArithmeticError:
            fee = None
        if fee is None or not fee.is_finite() or fee < 0:
            raise ConfigError("fee: must be an exact decimal string, at least 0, in the native currency "
                              f"(e.g. \"0.00042\"), got {text!r}")
        latency, jitter = simulation.latency_settings(settings, 0.03, 0.01)
        refuse_unknown(settings, "the simulated chain", ["display_name", "native_currency", "required_confirmations",
                                                        "block_time_seconds", "fee", "latency_seconds",
                                                        "latency_jitter_seconds"])
        return cls(name, display_name, native, confirmations, float(block_time), fee, latency=latency,
                   latency_jitter=jitter)

    def open_books(self, books: simulation.Books) -> None:
        """Keep the books there, and take back what they say happened."""
        self.books = books
        for record in books.read():
            if record["op"] == "void":
                self.voided.add((record["voids"], record["key"]))
                continue
            tx = ChainTx(self.name, record["hash"], record["block"])
            self._remember(Entry(record["op"], record["key"], tx, Money.parse(record["currency"], record["amount"]),
                                 record["detail"], record["reverted"], Decimal(record["fee"])))

    # --- the world ------------------------------------------------------------------------------

    def height(self) -> int:
        """The latest block now."""
        return int((time.time() + self.skew - GENESIS_EPOCH) / self.block_time)

    def _write(self, record: dict) -> None:
        if self.books is not None:
            self.books.write(record)

    def _remember(self, entry: Entry) -> None:
        self.entries[(entry.op, entry.key)] = entry
        self.by_hash[entry.tx.hash] = entry
        self.journal.append((entry.op, entry.key))

    def _new(self, op: str, key: str, amount: Money, detail: str, reverted: bool) -> Entry:
        digest = hashlib.sha256(f"{self.name}:{op}:{key}".encode()).hexdigest()
        entry = Entry(op, key, ChainTx(self.name, f"0x{digest}", self.height() + 1), amount, detail, reverted, self.fee)
        self._write({"op": op, "key": key, "hash": entry.tx.hash, "block": entry.tx.block, "currency": amount.currency,
                     "amount": amount.text, "detail": detail, "reverted": reverted, "fee": f"{self.fee:f}"})
        self._remember(entry)
        return entry

    def _void(self, op: str, key: str) -> None:
        if (op, key) not in self.voided:
            self._write({"op": "void", "voids": op, "key": key})
            self.voided.add((op, key))

    def _send(self, op: str, key: str, amount: Money, detail: str) -> ChainTx:
        """A step's transaction: the first one under the key, or the one there already."""
        existing = self.entries.get((op, key))
        if existing is None:
            if (op, key) in self.voided:
                raise ChainRejected(f"chains/{self.name} refused {op} {key}: the key was cancelled by a compensation")
            existing = self._new(op, key, amount, detail, _STEP_OF[op] in self.faults.failing_steps)
        if existing.reverted:
            raise ChainRejected(f"chains/{self.name} reverted {op} {key} in transaction {existing.tx.hash} "
                                f"(block {existing.tx.block})", existing.tx)
        return existing.tx

    def _undo(self, op: str, key: str) -> ChainTx | None:
        """A compensation's transaction, None (and the key void) when there is nothing to undo."""
        done = self.entries.get((op, key))
        if done is not None:
            return done.tx
        original = self.entries.get((_UNDONE_BY[op], key))
        if original is None:
            self._void(_UNDONE_BY[op], key)
            return None
        if original.reverted:
            return None
        return self._new(op, key, original.amount, original.detail, False).tx

    async def _call(self, effect: Callable[[], T] | None = None) -> T | None:
        """Behave like a remote call: latency, and the faults switched on now."""
        if self.faults.down_now(time.time()):
            raise ChainUnavailable(f"chains/{self.name} is down (flapping)")
        if self.rng.random() < self.faults.timeout_rate:
            if effect is not None:
                try:
                    effect()                    # broadcast; the answer is what gets lost
                except ChainRejected:
                    pass
            await asyncio.sleep(3600)           # hangs: the caller's timeout ends it
            raise ChainTimeout(f"chains/{self.name} did not answer")
        await asyncio.sleep(max(0.0, self.rng.gauss(self.latency, self.latency_jitter)) + self.faults.extra_latency)
        if self.rng.random() < self.faults.error_rate:
            raise ChainUnavailable(f"chains/{self.name} answered with an error")
        return effect() if effect is not None else None

    # --- ChainAdapter ---------------------------------------------------------------------------

    async def latest_block(self) -> int:
        await self._call()
        return self.height()

    async def lock(self, amount: Money, key: str) -> ChainTx:
        return await self._call(lambda: self._send(LOCK, key, amount, ""))

    async def relay(self, amount: Money, key: str, target: str) -> ChainTx:
        return await self._call(lambda: self._send(RELAY, key, amount, target))

    async def mint(self, amount: Money, key: str, destination_address: str) -> ChainTx:
        return await self._call(lambda: self._send(MINT, key, amount, destination_address))

    async def unlock(self, key: str) -> ChainTx | None:
        return await self._call(lambda: self._undo(UNLOCK, key))

    async def revert_relay(self, key: str) -> ChainTx | None:
        return await self._call(lambda: self._undo(REVERT_RELAY, key))

    async def status(self, tx_hash: str) -> TxStatus:
        await self._call()
        entry = self.by_hash.get(tx_hash)
        if entry is None:
            return TxStatus(False, NOT_FOUND, 0, 0)
        latest = self.height()
        if entry.tx.block > latest:
            return TxStatus(True, PENDING, 0, 0)
        confirmations = latest - entry.tx.block + 1
        status = (FAILED if entry.reverted else FINALIZED if confirmations >= self.required_confirmations
                  else CONFIRMING)
        return TxStatus(True, status, entry.tx.block, confirmations)


def default_chains(seed: int | None = None, books_dir: Path | None = None) -> list[SimulatedChain]:
    """The simulated chains of the repository's chains.yaml (books in `books_dir`)."""
    from .catalog import DEFAULT_CHAINS_FILE, load_chains
    return load_chains(DEFAULT_CHAINS_FILE, books_dir, seed)

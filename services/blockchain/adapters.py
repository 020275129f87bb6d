"""Blockchains behind one interface (the port the saga and the registry call). A real chain is one
class: subclass ChainAdapter, implement its seven methods, and list it in chains.yaml (see
docs/chains.md). No grpc here.

A cross-chain transfer (transfers.py) is three steps, each one call here, each idempotent by its key:

    SOURCE  lock(amount, key)                         on the source chain (lock or burn)
    BRIDGE  relay(amount, key, target)                by the bridge contract on the source chain
    TARGET  mint(amount, key, destination_address)    on the target chain (mint or release)

and two compensations, also idempotent by key: revert_relay(key) undoes BRIDGE, unlock(key)
refunds SOURCE. The completion on the target chain is the pivot: once it may have happened it
is never compensated, only asked again.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

from services.domain.money import Money
from services.runtime.catalog import Configurable

from .transfers import ChainTx

# What a chain says about one transaction hash (TxStatus.status).
NOT_FOUND, PENDING, CONFIRMING, FINALIZED, FAILED = "NOT_FOUND", "PENDING", "CONFIRMING", "FINALIZED", "FAILED"


@dataclass(frozen=True)
class TxStatus:
    found: bool
    status: str         # NOT_FOUND, PENDING (not in a block yet), CONFIRMING, FINALIZED, FAILED (reverted)
    block_number: int   # 0 when not in a block
    confirmations: int  # latest block - block_number + 1 once included, else 0


class ChainError(Exception):
    """The call failed and did not take effect (an adapter that cannot tell must let the call
    time out, or raise ChainTimeout, instead: the saga treats that as "may have happened")."""


class ChainUnavailable(ChainError):
    """The chain (its node, its RPC endpoint) could not take the call now; it may work later.
    Counts against the chain's health and circuit breaker."""


class ChainTimeout(ChainError):
    """The chain did not answer in time: the call may or may not have taken effect."""


class ChainRejected(ChainError):
    """The chain answered: the operation under this key was refused or reverted, for good. Nothing
    was done under the key and nothing will be. `transaction` is the reverted transaction, if any.
    The chain works fine: not counted against its health."""

    def __init__(self, message: str, transaction: ChainTx | None = None):
        super().__init__(message)
        self.transaction = transaction


class ChainAdapter(Configurable, abc.ABC):
    """One blockchain. Implementations must be safe to call concurrently, and every mutating
    method must be idempotent by key: the same key returns the first transaction and changes
    nothing more (send it as the contract call's nonce/salt, or look it up before sending).
    Built from its chains.yaml entry by `from_settings` (by default: the constructor, keyword
    arguments)."""

    name: str                       # lower case, used in resource names: "chains/{name}"
    display_name: str
    native_currency: str            # code of the native asset, e.g. "ETH"
    required_confirmations: int     # confirmations before a transaction counts as final
    block_time: float               # average seconds between blocks

    @abc.abstractmethod
    async def latest_block(self) -> int:
        """Height of the latest block; also the health probe. ChainError when the chain cannot say."""

    @abc.abstractmethod
    async def lock(self, amount: Money, key: str) -> ChainTx:
        """SOURCE step: lock (or burn) `amount` on this chain for the transfer."""

    @abc.abstractmethod
    async def relay(self, amount: Money, key: str, target: str) -> ChainTx:
        """BRIDGE step: the bridge contract on this (source) chain emits the message that lets
        `target` complete the transfer."""

    @abc.abstractmethod
    async def mint(self, amount: Money, key: str, destination_address: str) -> ChainTx:
        """TARGET step: mint (or release) `amount` to `destination_address` on this chain."""

    @abc.abstractmethod
    async def unlock(self, key: str) -> ChainTx | None:
        """Compensation of SOURCE: refund the lock made under `key`. None when nothing was locked
        under the key; the key is then void (a later lock with it is rejected), so a lock still
        in flight cannot land after its refund was decided."""

    @abc.abstractmethod
    async def revert_relay(self, key: str) -> ChainTx | None:
        """Compensation of BRIDGE: cancel the bridge message sent under `key`, so it can never be
        used to mint. None (and the key void) when nothing was relayed under it."""

    @abc.abstractmethod
    async def status(self, tx_hash: str) -> TxStatus:
        """What this chain knows about `tx_hash` (found=False when it does not know it)."""

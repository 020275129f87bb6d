"""The chain registry over hand-written fake chains: the status of a hash consolidated over
every chain (a chain that fails or hangs is reported beside the others, never an error), and
the health a call's outcome leaves."""
from __future__ import annotations

import asyncio

import pytest

from services.blockchain.adapters import FINALIZED, NOT_FOUND, ChainAdapter, ChainUnavailable, TxStatus
from services.blockchain.registry import DEGRADED, HEALTHY, UNAVAILABLE, UNCHECKED, UNKNOWN, ChainRegistry
from services.domain.errors import InvalidArgument, NotFound


class FakeChain(ChainAdapter):
    """Knows the hashes in `known`; `behaviour` "ok", "down" (ChainUnavailable) or "hang"."""

    display_name, native_currency, block_time = "Fake", "ETH", 1.0

    def __init__(self, name: str, known: dict[str, TxStatus] | None = None, behaviour: str = "ok",
                 required_confirmations: int = 3):
        self.name, self.known, self.behaviour = name, known or {}, behaviour
        self.required_confirmations = required_confirmations

    async def _answer(self, value):
        if self.behaviour == "down":
            raise ChainUnavailable(f"{self.name} node refused the connection")
        if self.behaviour == "hang":
            await asyncio.sleep(60)
        return value

    async def status(self, tx_hash: str) -> TxStatus:
        return await self._answer(self.known.get(tx_hash, TxStatus(False, NOT_FOUND, 0, 0)))

    async def latest_block(self) -> int:
        return await self._answer(100)

    async def lock(self, amount, key):
        raise AssertionError("not called")

    relay = mint = unlock = revert_relay = lock


def registry(*chains: FakeChain) -> ChainRegistry:
    return ChainRegistry(chains, call_timeout=0.05, breaker_fail_max=2, breaker_reset_seconds=60)


async def test_a_hash_found_on_one_chain_is_reported_with_its_finality_and_the_others_answers():
    final = TxStatus(True, FINALIZED, 90, 11)
    report = await registry(FakeChain("ethereum"), FakeChain("polygon", {"0xabc": final})).transaction_status("0xabc")
    assert (report.status, report.chain, report.confirmations, report.required_confirmations) == (FINALIZED, "polygon", 11, 3)
    assert report.finalized and not report.partial
    assert [(a.chain, a.answered, a.status.found) for a in report.answers] == [("ethereum", True, False),
                                                                               ("polygon", True, True)]


async def test_a_chain_down_or_hanging_makes_the_answer_partial_not_an_error():
    chains = registry(FakeChain("ethereum", behaviour="hang"), FakeChain("polygon", behaviour="down"),
                      FakeChain("solana"))
    report = await chains.transaction_status("0xabc")
    assert (report.status, report.partial) == (NOT_FOUND, True)
    errors = {a.chain: a.error for a in report.answers if not a.answered}
    assert errors == {"ethereum": "chains/ethereum gave no answer within 0.05s",
                      "polygon": "polygon node refused the connection"}
    assert chains.health["polygon"].consecutive_failures == 1 and chains.health["solana"].consecutive_failures == 0


async def test_no_chain_answering_is_unknown_and_an_open_breaker_is_reported_as_such():
    chains = registry(FakeChain("ethereum", behaviour="down"))
    for _ in range(2):                                    # the breaker opens after two failures
        await chains.transaction_status("0xabc")
    report = await chains.transaction_status("0xabc")
    assert (report.status, report.partial) == (UNKNOWN, True)
    assert "chain ethereum" in report.answers[0].error
    await chains.check("ethereum")
    assert chains.state("ethereum") == UNAVAILABLE


async def test_health_follows_the_checks():
    chains = registry(FakeChain("ethereum"), FakeChain("polygon"))
    assert chains.state("ethereum") == UNCHECKED
    await chains.check_unchecked()
    assert (chains.state("ethereum"), chains.health["ethereum"].latest_block) == (HEALTHY, 100)
    chains.slow_seconds = -1                              # every answer now counts as slow
    await chains.check("polygon")
    assert chains.state("polygon") == DEGRADED


@pytest.mark.parametrize("tx_hash, message", [("", "transaction_hash: is required"),
                                              ("0x" + "a" * 200, "is 202 characters long; at most 128")])
async def test_a_bad_hash_is_a_clear_invalid_argument(tx_hash, message):
    with pytest.raises(InvalidArgument, match=message):
        await registry(FakeChain("ethereum")).transaction_status(tx_hash)


async def test_an_unknown_chain_is_not_found_naming_the_known_ones():
    with pytest.raises(NotFound, match=r"chains/nope does not exist \(known: ethereum, polygon\)"):
        await registry(FakeChain("polygon"), FakeChain("ethereum")).transaction_status("0xabc", ["nope"])

"""chains.yaml: the chains the registry gets, built by their adapter classes, exactly today's
three simulated chains by default, and a clear error naming the file, the chain and the setting
for every mistake."""
from __future__ import annotations

from decimal import Decimal

import pytest

from services.blockchain.adapters import NOT_FOUND, ChainAdapter, ChainTx, TxStatus
from services.blockchain.catalog import DEFAULT_CHAINS_FILE, chains_file, load_chains
from services.blockchain.simulator import SimulatedChain, default_chains
from services.config_files import ConfigError

from conftest import catalogue_file
from meshkit import refused_start

SIMULATED = "adapter: services.blockchain.simulator:SimulatedChain"
GOOD = f"{SIMULATED}\n    native_currency: ETH\n    required_confirmations: 12\n    block_time_seconds: 2\n    fee: '0.1'"


class LedgerChain(ChainAdapter):
    """A "real" chain as a user would add one: built from its settings by the default.
    These tests only load it from a catalogue; its money operations are never called."""

    display_name = "Ledger"
    native_currency = "LDG"
    required_confirmations = 3
    block_time = 1.0

    def __init__(self, name: str, rpc_url: str):
        self.name, self.rpc_url = name, rpc_url

    async def latest_block(self) -> int:
        return 7

    async def lock(self, amount, key) -> ChainTx:
        raise NotImplementedError

    async def relay(self, amount, key, target) -> ChainTx:
        raise NotImplementedError

    async def mint(self, amount, key, destination_address) -> ChainTx:
        raise NotImplementedError

    async def unlock(self, key) -> ChainTx | None:
        raise NotImplementedError

    async def revert_relay(self, key) -> ChainTx | None:
        raise NotImplementedError

    async def status(self, tx_hash) -> TxStatus:
        return TxStatus(False, NOT_FOUND, 0, 0)


def write(tmp_path, text: str):
    return catalogue_file(tmp_path, "chains.yaml", text)


def test_the_repository_file_gives_the_three_simulated_chains_with_their_own_numbers():
    chains = load_chains(DEFAULT_CHAINS_FILE)
    assert all(type(c) is SimulatedChain for c in chains)
    assert [(c.name, c.display_name, c.native_currency, c.required_confirmations, c.block_time, c.fee, c.latency,
             c.latency_jitter) for c in chains] == [
        ("ethereum", "Ethereum (simulated)", "ETH", 12, 2.0, Decimal("0.00042"), 0.04, 0.01),
        ("polygon", "Polygon (simulated)", "MATIC", 64, 0.5, Decimal("0.002"), 0.02, 0.01),
        ("solana", "Solana (simulated)", "SOL", 32, 0.4, Decimal("0.000005"), 0.01, 0.005),
    ]
    assert chains_file({}) == DEFAULT_CHAINS_FILE and chains_file({"DIBOAS_CHAINS_FILE": "x.yaml"}).name == "x.yaml"


def test_a_seed_makes_the_chains_reproducible_and_each_chain_its_own():
    first, again = default_chains(seed=3), default_chains(seed=3)
    draws = [c.rng.random() for c in first]
    assert draws == [c.rng.random() for c in again] and len(set(draws)) == 3


def test_a_real_chain_is_one_class_and_one_entry(tmp_path):
    path = write(tmp_path, f"chains:\n  ledger:\n    adapter: {__name__}:LedgerChain\n    rpc_url: https://rpc.example\n")
    [ledger] = load_chains(path)
    assert isinstance(ledger, LedgerChain) and (ledger.name, ledger.rpc_url) == ("ledger", "https://rpc.example")


@pytest.mark.parametrize("entry,message", [
    ("adapter: nowhere.module:Thing", "chains.c.adapter: cannot load 'nowhere.module:Thing'"),
    ("adapter: services.provider.simulator:SimulatedProvider",
     "chains.c.adapter: 'services.provider.simulator:SimulatedProvider' is not a ChainAdapter subclass"),
    ("adapter: no-colon", "chains.c.adapter: 'no-colon' is not like 'package.module:ClassName'"),
    ("display_name: no adapter", "chains.c: needs 'adapter: package.module:ClassName'"),
    (SIMULATED, "chains.c.native_currency: must be the code of the chain's native asset"),
    (GOOD.replace("ETH", "eth"), "chains.c.native_currency: must be the code of the chain's native asset"),
    (GOOD.replace("confirmations: 12", "confirmations: 0"), "chains.c.required_confirmations: must be a whole number"),
    (GOOD.replace("confirmations: 12", "confirmations: 1.5"), "chains.c.required_confirmations: must be a whole number"),
    (GOOD.replace("block_time_seconds: 2", "block_time_seconds: 0"), "chains.c.block_time_seconds: must be a number"),
    (GOOD.replace("'0.1'", "0.1"), "chains.c.fee: must be an exact decimal string"),
    (GOOD.replace("'0.1'", "'lots'"), "chains.c.fee: must be an exact decimal string"),
    (GOOD.replace("'0.1'", "'-1'"), "chains.c.fee: must be an exact decimal string"),
    (f"{GOOD}\n    latency_seconds: -1", "chains.c.latency_seconds: must be a number of seconds, at least 0"),
    (f"{GOOD}\n    latency_jitter_seconds: soon", "chains.c.latency_jitter_seconds: must be a number of seconds"),
    (f"{GOOD}\n    colour: red", "chains.c.colour: is not a setting of the simulated chain"),
    (f"adapter: {__name__}:LedgerChain", "chains.c.settings:"),
])
def test_every_mistake_names_the_file_the_chain_and_the_setting(tmp_path, entry, message):
    path = write(tmp_path, f"chains:\n  c:\n    {entry}\n")
    with pytest.raises(ConfigError) as caught:
        load_chains(path)
    assert str(caught.value).startswith(f"chains.yaml: {message}"), str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["chains: {}\n", "chains: [ethereum]\n", "- 1\n", ""])
def test_a_file_without_chains_says_what_it_needs(tmp_path, text):
    with pytest.raises(ConfigError, match="'chains' must map each chain's name to its settings"):
        load_chains(write(tmp_path, text))


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="chains file .* does not exist .set DIBOAS_CHAINS_FILE"):
        load_chains(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="chains file .* cannot be read"):
        load_chains(write(tmp_path, "chains: [unclosed\n"))


def test_the_service_refuses_to_start_on_a_bad_file_with_one_line(pki, tmp_path):
    bad = write(tmp_path, f"chains:\n  ethereum:\n    {GOOD.replace('confirmations: 12', 'confirmations: many')}\n")
    stderr = refused_start(pki, tmp_path / "state", "blockchain", DIBOAS_CHAINS_FILE=str(bad))
    assert ("blockchain: configuration error: chains.yaml: chains.ethereum.required_confirmations: "
            "must be a whole number, at least 1, got 'many'\n") in stderr

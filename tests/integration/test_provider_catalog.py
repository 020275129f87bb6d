"""providers.yaml: the providers the registry gets, built by their adapter classes, and a clear
error naming the file, the provider and the setting for every mistake."""
from __future__ import annotations

from decimal import Decimal

import pytest

from services.config_files import ConfigError
from services.provider.adapters import Limits, ProviderAdapter, Quote, QuoteRequest, Receipt
from services.provider.catalog import DEFAULT_PROVIDERS_FILE, load_providers
from services.provider.simulator import SimulatedProvider

from conftest import catalogue_file
from meshkit import refused_start


class AcmePay(ProviderAdapter):
    """A "real" provider as a user would add one: built from its settings by the default.
    These tests only load it from a catalogue; its money operations are never called."""

    display_name = "Acme Pay"

    def __init__(self, name: str, api_url: str, currencies: list[str]):
        self.name, self.api_url, self.limits = name, api_url, Limits(frozenset(currencies))

    async def quote(self, request: QuoteRequest) -> Quote:
        raise NotImplementedError

    async def execute(self, request: QuoteRequest, idempotency_key: str) -> Receipt:
        raise NotImplementedError

    async def check(self) -> None:
        return None


def write(tmp_path, text: str):
    return catalogue_file(tmp_path, "providers.yaml", text)


def test_the_repository_file_lists_three_simulated_providers_with_their_own_terms():
    providers = load_providers(DEFAULT_PROVIDERS_FILE)
    assert [p.name for p in providers] == ["alpha-pay", "beta-ramp", "gamma-exchange"]
    assert all(isinstance(p, SimulatedProvider) for p in providers)
    alpha = providers[0]
    assert alpha.limits.minimum == {"USD": Decimal("10")} and alpha.fees.percent == Decimal("0.0149")
    assert len({(p.fees.percent, p.fees.spread, p.latency) for p in providers}) == 3


def test_a_real_provider_is_one_class_and_one_entry(tmp_path):
    path = write(tmp_path, f"""
providers:
  acme:
    adapter: {__name__}:AcmePay
    api_url: https://api.acme.example
    currencies: [USD]
""")
    [acme] = load_providers(path)
    assert isinstance(acme, AcmePay) and acme.name == "acme" and acme.api_url == "https://api.acme.example"


@pytest.mark.parametrize("entry,message", [
    ("adapter: nowhere.module:Thing", "providers.p.adapter: cannot load 'nowhere.module:Thing'"),
    ("adapter: decimal:Decimal", "providers.p.adapter: 'decimal:Decimal' is not a ProviderAdapter subclass"),
    ("display_name: no adapter", "providers.p: needs 'adapter: package.module:ClassName'"),
    ("adapter: services.provider.simulator:SimulatedProvider\n    fees: {percent: '0.01'}",
     "providers.p.currencies: must list the currency codes"),
    ("adapter: services.provider.simulator:SimulatedProvider\n    currencies: [USD]\n    fees: {percent: lots}",
     "providers.p.fees: percent and spread must be exact decimals"),
    ("adapter: services.provider.simulator:SimulatedProvider\n    currencies: [USD]\n    fees: {}\n    colour: red",
     "providers.p.colour: is not a setting of the simulated provider"),
    ("adapter: services.provider.simulator:SimulatedProvider\n    currencies: [USD]\n    directions: [SIDEWAYS]",
     "providers.p.directions: must list PAY_IN and/or PAY_OUT"),
    (f"adapter: {__name__}:AcmePay\n    currencies: [USD]", "providers.p.settings:"),
])
def test_every_mistake_names_the_file_the_provider_and_the_setting(tmp_path, entry, message):
    path = write(tmp_path, f"providers:\n  p:\n    {entry}\n")
    with pytest.raises(ConfigError) as caught:
        load_providers(path)
    assert str(caught.value).startswith(f"providers.yaml: {message}"), str(caught.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="set DIBOAS_PROVIDERS_FILE"):
        load_providers(tmp_path / "nope.yaml")


def test_the_service_refuses_to_start_on_a_bad_file_with_one_line(pki, tmp_path):
    bad = write(tmp_path, "providers: {}\n")
    stderr = refused_start(pki, tmp_path / "state", "provider", DIBOAS_PROVIDERS_FILE=str(bad))
    assert "'providers' must map each provider's name to its settings" in stderr

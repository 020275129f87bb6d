"""The providers file (providers.yaml): which providers the registry has, each built by its
adapter class from its settings (services/runtime/catalog.py reads it). Every mistake stops
the service with one line naming the file, the provider and the setting."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from services.config_files import REPO_ROOT
from services.runtime.catalog import load_catalogue

from .adapters import ProviderAdapter

DEFAULT_PROVIDERS_FILE = REPO_ROOT / "providers.yaml"


def providers_file(env: Mapping[str, str]) -> Path:
    return Path(env.get("DIBOAS_PROVIDERS_FILE") or DEFAULT_PROVIDERS_FILE)


def load_providers(path: Path, books_dir: Path | None = None, seed: int | None = None) -> list[ProviderAdapter]:
    """The adapters the file lists, in its order; simulators keep their books in `books_dir`."""
    return load_catalogue(path, "providers", ProviderAdapter, "DIBOAS_PROVIDERS_FILE", books_dir, seed)

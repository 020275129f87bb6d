"""The chains file (chains.yaml): which chains the registry has, each built by its adapter class
from its settings (services/runtime/catalog.py reads it). Every mistake stops the service with
one line naming the file, the chain and the setting."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from services.config_files import REPO_ROOT
from services.runtime.catalog import load_catalogue

from .adapters import ChainAdapter

DEFAULT_CHAINS_FILE = REPO_ROOT / "chains.yaml"


def chains_file(env: Mapping[str, str]) -> Path:
    return Path(env.get("DIBOAS_CHAINS_FILE") or DEFAULT_CHAINS_FILE)


def load_chains(path: Path, books_dir: Path | None = None, seed: int | None = None) -> list[ChainAdapter]:
    """The adapters the file lists, in its order; simulated chains keep their books in `books_dir`."""
    return load_catalogue(path, "chains", ChainAdapter, "DIBOAS_CHAINS_FILE", books_dir, seed)

"""The providers file (providers.yaml): which providers the registry has, each built by its
adapter class from its settings. Every mistake stops the service with one line naming the
file, the provider and the setting."""
from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Mapping

from services.config_files import REPO_ROOT, ConfigError, read_yaml_file
from services.simulation import keep_books

from .adapters import ProviderAdapter

DEFAULT_PROVIDERS_FILE = REPO_ROOT / "providers.yaml"


def providers_file(env: Mapping[str, str]) -> Path:
    return Path(env.get("DIBOAS_PROVIDERS_FILE") or DEFAULT_PROVIDERS_FILE)


def _adapter_class(where: str, spec) -> type[ProviderAdapter]:
    module_name, _, class_name = str(spec).partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"{where}.adapter: '{spec}' is not like 'package.module:ClassName'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}.adapter: cannot load '{spec}': {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, ProviderAdapter)):
        raise ConfigError(f"{where}.adapter: '{spec}' is not a ProviderAdapter subclass")
    return cls


def load_providers(path: Path, books_dir: Path | None = None, seed: int | None = None) -> list[ProviderAdapter]:
    """The adapters the file lists, in its order; simulators keep their books in `books_dir`."""
    raw = read_yaml_file(path, "providers file", "DIBOAS_PROVIDERS_FILE")
    entries = raw.get("providers") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: 'providers' must map each provider's name to its settings")
    rng = random.Random(seed)
    adapters = []
    for name, settings in entries.items():
        where = f"{path.name}: providers.{name}"
        if not isinstance(settings, dict) or "adapter" not in settings:
            raise ConfigError(f"{where}: needs 'adapter: package.module:ClassName' and the adapter's settings")
        settings = dict(settings)
        cls = _adapter_class(where, settings.pop("adapter"))
        try:
            adapter = cls.from_settings(str(name), settings)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
        if hasattr(adapter, "rng"):                      # simulators: reproducible under a seed
            adapter.rng.seed(rng.random())
        adapters.append(adapter)
    keep_books([a for a in adapters if hasattr(a, "open_books")], books_dir)
    return adapters

"""Catalogue files (providers.yaml, chains.yaml): under one top-level key, one entry per name,
each built by its adapter class from the settings beside it. Every mistake is one ConfigError
naming the file, the entry and the setting, which stops the service (exit 2)."""
from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import TypeVar

from services.config_files import ConfigError, read_yaml_file
from services.simulation import keep_books


class Configurable:
    """What a catalogue can build: an adapter class with `from_settings`."""

    @classmethod
    def from_settings(cls, name: str, settings: dict):
        """The adapter of the catalogue's entry `name` (its settings without `adapter`). By
        default: the constructor with the name and the settings as keyword arguments. Raise
        ConfigError("setting: why") for a bad setting."""
        try:
            return cls(name=name, **settings)
        except TypeError as exc:
            raise ConfigError(f"settings: {exc}") from None


A = TypeVar("A", bound=Configurable)


def refuse_unknown(settings: dict, what: str, known: list[str]) -> None:
    """ConfigError naming the first of `settings` left over (not one of `what`'s `known` ones)."""
    if settings:
        raise ConfigError(f"{sorted(settings)[0]}: is not a setting of {what} (known: {', '.join(known)})")


def _adapter_class(where: str, spec, base: type[A]) -> type[A]:
    module_name, _, class_name = str(spec).partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"{where}.adapter: '{spec}' is not like 'package.module:ClassName'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}.adapter: cannot load '{spec}': {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{where}.adapter: '{spec}' is not a {base.__name__} subclass")
    return cls


def load_catalogue(path: Path, section: str, base: type[A], env_key: str, books_dir: Path | None = None,
                   seed: int | None = None) -> list[A]:
    """The adapters file `path` lists under `section` (each a subclass of `base`), in its order;
    simulators (with an `rng`) are reproducible under `seed` and keep their books in `books_dir`."""
    what = f"{section} file"
    raw = read_yaml_file(path, what, env_key)
    entries = raw.get(section) if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: '{section}' must map each {section[:-1]}'s name to its settings")
    rng = random.Random(seed)
    adapters = []
    for name, settings in entries.items():
        where = f"{path.name}: {section}.{name}"
        if not isinstance(settings, dict) or "adapter" not in settings:
            raise ConfigError(f"{where}: needs 'adapter: package.module:ClassName' and the adapter's settings")
        settings = dict(settings)
        cls = _adapter_class(where, settings.pop("adapter"), base)
        try:
            adapter = cls.from_settings(str(name), settings)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
        if hasattr(adapter, "rng"):                      # simulators: reproducible under a seed
            adapter.rng.seed(rng.random())
        adapters.append(adapter)
    keep_books([a for a in adapters if hasattr(a, "open_books")], books_dir)
    return adapters

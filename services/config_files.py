"""Configuration files, for the domain and the runtime alike: where the repository's files
are (REPO_ROOT), how a YAML catalogue is read (read_yaml_file), and the error a mistake in any
configuration raises (ConfigError). Pure Python: it imports neither services.runtime nor
grpc, protobuf or SQL, so the domain's catalogues (currencies.yaml) can use it too.
"""
from __future__ import annotations

from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(Exception):
    """The topology, a catalogue or an override is wrong; the message says where and how."""


def read_yaml_file(path: Path, what: str, env_key: str):
    """The content of a YAML catalogue file (`what`: "providers file"...); ConfigError saying
    which file and why it cannot be read, and which variable names another one."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist (set {env_key})") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None

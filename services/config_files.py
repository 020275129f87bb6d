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


def duplicate_key(node, path: str = "") -> str | None:
    """'where: appears twice (lines a and b)' for the first key repeated in one mapping of the
    composed YAML `node` (YAML itself keeps the last silently), or None."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            where = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in seen:
                return f"{where}: appears twice (lines {seen[key]} and {line})"
            seen[key] = line
            if found := duplicate_key(value_node, where):
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            if found := duplicate_key(item, f"{path}[{index}]"):
                return found
    return None


def load_yaml(text: str, path: Path):
    """The content of the YAML `text` of the file `path`; a key repeated in one mapping (which
    YAML would let the last one win, silently) is a ConfigError naming the file and the key."""
    if repeated := duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader)):
        raise ConfigError(f"{path.name}: {repeated}")
    return yaml.safe_load(text)


def read_yaml_file(path: Path, what: str, env_key: str):
    """The content of a YAML catalogue file (`what`: "providers file"...); ConfigError saying
    which file and why it cannot be read (a key repeated, too), and which variable names another one."""
    try:
        return load_yaml(path.read_text(), path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist (set {env_key})") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None

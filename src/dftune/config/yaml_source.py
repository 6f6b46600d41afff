"""The YAML side of `dftune train CONFIG.yaml`: top-level keys with the `file:line` they came from.

What `yaml.safe_load` lets pass silently is an error here, naming the lines: a key given twice (the last one would
win) and a key with no value (`max_steps:` would leave the default in place).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dftune.errors import DftuneError


@dataclass
class Sourced:
    """A key's value and where it was given: "config.yaml:7" or "command line"."""

    value: Any
    origin: str


def read_yaml(path: Path) -> dict[str, Sourced]:
    """Top-level keys of a YAML mapping, each with `file:line` for error messages."""
    if path.is_dir():
        raise DftuneError(f"config file {path} is a directory; give the YAML file itself")
    if not path.is_file():
        raise DftuneError(f"config file not found: {path} (the first argument, when not a --flag, is a YAML file)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DftuneError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DftuneError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise DftuneError(f"{path}: the config must be a mapping of key: value, got {type(data).__name__}")
    lines = key_lines(path, node)
    return {str(k): Sourced(v, f"{path}:{lines.get(str(k), '?')}") for k, v in data.items() if v is not None}


def key_lines(path: Path, node: yaml.MappingNode) -> dict[str, int]:
    """Each top-level key's line; a key given twice or left without a value is a DftuneError naming its lines."""
    lines: dict[str, int] = {}
    for key, value in node.value:
        name, line = str(key.value), key.start_mark.line + 1
        if name in lines:
            raise DftuneError(f"{path}:{line}: key {name} is given twice (lines {lines[name]} and {line}); "
                              "keep one of them")
        if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null") and value.value == "":
            raise DftuneError(f"{path}:{line}: key {name} has no value; give one (e.g. {name}: ...) or delete "
                              "the line to keep the default")
        lines[name] = line
    return lines

"""docs/config.md lists every configuration key with its real default, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs

from supervisor.config import Config

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def documented() -> dict[str, dict[str, str]]:
    """section -> key -> the default as written."""
    out: dict[str, dict[str, str]] = {}
    section = None
    for line in DOC.read_text().splitlines():
        heading = re.fullmatch(r"## \[(\w+)\]", line)
        if heading:
            section = heading.group(1)
            out[section] = {}
            continue
        row = re.match(r"\| `(\w+)` \| [^|]+ \| `([^`]*)` \|", line)
        if row and section is not None:
            out[section][row.group(1)] = row.group(2)
    return out


def test_every_key_is_documented_with_its_default() -> None:
    expected = {
        section.name: {
            field.name: toml_literal(field.default)
            for field in attrs.fields(type(section.default.factory()))  # type: ignore[union-attr]
        }
        for section in attrs.fields(Config)
    }
    assert documented() == expected

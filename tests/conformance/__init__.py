"""Conformance against libvirt's bhyve test corpus (``../shared/corpus/libvirt-bhyve``).

CASES.md there is the authority: the tests read its case tables rather than copying
them, so every invocation, flag and capability set comes from one place.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CORPUS


def read_table(title: str, corpus: Path = CORPUS) -> list[dict[str, str]]:
    """The rows of the CASES.md table whose heading starts with *title*, as dicts keyed
    by the table's column names. Empty when the corpus is absent."""
    cases = corpus / "CASES.md"
    if not cases.is_file():
        return []
    lines = cases.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {title}"))
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(cells[0]) <= {"-"}:
            rows.append(dict(zip(header, cells, strict=False)))
    return rows

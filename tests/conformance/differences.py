"""The single table of deliberate differences from libvirt's bhyve test corpus.

Every conformance case matches libvirt byte for byte unless a row here names it. A row
says which program and case differ, why the project chooses otherwise, and what the
project produces instead (``adjust`` turns libvirt's expected text into the project's;
``outcome`` replaces libvirt's pass/fail expectation when the difference is about
failing). The conformance tests assert the project's behaviour for these rows, so a
row cannot hide a regression.

Rows are grouped by program: ``xml2argv`` and ``xml2xml`` (the domain model and the
builder), ``argv2xml`` (the command-line parser; rows are appended below the marker).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import attrs

Program = Literal["xml2argv", "xml2xml", "argv2xml"]


@attrs.frozen
class Difference:
    """One deliberate difference.

    Args:
        program: the libvirt test program whose case differs.
        case: the case name (all invocations of the case, unless *row* is given).
        reason: why the project differs.
        row: the 1-based invocation number in CASES.md, for a case run more than once.
        adjust: libvirt's expected output -> the project's expected output.
        outcome: ``"pass"`` or ``"fail"``: the project's result when it differs from
            libvirt's flag (``None``: the flag's own semantics apply).
    """

    program: Program
    case: str
    reason: str
    row: int | None = None
    adjust: Callable[[str], str] | None = None
    outcome: Literal["pass", "fail"] | None = None


def _keep_bootloader_args(expected: str) -> str:
    return expected.replace(
        "  <os>\n", "  <bootloader_args>-X -Y -Z</bootloader_args>\n  <os>\n", 1
    )


DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        program="xml2xml",
        case="bhyveload-explicitargs",
        reason=(
            "libvirt drops <bootloader_args> when there is no <bootloader>, although those "
            "arguments drive bhyveload; a round trip would change how the guest boots. "
            "The project keeps them."
        ),
        adjust=_keep_bootloader_args,
    ),
    # argv2xml rows go below this line.
)


def find(program: Program, case: str, row: int | None = None) -> Difference | None:
    """The difference for *case* of *program* (at invocation *row*), if there is one."""
    for diff in DIFFERENCES:
        if diff.program == program and diff.case == case and diff.row in (None, row):
            return diff
    return None

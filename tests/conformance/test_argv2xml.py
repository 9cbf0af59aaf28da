"""libvirt's bhyveargv2xmltest (CASES.md §3.3, Table 3) against domain_from_native.

Each row runs with libvirt's mocks (a fixed UUID and MAC). A row passes as libvirt's
flag says: OK: a definition, nothing logged (no warning), the XML; WARN: a definition,
at least one warning, the XML; FAIL: no definition (an error). A row of the differences
table replaces libvirt's expected XML with the project's (``adjust``) and, with an
``outcome``, the flag: "pass" is an OK row, "fail" a FAIL row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from supervisor.domain.xml import format_domain_xml
from supervisor.errors import InvalidArgvError
from supervisor.vmm.native import NativeResult, domain_from_native
from tests.conformance.differences import DIFFERENCES, find

Flag = Literal["OK", "WARN", "FAIL"]

MOCK_UUID = "c7a5fdbd-edaf-9455-926a-d65c16db1809"
MOCK_MAC = "52:54:00:00:00:00"

#: CASES.md Table 3, in order: (row, case, flag).
TABLE_3: tuple[tuple[int, str, Flag], ...] = (
    (1, "base", "OK"),
    (2, "wired", "OK"),
    (3, "oneline", "OK"),
    (4, "name", "OK"),
    (5, "console", "OK"),
    (6, "console2", "FAIL"),
    (7, "console3", "FAIL"),
    (8, "console4", "FAIL"),
    (9, "acpiapic", "OK"),
    (10, "utc", "OK"),
    (11, "vcpus", "OK"),
    (12, "cdrom", "OK"),
    (13, "ahci-hd", "OK"),
    (14, "virtio-blk", "OK"),
    (15, "virtio-net", "OK"),
    (16, "e1000", "OK"),
    (17, "virtio-net2", "WARN"),
    (18, "virtio-net3", "WARN"),
    (19, "virtio-net4", "WARN"),
    (20, "disk-toomany", "WARN"),
    (21, "uuid", "OK"),
    (22, "uuid2", "FAIL"),
    (23, "memsize-large", "OK"),
    (24, "memsize-human", "OK"),
    (25, "memsize-fail", "FAIL"),
    (26, "custom-loader", "OK"),
    (27, "bhyveload-custom", "OK"),
    (28, "bhyveload-vda", "OK"),
    (29, "bhyveload-name-mismatch", "FAIL"),
    (30, "bhyverun-name-mismatch", "FAIL"),
    (31, "bhyveload-mem-mismatch", "FAIL"),
    (32, "bhyverun-mem-mismatch", "FAIL"),
    (33, "bhyveload-mem-mismatch", "FAIL"),
    (34, "bhyveload-memsize-fail", "FAIL"),
    (35, "bhyveload-bootorder", "OK"),
    (36, "extraargs", "FAIL"),
    (37, "vnc", "OK"),
    (38, "vnc-listen", "OK"),
    (39, "vnc-vga-on", "OK"),
    (40, "vnc-vga-off", "OK"),
    (41, "vnc-vga-io", "OK"),
    (42, "vnc-resolution", "OK"),
    (43, "vnc-password", "OK"),
    (44, "virtio-rnd", "OK"),
)


def _run(text: str) -> NativeResult | InvalidArgvError:
    try:
        return domain_from_native(
            text, uuid_factory=lambda: MOCK_UUID, mac_factory=lambda: MOCK_MAC
        )
    except InvalidArgvError as exc:
        return exc


@pytest.mark.parametrize(("row", "case", "flag"), TABLE_3, ids=[f"{r}-{c}" for r, c, _ in TABLE_3])
def test_argv2xml(corpus: Path, row: int, case: str, flag: Flag) -> None:
    data = corpus / "bhyveargv2xmldata"
    args = data / f"bhyveargv2xml-{case}.args"
    expected_file = data / f"bhyveargv2xml-{case}.xml"
    diff = find("argv2xml", case, row)
    if diff is not None and diff.outcome is not None:
        flag = "OK" if diff.outcome == "pass" else "FAIL"
    result = _run(args.read_text())
    if flag == "FAIL":
        assert isinstance(result, InvalidArgvError), "expected no definition"
        assert result.message
        return
    assert isinstance(result, NativeResult), f"expected a definition, got: {result}"
    if flag == "OK":
        assert result.warnings == ()
    else:
        assert result.warnings != ()
    expected = expected_file.read_text() if expected_file.exists() else ""
    if diff is not None and diff.adjust is not None:
        expected = diff.adjust(expected)
    assert format_domain_xml(result.domain) == expected


def test_every_argv2xml_difference_names_a_case_of_table_3() -> None:
    cases = {case for _, case, _ in TABLE_3}
    rows = [d for d in DIFFERENCES if d.program == "argv2xml"]
    assert rows
    for diff in rows:
        assert diff.case in cases
        assert diff.reason


def test_an_adjusted_expectation_really_differs_from_libvirts(corpus: Path) -> None:
    """A difference row that changes nothing would hide a case that now matches."""
    data = corpus / "bhyveargv2xmldata"
    for diff in DIFFERENCES:
        if diff.program != "argv2xml" or diff.adjust is None:
            continue
        path = data / f"bhyveargv2xml-{diff.case}.xml"
        libvirt = path.read_text() if path.exists() else ""
        assert diff.adjust(libvirt) != libvirt, diff.case

"""libvirt's bhyvexml2xmltest, replayed: domain XML -> model -> domain XML.

One test per invocation of CASES.md Table 2, with AHCI32SLOT on until row 45 toggles it
off, MAC generation faked as ``52:54:00:00:00:00``, and §3.2's semantics: DIFF rows must
reproduce the expected file byte for byte; the FAIL row passes on any failure or on
reproducing its input.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.domain.postparse import IdSource
from supervisor.domain.xml import format_domain_xml, parse_domain_xml
from supervisor.errors import SupervisorError
from supervisor.vmm.caps import BhyveCap, Capabilities
from tests.conformance import differences, read_table

ROWS = read_table("Table 2")
FAKE_IDS = IdSource(mac=lambda: "52:54:00:00:00:00")


def _caps(row: dict[str, str]) -> Capabilities:
    on = "AHCI32SLOT" in row["bhyvecaps in force"]
    return Capabilities(bhyve=BhyveCap.AHCI32SLOT if on else BhyveCap.NONE)


def _format(corpus: Path, row: dict[str, str]) -> str:
    source = corpus / "bhyvexml2argvdata" / f"bhyvexml2argv-{row['case']}.xml"
    domain = parse_domain_xml(source.read_bytes(), caps=_caps(row), ids=FAKE_IDS)
    return format_domain_xml(domain, inactive=True)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['#']}-{r['case']}-{r['flag']}" for r in ROWS])
def test_xml2xml(corpus: Path, row: dict[str, str]) -> None:
    case = row["case"]
    if row["flag"] == "FAIL":
        source = corpus / "bhyvexml2argvdata" / f"bhyvexml2argv-{case}.xml"
        try:
            out = _format(corpus, row)
        except SupervisorError:
            return
        assert out == source.read_text()
        return
    expected = (corpus / "bhyvexml2xmloutdata" / f"bhyvexml2xmlout-{case}.xml").read_text()
    diff = differences.find("xml2xml", case, int(row["#"]))
    if diff is not None and diff.adjust is not None:
        adjusted = diff.adjust(expected)
        assert adjusted != expected, f"difference row for {case} no longer changes anything"
        expected = adjusted
    assert _format(corpus, row) == expected


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['#']}-{r['case']}" for r in ROWS])
def test_xml2xml_is_idempotent(corpus: Path, row: dict[str, str]) -> None:
    try:
        once = _format(corpus, row)
    except SupervisorError:
        assert row["flag"] == "FAIL"
        return
    again = format_domain_xml(parse_domain_xml(once, caps=_caps(row), ids=FAKE_IDS))
    assert again == once


def test_table_is_complete(corpus: Path) -> None:
    assert len(ROWS) == 48

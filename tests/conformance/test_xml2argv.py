"""libvirt's bhyvexml2argvtest, replayed: domain XML -> bhyve and loader command lines.

One test per invocation of CASES.md Table 1, in its order, with the capability set,
grub capability and firmware directory in force on that row, and libvirt's fakes: the
tap device ``faketapdev``, MAC ``52:54:00:00:00:00`` and VNC autoport 5900. The
pass/fail semantics of each flag are CASES.md §3.1's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from supervisor.domain.postparse import IdSource
from supervisor.domain.xml import parse_domain_xml
from supervisor.errors import SupervisorError
from supervisor.vmm.argv import build_bhyve_argv
from supervisor.vmm.caps import BhyveCap, Capabilities
from supervisor.vmm.loader import build_loader, select_firmware
from tests.conformance import differences, read_table

try:
    from supervisor.vmm.cmdline import render_libvirt
except ImportError:  # pragma: no cover - until the renderer lands beside the parser

    def render_libvirt(argv: Sequence[str]) -> str:
        special = set("\r\t\n !\"#$&'()*;<>?[\\]^`{|}~")

        def esc(arg: str) -> str:
            if arg == "":
                return "''"
            if not special & set(arg):
                return arg
            return "'" + arg.replace("'", "'\\''") + "'"

        args = [os.path.basename(argv[0]), *argv[1:]]
        opt = [a.startswith("-") for a in args]
        out = [esc(args[0])]
        for i in range(1, len(args)):
            same = not opt[i] and any(opt[1:i]) and any(opt[i - 1 :])
            out.append((" " if same else " \\\n") + esc(args[i]))
        return "".join(out)


ROWS = read_table("Table 1")
FIRMWARE_DIRS = {"fakefirmwaredir": "three_firmwares", "fakefirmwareemptydir": "empty"}
FAKE_IDS = IdSource(mac=lambda: "52:54:00:00:00:00")


def _caps(row: dict[str, str]) -> Capabilities:
    flags = BhyveCap.NONE
    for name in row["bhyvecaps in force"].split(","):
        name = name.strip()
        if name and name != "(none)":
            flags |= BhyveCap[name]
    return Capabilities(bhyve=flags, grub_consdev=row["grub"] == "CONSDEV")


def _with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def run_case(corpus: Path, row: dict[str, str]) -> tuple[str, bool]:
    """Run one invocation; return (the stage reached, whether outputs matched).

    Stages: ``parse`` (parse failed), ``prepare`` (prepare failed), ``build`` (a
    build failed), ``done`` (everything succeeded).
    """
    case = row["case"]
    data = corpus / "bhyvexml2argvdata"
    caps = _caps(row)
    try:
        domain = parse_domain_xml(
            (data / f"bhyvexml2argv-{case}.xml").read_bytes(), caps=caps, ids=FAKE_IDS
        )
    except SupervisorError:
        return "parse", False
    fwdir = row["firmwareDir"]
    listing = os.listdir(corpus / "bhyvefirmwaredata" / FIRMWARE_DIRS[fwdir])
    try:
        domain = select_firmware(domain, listing, firmware_dir=fwdir)
    except SupervisorError:
        return "prepare", False
    failed = False
    try:
        bhyve = render_libvirt(
            build_bhyve_argv(domain, caps, taps=lambda i, n: "faketapdev", vnc_port=lambda g: 5900)
        )
    except SupervisorError:
        failed = True
    device_map = None
    try:
        if domain.os.loader is not None:
            ldargs = "dummy"
        else:
            loader = build_loader(domain, caps, device_map_path="<device.map>")
            assert loader is not None
            ldargs = render_libvirt(loader.argv)
            device_map = loader.device_map
    except SupervisorError:
        failed = True
    if failed:
        return "build", False
    expected = differences.find("xml2argv", case, int(row["#"]))
    want_args = _read(data / f"bhyvexml2argv-{case}.args")
    want_ld = _read(data / f"bhyvexml2argv-{case}.ldargs")
    if expected is not None and expected.adjust is not None:
        want_args = want_args and expected.adjust(want_args)
    matched = want_args == _with_newline(bhyve) and want_ld == _with_newline(ldargs)
    devmap_file = data / f"bhyvexml2argv-{case}.devmap"
    if device_map is not None or devmap_file.is_file():
        want_map = _read(devmap_file) or ""
        got_map = (device_map or "").rstrip()
        matched = matched and want_map == _with_newline(got_map)
    return "done", matched


def passes(flag: str, stage: str, matched: bool) -> bool:
    """CASES.md §3.1: whether an invocation with *flag* passes."""
    if flag == "FAIL":
        return stage in ("parse", "build") or (stage == "done" and matched)
    if flag == "PARSE_ERROR" and stage == "parse":
        return True
    if flag == "PREPARE_ERROR":
        if stage == "parse":
            return False
        if stage == "prepare":
            return True
    return stage == "done" and matched


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['#']}-{r['case']}-{r['flag']}" for r in ROWS])
def test_xml2argv(corpus: Path, row: dict[str, str]) -> None:
    stage, matched = run_case(corpus, row)
    diff = differences.find("xml2argv", row["case"], int(row["#"]))
    if diff is not None and diff.outcome is not None:
        assert passes(row["flag"], stage, matched) == (diff.outcome == "pass"), diff.reason
        return
    assert passes(row["flag"], stage, matched), (
        f"{row['case']}: stopped at {stage}, matched={matched}"
    )


def test_table_is_complete(corpus: Path) -> None:
    assert len(ROWS) == 76
    assert [r["flag"] for r in ROWS].count("OK") == 50

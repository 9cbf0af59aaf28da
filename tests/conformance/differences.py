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
    Difference(
        program="argv2xml",
        case="ahci-hd",
        reason=(
            "libvirt reads ahci-hd/ahci-cd as a SATA disk that carries the PCI address itself. "
            "In bhyve `ahci-hd,P`, `ahci-cd,P` and `ahci,hd:P` are one config tree, so the "
            "project reads every AHCI slot as a sata controller at that address with its disks "
            "on drive addresses (port = unit), the form its builder and post-parse use: the "
            "guest round-trips."
        ),
        adjust=lambda xml: _argv2xml_ahci_controller(xml),
    ),
    Difference(
        program="argv2xml",
        case="cdrom",
        reason=(
            "libvirt reads ahci-hd/ahci-cd as a SATA disk that carries the PCI address itself. "
            "In bhyve `ahci-hd,P`, `ahci-cd,P` and `ahci,hd:P` are one config tree, so the "
            "project reads every AHCI slot as a sata controller at that address with its disks "
            "on drive addresses (port = unit), the form its builder and post-parse use: the "
            "guest round-trips."
        ),
        adjust=lambda xml: _argv2xml_ahci_controller(xml),
    ),
    Difference(
        program="argv2xml",
        case="console",
        reason=(
            "libvirt drops the `-s N,lpc` slot; bhyve opens the COM ports and the bootrom only "
            "when an lpc slot exists, so the project keeps it as the isa controller at its "
            "address."
        ),
        adjust=lambda xml: _argv2xml_with_lpc(xml),
    ),
    Difference(
        program="argv2xml",
        case="console3",
        reason=(
            "bhyve has COM1-COM4 and the project reads all four; libvirt refuses com3. The "
            "project passes this case with the three serial ports and the lpc slot (outcome "
            '"pass": a definition, nothing logged, this XML).'
        ),
        adjust=lambda xml: _argv2xml_console3(),
        outcome="pass",
    ),
    Difference(
        program="argv2xml",
        case="disk-toomany",
        reason=(
            "libvirt names disks vda..vdz only and drops the 27th with an error; bhyve takes a "
            "virtio-blk disk in every free slot and function, so the project keeps it as vdaa "
            '(outcome "pass": a definition with 27 disks, nothing logged).'
        ),
        adjust=lambda xml: _argv2xml_27th_disk(xml),
        outcome="pass",
    ),
    Difference(
        program="argv2xml",
        case="vnc",
        reason=(
            "libvirt drops the `-s N,lpc` slot; bhyve opens the COM ports and the bootrom only "
            "when an lpc slot exists, so the project keeps it as the isa controller at its "
            "address; it also keeps `-l bootrom,...` as the <loader> (libvirt ignores it, and "
            "the framebuffer needs it) and the video's PCI slot (libvirt drops the address)."
        ),
        adjust=lambda xml: _argv2xml_vnc(xml, slot=2),
    ),
    Difference(
        program="argv2xml",
        case="vnc-listen",
        reason=(
            "libvirt drops the `-s N,lpc` slot; bhyve opens the COM ports and the bootrom only "
            "when an lpc slot exists, so the project keeps it as the isa controller at its "
            "address; it also keeps `-l bootrom,...` as the <loader> (libvirt ignores it, and "
            "the framebuffer needs it) and the video's PCI slot (libvirt drops the address)."
        ),
        adjust=lambda xml: _argv2xml_vnc(xml, slot=2),
    ),
    Difference(
        program="argv2xml",
        case="vnc-vga-on",
        reason=(
            "libvirt drops the `-s N,lpc` slot; bhyve opens the COM ports and the bootrom only "
            "when an lpc slot exists, so the project keeps it as the isa controller at its "
            "address; it also keeps `-l bootrom,...` as the <loader> (libvirt ignores it, and "
            "the framebuffer needs it) and the video's PCI slot (libvirt drops the address)."
        ),
        adjust=lambda xml: _argv2xml_vnc(xml, slot=2),
    ),
    Difference(
        program="argv2xml",
        case="vnc-vga-off",
        reason=(
            "libvirt drops the `-s N,lpc` slot; bhyve opens the COM ports and the bootrom only "
            "when an lpc slot exists, so the project keeps it as the isa controller at its "
            "address; it also keeps `-l bootrom,...` as the <loader> (libvirt ignores it, and "
            "the framebuffer needs it) and the video's PCI slot (libvirt drops the address)."
        ),
        adjust=lambda xml: _argv2xml_vnc(xml, slot=2),
    ),
    Difference(
        program="argv2xml",
        case="vnc-vga-io",
        reason=(
            "libvirt drops the `-s N,lpc` slot; bhyve opens the COM ports and the bootrom only "
            "when an lpc slot exists, so the project keeps it as the isa controller at its "
            "address; it also keeps `-l bootrom,...` as the <loader> (libvirt ignores it, and "
            "the framebuffer needs it) and the video's PCI slot (libvirt drops the address)."
        ),
        adjust=lambda xml: _argv2xml_vnc(xml, slot=2),
    ),
    Difference(
        program="argv2xml",
        case="vnc-resolution",
        reason=(
            "libvirt drops the `-s N,lpc` slot; bhyve opens the COM ports and the bootrom only "
            "when an lpc slot exists, so the project keeps it as the isa controller at its "
            "address; it also keeps `-l bootrom,...` as the <loader> (libvirt ignores it, and "
            "the framebuffer needs it) and the video's PCI slot (libvirt drops the address)."
        ),
        adjust=lambda xml: _argv2xml_vnc(xml, slot=2),
    ),
    Difference(
        program="argv2xml",
        case="vnc-password",
        reason=(
            "libvirt drops the `-s N,lpc` slot; bhyve opens the COM ports and the bootrom only "
            "when an lpc slot exists, so the project keeps it as the isa controller at its "
            "address; it also keeps `-l bootrom,...` as the <loader> (libvirt ignores it, and "
            "the framebuffer needs it) and the video's PCI slot (libvirt drops the address)."
        ),
        adjust=lambda xml: _argv2xml_vnc(xml, slot=4),
    ),
)


def find(program: Program, case: str, row: int | None = None) -> Difference | None:
    """The difference for *case* of *program* (at invocation *row*), if there is one."""
    for diff in DIFFERENCES:
        if diff.program == program and diff.case == case and diff.row in (None, row):
            return diff
    return None


# -- argv2xml adjusters (the project's XML from libvirt's expected XML) ------------------

_PCI_ADDRESS = "<address type='pci' domain='0x0000' bus='0x00' slot='0x{slot:02x}' function='0x0'/>"


def _argv2xml_with_lpc(expected: str) -> str:
    lpc = (
        "    <controller type='isa' index='0'>\n"
        f"      {_PCI_ADDRESS.format(slot=1)}\n"
        "    </controller>\n"
    )
    return expected.replace("  <devices>\n", "  <devices>\n" + lpc, 1)


def _argv2xml_ahci_controller(expected: str) -> str:
    address = f"      {_PCI_ADDRESS.format(slot=2)}\n"
    drive = "      <address type='drive' controller='0' bus='0' target='0' unit='0'/>\n"
    controller = f"    <controller type='sata' index='0'>\n{address}    </controller>\n"
    return expected.replace(address + "    </disk>\n", drive + "    </disk>\n" + controller, 1)


def _argv2xml_vnc(expected: str, slot: int) -> str:
    loader = "    <loader readonly='yes' type='pflash'>/path/to/test.fd</loader>\n"
    video_address = f"      {_PCI_ADDRESS.format(slot=slot)}\n"
    xml = expected.replace("    <type>hvm</type>\n", "    <type>hvm</type>\n" + loader, 1)
    xml = xml.replace("    </video>\n", video_address + "    </video>\n", 1)
    return _argv2xml_with_lpc(xml)


def _argv2xml_27th_disk(expected: str) -> str:
    disk = (
        "    <disk type='file' device='disk'>\n"
        "      <source file='/tmp/freebsd.img'/>\n"
        "      <target dev='vdaa' bus='virtio'/>\n"
        f"      {_PCI_ADDRESS.format(slot=27)}\n"
        "    </disk>\n"
    )
    return expected.replace("  </devices>\n", disk + "  </devices>\n", 1)


def _argv2xml_console3() -> str:
    serials = "".join(
        "    <serial type='nmdm'>\n"
        f"      <source master='/dev/nmdm{n}{m}' slave='/dev/nmdm{n}{s}'/>\n"
        f"      <target port='{n}'/>\n"
        "    </serial>\n"
        for n, m, s in ((0, "A", "B"), (1, "B", "A"), (2, "B", "A"))
    )
    return _argv2xml_with_lpc(
        "<domain type='bhyve'>\n"
        "  <name>bhyve</name>\n"
        "  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>\n"
        "  <memory unit='KiB'>219136</memory>\n"
        "  <currentMemory unit='KiB'>219136</currentMemory>\n"
        "  <vcpu placement='static'>1</vcpu>\n"
        "  <os>\n"
        "    <type>hvm</type>\n"
        "  </os>\n"
        "  <clock offset='localtime'/>\n"
        "  <on_poweroff>destroy</on_poweroff>\n"
        "  <on_reboot>destroy</on_reboot>\n"
        "  <on_crash>destroy</on_crash>\n"
        "  <devices>\n"
        f"{serials}"
        "  </devices>\n"
        "</domain>\n"
    )

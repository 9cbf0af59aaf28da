"""Post-parse: implicit controllers, addresses, generated identifiers."""

from __future__ import annotations

import re

import pytest

from supervisor.domain import Domain, PciAddress
from supervisor.domain.postparse import IdSource, post_parse, random_mac
from supervisor.domain.xml import parse_domain_xml
from supervisor.errors import InvalidValueError
from supervisor.vmm.caps import DEFAULT, BhyveCap


def parse(devices: str, os: str = "<type>hvm</type>", **kw: object) -> Domain:
    xml = (
        "<domain type='bhyve'><name>vm1</name><memory>1048576</memory>"
        f"<os>{os}</os><devices>{devices}</devices></domain>"
    )
    return parse_domain_xml(xml, **kw)  # type: ignore[arg-type]


NIC = "<interface type='bridge'><source bridge='bridge0'/><model type='virtio'/></interface>"


def test_generated_identifiers_are_injectable() -> None:
    ids = IdSource(
        mac=lambda: "52:54:00:aa:bb:cc", uuid=lambda: "00000000-0000-4000-8000-000000000001"
    )
    d = parse(NIC + "<serial type='nmdm'/>", ids=ids)
    assert d.uuid == "00000000-0000-4000-8000-000000000001"
    assert d.interfaces[0].mac == "52:54:00:aa:bb:cc"
    # Default nmdm paths are derived from the UUID, as libvirt does.
    assert d.serials[0].master == "/dev/nmdm00000000-0000-4000-8000-000000000001A"
    assert d.serials[0].slave == "/dev/nmdm00000000-0000-4000-8000-000000000001B"


def test_random_identifiers_by_default() -> None:
    a, b = parse(NIC), parse(NIC)
    assert a.uuid != b.uuid
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", a.interfaces[0].mac or "")
    assert len({random_mac() for _ in range(8)}) > 1


def test_lpc_is_added_for_a_serial_port_and_takes_slot_1() -> None:
    d = parse(NIC + "<serial type='nmdm'/>")
    assert [(c.type, c.address) for c in d.controllers] == [
        ("pci", None),
        ("isa", PciAddress(slot=1)),
    ]
    assert d.interfaces[0].address == PciAddress(slot=2)
    assert d.consoles[0].target_type == "serial"


def test_sata_addressing_depends_on_ahci32slot() -> None:
    disks = "".join(
        f"<disk type='file'><source file='/d{i}'/><target dev='sd{c}' bus='sata'/></disk>"
        for i, c in enumerate("abc")
    )
    many = parse(disks, caps=DEFAULT)
    assert {d.address.controller for d in many.disks} == {0}  # type: ignore[union-attr]
    assert len([c for c in many.controllers if c.type == "sata"]) == 1
    one_each = parse(disks, caps=DEFAULT.without(BhyveCap.AHCI32SLOT))
    assert [d.address.controller for d in one_each.disks] == [0, 1, 2]  # type: ignore[union-attr]
    assert len([c for c in one_each.controllers if c.type == "sata"]) == 3


def test_slots_run_out() -> None:
    disks = "".join(
        f"<disk type='file'><source file='/d{i}'/><target dev='vd{chr(97 + i % 26)}{i}'"
        " bus='virtio'/></disk>"
        for i in range(31)
    )
    with pytest.raises(InvalidValueError, match="no more available PCI slots"):
        parse(disks)


def test_boot_dev_and_boot_order_together_are_refused() -> None:
    disk = (
        "<disk type='file'><source file='/a'/><target dev='vda' bus='virtio'/>"
        "<boot order='1'/></disk>"
    )
    with pytest.raises(InvalidValueError) as info:
        parse(disk, os="<type>hvm</type><boot dev='hd'/>")
    assert info.value.field == "os.boot"


def test_post_parse_is_idempotent() -> None:
    d = parse(
        NIC + "<serial type='nmdm'/><graphics type='vnc'/>",
        os="<type>hvm</type><loader>/fw</loader>",
    )
    assert post_parse(d) == d


def test_a_framebuffer_without_video_reads_back_the_same() -> None:
    # The default video is added before the implicit controllers, so the guest gets
    # its LPC bridge at once instead of on the next read of its own definition.
    from supervisor.domain.xml import format_domain_xml

    d = parse_domain_xml(
        """<domain type='bhyve'><name>fb</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
        <os><type>hvm</type></os><devices>
        <graphics type='vnc' port='5900' autoport='no' listen='127.0.0.1'/>
        </devices></domain>"""
    )
    assert [v.model for v in d.videos] == ["gop"]
    assert parse_domain_xml(format_domain_xml(d)) == d

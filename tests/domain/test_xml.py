"""Domain XML: hardening, validation errors that name their field, policy metadata."""

from __future__ import annotations

import pytest

from supervisor.domain import Domain, SupervisorPolicy
from supervisor.domain.postparse import IdSource
from supervisor.domain.xml import (
    MAX_XML_BYTES,
    format_cpuset,
    format_domain_xml,
    parse_cpuset,
    parse_domain_xml,
)
from supervisor.errors import InvalidValueError, InvalidXMLError

IDS = IdSource(mac=lambda: "52:54:00:00:00:01", uuid=lambda: "11111111-2222-3333-4444-555555555555")


def doc(
    devices: str = "",
    *,
    name: str = "vm1",
    memory: str = "<memory>1048576</memory>",
    head: str = "",
    tail: str = "",
) -> str:
    return (
        f"<domain type='bhyve'><name>{name}</name>{memory}{head}<os><type>hvm</type></os>"
        f"<devices>{devices}</devices>{tail}</domain>"
    )


def parse(xml: str) -> Domain:
    return parse_domain_xml(xml, ids=IDS)


# -- hardening -------------------------------------------------------------------------


def test_doctype_is_rejected() -> None:
    with pytest.raises(InvalidXMLError, match="DOCTYPE"):
        parse("<!DOCTYPE domain>" + doc())


def test_entities_are_rejected() -> None:
    evil = (
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        "<domain type='bhyve'><name>&x;</name></domain>"
    )
    with pytest.raises(InvalidXMLError):
        parse(evil)


def test_billion_laughs_is_rejected() -> None:
    lol = '<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><domain>&b;</domain>'
    with pytest.raises(InvalidXMLError):
        parse(lol)


def test_oversize_documents_are_rejected() -> None:
    big = doc(tail="<description>" + "x" * MAX_XML_BYTES + "</description>")
    with pytest.raises(InvalidXMLError, match="larger than"):
        parse(big)


def test_malformed_xml_is_an_xml_error() -> None:
    with pytest.raises(InvalidXMLError, match="well-formed"):
        parse("<domain type='bhyve'><name>vm1</name>")


def test_wrong_domain_type() -> None:
    with pytest.raises(InvalidValueError, match="must be 'bhyve'"):
        parse(doc().replace("bhyve", "kvm", 1))


# -- validation names the field ----------------------------------------------------------

DISK = "<disk type='file'><source file='{}'/><target dev='vd{}' bus='virtio'/></disk>"


@pytest.mark.parametrize(
    ("xml", "field"),
    [
        (doc(memory="<memory>0</memory>"), "memory"),
        (doc(name="-bad"), "name"),
        (doc(name="a" * 32), "name"),
        (doc(name="has space"), "name"),
        (doc(head="<uuid>not-a-uuid</uuid>"), "uuid"),
        (doc(DISK.format("/a.img", "a") + DISK.format("/b,c.img", "b")), "devices.disk[1].source"),
        (
            doc(
                "<interface type='bridge'><mac address='52:54:00:zz:00:01'/>"
                "<source bridge='bridge0'/></interface>"
            ),
            "devices.interface[0].mac",
        ),
        (
            doc(
                "<interface type='bridge'><mac address='01:00:5e:00:00:01'/>"
                "<source bridge='bridge0'/></interface>"
            ),
            "devices.interface[0].mac",
        ),
        (
            doc("<filesystem><source dir='/sh,are'/><target dir='tag'/></filesystem>"),
            "devices.filesystem[0].source.dir",
        ),
        (
            doc("<filesystem><source dir='/share'/><target dir='t,ag'/></filesystem>"),
            "devices.filesystem[0].target.dir",
        ),
        (
            doc(
                "<channel type='unix'><source path='/run/a,b'/>"
                "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
            ),
            "devices.channel[0].source.path",
        ),
        (doc("<graphics type='vnc' passwd='a,b'/>"), "devices.graphics[0].passwd"),
        (
            doc(
                "<disk type='file'><source file='/a'/><target dev='vda' bus='virtio'/>"
                "<address type='pci' domain='0x0000' bus='0x00' slot='0x20' function='0x0'/></disk>"
            ),
            "devices.disk[0].address.slot",
        ),
        (
            doc(
                "<disk type='file'><source file='/a'/><target dev='vda' bus='virtio'/>"
                "<address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x8'/></disk>"
            ),
            "devices.disk[0].address.function",
        ),
        (
            doc(
                DISK.format("/a", "a").replace("</disk>", "<address type='pci' slot='5'/></disk>")
                + DISK.format("/b", "b").replace("</disk>", "<address type='pci' slot='5'/></disk>")
            ),
            "devices.disk[1].address",
        ),
        (
            doc(
                "<disk type='file'><source file='/a'/><target dev='sda' bus='sata'/>"
                "<address type='drive' controller='0' unit='32'/></disk>"
            ),
            "devices.disk[0].address.unit",
        ),
        (doc(head="<clock offset='variable'/>"), "clock.offset"),
        (
            doc("<rng model='virtio'><backend model='builtin'/></rng>"),
            "devices.rng[0].backend.model",
        ),
        (doc("<watchdog model='i6300esb'/>"), "devices.watchdog"),
        (doc(head="<on_crash>explode</on_crash>"), "on_crash"),
    ],
)
def test_bad_values_name_their_field(xml: str, field: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        parse(xml)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


def test_more_than_32_disks_on_one_ahci_controller() -> None:
    disks = "".join(
        f"<disk type='file'><source file='/d{i}'/><target dev='sda' bus='sata'/>"
        f"<address type='drive' controller='0' unit='{i % 32}'/></disk>"
        for i in range(33)
    )
    with pytest.raises(InvalidValueError, match="more than 32 disks") as info:
        parse(doc(disks))
    assert info.value.field == "devices.disk[32]"


def test_memory_units_are_kept_in_kib() -> None:
    d = parse(doc(memory="<memory unit='GiB'>2</memory>"))
    assert d.memory_kib == 2 * 1024 * 1024
    assert d.memory_bytes == 2 * 1024**3
    assert d.memory_mib == 2048


# -- the supervisor's policy in <metadata> -----------------------------------------------

POLICY = """<metadata>
  <bhyvesup:policy xmlns:bhyvesup='urn:bhyve-supervisor:domain:1'>
    <bhyvesup:autostart>yes</bhyvesup:autostart>
    <bhyvesup:start-order>2</bhyvesup:start-order>
    <bhyvesup:depends-on>db</bhyvesup:depends-on>
    <bhyvesup:depends-on>dns</bhyvesup:depends-on>
    <bhyvesup:stop-timeout>30</bhyvesup:stop-timeout>
    <bhyvesup:ready-console-regex>login:</bhyvesup:ready-console-regex>
  </bhyvesup:policy>
  <app:note xmlns:app='http://example.org/app'>kept</app:note>
</metadata>"""


def test_policy_is_read_from_metadata() -> None:
    d = parse(doc(head=POLICY))
    assert d.policy == SupervisorPolicy(
        autostart=True,
        start_order=2,
        depends_on=("db", "dns"),
        stop_timeout=30.0,
        ready_console_regex="login:",
    )
    assert d.metadata == ('<app:note xmlns:app="http://example.org/app">kept</app:note>',)


def test_policy_and_other_metadata_round_trip() -> None:
    once = format_domain_xml(parse(doc(head=POLICY)))
    assert "<bhyvesup:autostart>yes</bhyvesup:autostart>" in once
    assert "stop-timeout>30.0<" in once
    assert "kept</app:note>" in once
    assert format_domain_xml(parse(once)) == once
    assert parse(once).policy == parse(doc(head=POLICY)).policy


def test_default_policy_writes_no_metadata() -> None:
    d = parse(doc())
    assert d.policy == SupervisorPolicy()
    assert "<metadata>" not in format_domain_xml(d)


def test_unknown_policy_element_is_rejected() -> None:
    bad = POLICY.replace("start-order>", "start-ordre>")
    with pytest.raises(InvalidXMLError) as info:
        parse(doc(head=bad))
    assert info.value.field == "metadata.policy.start-ordre"


def test_bad_policy_value_names_the_field() -> None:
    bad = POLICY.replace("<bhyvesup:stop-timeout>30<", "<bhyvesup:stop-timeout>0<")
    with pytest.raises(InvalidValueError) as info:
        parse(doc(head=bad))
    assert info.value.field == "metadata.policy.stop_timeout"


def test_lifecycle_actions_are_kept() -> None:
    d = parse(doc(tail="", head="<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>"))
    assert (d.on_poweroff, d.on_reboot, d.on_crash) == ("destroy", "destroy", "destroy")
    assert "<on_reboot>destroy</on_reboot>" in format_domain_xml(d)


@pytest.mark.parametrize(
    ("text", "cpus", "compact"),
    [("0-3", (0, 1, 2, 3), "0-3"), ("0-4,^2", (0, 1, 3, 4), "0-1,3-4"), ("5,1", (1, 5), "1,5")],
)
def test_cpusets(text: str, cpus: tuple[int, ...], compact: str) -> None:
    assert parse_cpuset("cpuset", text) == cpus
    assert format_cpuset(cpus) == compact


def test_cputune_round_trips() -> None:
    d = parse(doc(head="<vcpu>4</vcpu><cputune><vcpupin vcpu='3' cpuset='0-2,7'/></cputune>"))
    text = format_domain_xml(d)
    assert "<cputune>\n    <vcpupin vcpu='3' cpuset='0-2,7'/>\n  </cputune>" in text
    assert parse(text) == d

"""The guest model's own rules and conveniences, and the shipped example guests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from supervisor.domain import Disk, Domain, PciAddress, Serial, SupervisorPolicy
from supervisor.domain.model import Loader, Os, target_index
from supervisor.domain.xml import format_domain_xml, parse_domain_xml
from supervisor.errors import InvalidValueError
from supervisor.vmm.argv import build_commands

EXAMPLES = Path(__file__).resolve().parents[2] / "etc" / "examples"


def test_memory_helpers() -> None:
    d = Domain(name="vm1", memory_kib=219136)
    assert d.memory_bytes == 219136 * 1024
    assert d.memory_mib == 214  # rounded up, as bhyve's -m gets it


def test_uses_bootrom() -> None:
    assert not Domain(name="a", memory_kib=1024).uses_bootrom
    uefi = Os(loader=Loader(path="/fw.fd"))
    assert Domain(name="a", memory_kib=1024, os=uefi).uses_bootrom
    assert Domain(name="a", memory_kib=1024, os=Os(firmware="efi")).uses_bootrom
    grub = Os(loader=Loader(path="/fw.fd"), bootloader="/usr/local/sbin/grub-bhyve")
    assert not Domain(name="a", memory_kib=1024, os=grub).uses_bootrom


def test_console_paths_lists_nmdm_ports_only() -> None:
    d = Domain(
        name="a",
        memory_kib=1024,
        serials=(
            Serial(master="/dev/nmdm-a.1A", slave="/dev/nmdm-a.1B"),
            Serial(type="tcp", port=1, host="127.0.0.1", service=4000),
            Serial(port=2, master="/dev/nmdm-a.3A", slave="/dev/nmdm-a.3B"),
        ),
    )
    assert d.console_paths() == [
        (1, "/dev/nmdm-a.1A", "/dev/nmdm-a.1B"),
        (3, "/dev/nmdm-a.3A", "/dev/nmdm-a.3B"),
    ]


@pytest.mark.parametrize("name", ["a", "vm-1", "web.example_2", "x" * 31])
def test_portable_names_are_accepted(name: str) -> None:
    assert Domain(name=name, memory_kib=1024).name == name


@pytest.mark.parametrize("name", ["", "-vm", "x" * 32, "a/b", "vm 1", "vé", ".", "..", ".hidden"])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        Domain(name=name, memory_kib=1024)
    assert info.value.field == "name"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("/var/vm/a,b.img", "','"),
        ("disk0.img", "absolute"),
        ("-o/etc/passwd", "absolute"),
        ("/var/vm/../../etc/master.passwd", "'..'"),
    ],
)
def test_disk_paths_that_would_not_open_what_they_say_are_refused(
    source: str, problem: str
) -> None:
    with pytest.raises(InvalidValueError, match=re.escape(problem)) as info:
        Disk(source=source, target="vda")
    assert info.value.field == "source"


def test_console_paths_must_be_absolute() -> None:
    with pytest.raises(InvalidValueError) as info:
        Serial(type="nmdm", master="nmdm0A", slave="/dev/nmdm0B")
    assert info.value.field == "source.master"


def test_two_devices_on_one_slot_are_refused() -> None:
    disks = (
        Disk(target="vda", bus="virtio", source="/a", address=PciAddress(slot=4)),
        Disk(target="vdb", bus="virtio", source="/b", address=PciAddress(slot=4)),
    )
    with pytest.raises(InvalidValueError, match="already used") as info:
        Domain(name="a", memory_kib=1024, disks=disks)
    assert info.value.field == "devices.disk[1].address"


def test_slot_zero_is_the_host_bridge() -> None:
    disk = Disk(target="vda", bus="virtio", source="/a", address=PciAddress(slot=0))
    with pytest.raises(InvalidValueError, match="host bridge"):
        Domain(name="a", memory_kib=1024, disks=(disk,))


def test_policy_defaults_and_checks() -> None:
    p = SupervisorPolicy()
    assert (p.autostart, p.stop_timeout, p.crash_limit, p.crash_window) == (False, 120.0, 5, 300.0)
    with pytest.raises(InvalidValueError) as info:
        SupervisorPolicy(restart_backoff=10, restart_backoff_max=5)
    assert info.value.field == "policy.restart_backoff_max"
    with pytest.raises(InvalidValueError, match="regular expression"):
        SupervisorPolicy(ready_console_regex="(")
    with pytest.raises(InvalidValueError) as info:
        SupervisorPolicy(depends_on=("ok", "-bad"))
    assert info.value.field == "policy.depends_on[1].name"


@pytest.mark.parametrize(("target", "index"), [("hda", 0), ("sdb", 1), ("vdz", 25), ("sdaa", 26)])
def test_target_index(target: str, index: int) -> None:
    assert target_index(target) == index


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.xml")), ids=lambda p: p.stem)
def test_examples_parse_round_trip_and_build(path: Path) -> None:
    domain = parse_domain_xml(path.read_text())
    assert domain.name == path.stem
    assert domain.policy.autostart
    assert domain.console_paths() == [
        (1, f"/dev/nmdm-{domain.name}.1A", f"/dev/nmdm-{domain.name}.1B")
    ]
    text = format_domain_xml(domain)
    assert parse_domain_xml(text) == domain
    cmds = build_commands(domain)
    assert cmds.bhyve[0] == "/usr/sbin/bhyve"
    assert cmds.bhyve[-1] == domain.name
    assert f"/var/vm/{domain.name}/disk0.img" in " ".join(cmds.bhyve)
    assert any(
        re.fullmatch(r"\d+:0,virtio-net,tap\d+,mac=52:54:00:[0-9a-f:]+", a) for a in cmds.bhyve
    )
    assert (cmds.loader is None) == domain.uses_bootrom

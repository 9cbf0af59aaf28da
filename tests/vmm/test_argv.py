"""The builder on features newer than libvirt's corpus, from the FreeBSD facts."""

from __future__ import annotations

import pytest

from supervisor.domain.postparse import IdSource
from supervisor.domain.xml import parse_domain_xml
from supervisor.errors import InvalidValueError, UnsupportedError
from supervisor.vmm.argv import build_commands
from supervisor.vmm.caps import DEFAULT, BhyveCap

IDS = IdSource(mac=lambda: "52:54:00:00:00:01", uuid=lambda: "11111111-2222-3333-4444-555555555555")


def domain(devices: str = "", os: str = "<type>hvm</type>", extra: str = ""):  # type: ignore[no-untyped-def]
    xml = f"""<domain type='bhyve'>
      <name>vm1</name><uuid>df3be7e7-a104-11e3-aeb0-50e5492bd3dc</uuid>
      <memory unit='MiB'>1024</memory><vcpu>2</vcpu>
      <os>{os}</os>{extra}
      <devices>{devices}</devices></domain>"""
    return parse_domain_xml(xml, ids=IDS)


FIRMWARE = "/usr/local/share/uefi-firmware/BHYVE_UEFI.fd"
UEFI = f"<type>hvm</type><loader readonly='yes' type='pflash'>{FIRMWARE}</loader>"
DISK = (
    "<disk type='file'><source file='/var/vm/vm1/disk0.img'/>"
    "<target dev='vda' bus='virtio'/></disk>"
)
NMDM1 = "<serial type='nmdm'><source master='/dev/nmdm-vm1.1A' slave='/dev/nmdm-vm1.1B'/></serial>"
NMDM2 = "<serial type='nmdm'><source master='/dev/nmdm-vm1.2A' slave='/dev/nmdm-vm1.2B'/></serial>"


def slots(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-s"]


def lpc(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-l"]


def test_minimal_bhyveload_guest() -> None:
    cmds = build_commands(domain(DISK))
    assert cmds.loader == (
        "/usr/sbin/bhyveload",
        "-m",
        "1024",
        "-d",
        "/var/vm/vm1/disk0.img",
        "vm1",
    )
    assert cmds.bhyve[:8] == ("/usr/sbin/bhyve", "-c", "2", "-m", "1024", "-u", "-H", "-P")
    assert slots(cmds.bhyve) == ["0:0,hostbridge", "2:0,virtio-blk,/var/vm/vm1/disk0.img"]
    assert cmds.bhyve[-1] == "vm1"
    assert cmds.device_map is None


def test_loader_console_puts_bhyveload_on_com1() -> None:
    # The daemon asks for it so the loader's menu shows on the guest console; the
    # default (libvirt's argv) leaves bhyveload on its own stdio.
    assert "-c" not in (build_commands(domain(DISK + NMDM1)).loader or ())
    cmds = build_commands(domain(DISK + NMDM1), loader_console=True)
    assert cmds.loader is not None
    assert cmds.loader[cmds.loader.index("-c") + 1] == "/dev/nmdm-vm1.1A"
    # Without a com1 console there is nothing to put it on.
    assert "-c" not in (build_commands(domain(DISK), loader_console=True).loader or ())


def test_uefi_guest_has_no_loader_and_lpc_on_slot_1() -> None:
    cmds = build_commands(domain(DISK, os=UEFI))
    assert cmds.loader is None
    assert lpc(cmds.bhyve) == ["bootrom,/usr/local/share/uefi-firmware/BHYVE_UEFI.fd"]
    assert "1:0,lpc" in slots(cmds.bhyve)


def test_nvram_vars_follow_the_bootrom() -> None:
    d = domain(DISK, os=UEFI + "<nvram>/var/vm/vm1/BHYVE_UEFI_VARS.fd</nvram>")
    assert lpc(build_commands(d).bhyve)[0] == (
        "bootrom,/usr/local/share/uefi-firmware/BHYVE_UEFI.fd,/var/vm/vm1/BHYVE_UEFI_VARS.fd"
    )
    with pytest.raises(UnsupportedError, match=r"os\.nvram"):
        build_commands(d, DEFAULT.without(BhyveCap.NVRAM))


def test_nvme_disk_with_queues() -> None:
    d = domain(
        "<disk type='block'><driver queues='4' queue_size='512'/>"
        "<source dev='/dev/zvol/tank/vm1'/><target dev='nvme0n1' bus='nvme'/></disk>"
    )
    assert "2:0,nvme,/dev/zvol/tank/vm1,maxq=4,qsz=512" in slots(build_commands(d).bhyve)
    with pytest.raises(UnsupportedError, match=r"devices\.disk\[0\]"):
        build_commands(d, DEFAULT.without(BhyveCap.NVME))


def test_readonly_virtio_disk() -> None:
    d = domain(
        "<disk type='file'><source file='/iso/base.img'/><target dev='vda' bus='virtio'/>"
        "<readonly/></disk>"
    )
    assert "2:0,virtio-blk,/iso/base.img,ro" in slots(build_commands(d).bhyve)


def test_ahci_with_several_ports_and_a_cdrom() -> None:
    d = domain(
        "<disk type='file'><source file='/a.img'/><target dev='sda' bus='sata'/></disk>"
        "<disk type='file' device='cdrom'><source file='/b.iso'/>"
        "<target dev='sdb' bus='sata'/></disk>"
    )
    assert "2:0,ahci,hd:/a.img,cd:/b.iso" in slots(build_commands(d).bhyve)


def test_virtio_console_channels() -> None:
    d = domain(
        DISK + "<channel type='unix'><source mode='bind' path='/var/run/bhyvesupd/vm1.qga'/>"
        "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        "<channel type='unix'><source mode='bind' path='/var/run/bhyvesupd/vm1.log'/>"
        "<target type='virtio' name='log'/></channel>"
    )
    assert (
        "2:0,virtio-console,org.qemu.guest_agent.0=/var/run/bhyvesupd/vm1.qga,"
        "log=/var/run/bhyvesupd/vm1.log" in slots(build_commands(d).bhyve)
    )


def test_seventeen_channels_need_two_console_devices() -> None:
    channels = "".join(
        f"<channel type='unix'><source path='/run/c{i}'/>"
        f"<target type='virtio' name='p{i}'/></channel>"
        for i in range(17)
    )
    consoles = [
        s for s in slots(build_commands(domain(DISK + channels)).bhyve) if "virtio-console" in s
    ]
    assert len(consoles) == 2
    assert consoles[1].endswith(",virtio-console,p16=/run/c16")


def test_virtio_scsi() -> None:
    d = domain(
        "<disk type='block'><source dev='/dev/cam/ctl'/><target dev='sda' bus='scsi'/></disk>"
        "<disk type='file'><source file='/boot.img'/><target dev='vda' bus='virtio'/></disk>"
    )
    assert "2:0,virtio-scsi,/dev/cam/ctl" in slots(build_commands(d).bhyve)


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        (
            "<serial type='nmdm'><source master='/dev/nmdm-vm1.3A' slave='/dev/nmdm-vm1.3B'/>"
            "<target port='2'/></serial>",
            "com3,/dev/nmdm-vm1.3A",
        ),
        (
            "<serial type='tcp'><source mode='bind' host='127.0.0.1' service='4444'/>"
            "<target port='3'/></serial>",
            "com4,tcp=127.0.0.1:4444",
        ),
        (
            "<serial type='tcp'><source mode='bind' host='::1' service='4444'/></serial>",
            "com1,tcp=[::1]:4444",
        ),
        ("<serial type='stdio'><target port='1'/></serial>", "com2,stdio"),
    ],
)
def test_serial_backends_and_ports(serial: str, expected: str) -> None:
    assert lpc(build_commands(domain(DISK + serial)).bhyve) == [expected]


def test_every_serial_port_is_passed_not_only_the_first() -> None:
    d = domain(DISK + NMDM1 + NMDM2)
    assert lpc(build_commands(d).bhyve) == ["com1,/dev/nmdm-vm1.1A", "com2,/dev/nmdm-vm1.2A"]
    assert d.console_paths() == [
        (1, "/dev/nmdm-vm1.1A", "/dev/nmdm-vm1.1B"),
        (2, "/dev/nmdm-vm1.2A", "/dev/nmdm-vm1.2B"),
    ]


def test_slirp_nic() -> None:
    d = domain(DISK + "<interface type='user'><model type='virtio'/></interface>")
    assert "2:0,virtio-net,slirp,mac=52:54:00:00:00:01,open" in slots(build_commands(d).bhyve)
    with pytest.raises(UnsupportedError, match="slirp"):
        build_commands(d, DEFAULT.without(BhyveCap.SLIRP))


def test_tap_comes_from_the_interface_target_or_the_resolver() -> None:
    nic = "<interface type='bridge'><source bridge='bridge0'/><model type='virtio'/>{}</interface>"
    named = domain(DISK + nic.format("<target dev='tap7'/>"))
    assert "2:0,virtio-net,tap7,mac=52:54:00:00:00:01" in slots(build_commands(named).bhyve)
    unnamed = domain(DISK + nic.format(""))
    with pytest.raises(InvalidValueError, match=r"devices\.interface\[0\]\.target\.dev"):
        build_commands(unnamed)
    cmds = build_commands(unnamed, taps=lambda i, n: f"tap{40 + i}")
    assert "2:0,virtio-net,tap40,mac=52:54:00:00:00:01" in slots(cmds.bhyve)


def test_passthrough_adds_wired_memory_and_keeps_its_address() -> None:
    d = domain(
        DISK + "<hostdev mode='subsystem' type='pci' managed='no'>"
        "<source><address domain='0x0000' bus='0x02' slot='0x00' function='0x1'/></source>"
        "<rom file='/boot/gpu.rom'/>"
        "<address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/></hostdev>"
    )
    argv = build_commands(d).bhyve
    assert "-S" in argv
    assert "7:0,passthru,2/0/1,rom=/boot/gpu.rom" in slots(argv)
    assert argv.index("7:0,passthru,2/0/1,rom=/boot/gpu.rom") < argv.index("vm1")


def test_explicit_pci_addresses_are_kept() -> None:
    d = domain(
        "<disk type='file'><source file='/a.img'/><target dev='vda' bus='virtio'/>"
        "<address type='pci' domain='0x0000' bus='0x00' slot='0x09' function='0x3'/></disk>"
    )
    assert "9:3,virtio-blk,/a.img" in slots(build_commands(d).bhyve)


def test_vnc_with_wait_and_ipv6_listen() -> None:
    d = domain(
        DISK + "<graphics type='vnc' port='5901'><listen type='address' address='::1'/></graphics>"
        "<video><driver wait='yes'/>"
        "<model type='gop'><resolution x='1280' y='720'/></model></video>",
        os=UEFI,
    )
    fbuf = [s for s in slots(build_commands(d).bhyve) if "fbuf" in s]
    assert fbuf == ["3:0,fbuf,tcp=[::1]:5901,w=1280,h=720,wait"]


def test_vnc_autoport_comes_from_the_resolver() -> None:
    d = domain(DISK + "<graphics type='vnc' autoport='yes'/>", os=UEFI)
    fbuf = [s for s in slots(build_commands(d, vnc_port=lambda g: 5977).bhyve) if "fbuf" in s]
    assert fbuf == ["3:0,fbuf,tcp=127.0.0.1:5977"]


def test_grub_guest_writes_a_device_map() -> None:
    d = parse_domain_xml(
        f"""<domain type='bhyve'><name>vm1</name><memory unit='GiB'>1</memory>
        <bootloader>/usr/local/sbin/grub-bhyve</bootloader>
        <os><type>hvm</type></os><devices>
        {DISK}{NMDM1}</devices></domain>""",
        ids=IDS,
    )
    cmds = build_commands(d)
    assert cmds.loader == (
        "/usr/local/sbin/grub-bhyve",
        "--root",
        "hd0,msdos1",
        "--device-map",
        "/var/run/bhyvesupd/grub_bhyve-vm1-device.map",
        "--memory",
        "1024",
        "--cons-dev",
        "/dev/nmdm-vm1.1A",
        "vm1",
    )
    assert cmds.device_map == "(hd0) /var/vm/vm1/disk0.img\n"


def test_topology_must_match_vcpus() -> None:
    d = domain(DISK, extra="<cpu><topology sockets='1' cores='4' threads='1'/></cpu>")
    with pytest.raises(InvalidValueError, match=r"cpu\.topology"):
        build_commands(d)


def test_vcpu_pinning_gives_one_p_per_host_cpu() -> None:
    d = domain(
        DISK,
        extra="<cputune><vcpupin vcpu='0' cpuset='2-3'/><vcpupin vcpu='1' cpuset='0-4,^1-3'/>"
        "</cputune>",
    )
    argv = build_commands(d).bhyve
    pins = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    assert pins == ["0:2", "0:3", "1:0", "1:4"]
    assert argv.index("-p") < argv.index("-m")


def test_pinning_a_vcpu_the_guest_lacks_is_refused() -> None:
    with pytest.raises(InvalidValueError) as info:
        domain(DISK, extra="<cputune><vcpupin vcpu='2' cpuset='0'/></cputune>")
    assert info.value.field == "cputune.vcpupin[0].vcpu"


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        (DEFAULT, "5:0,ahci,cd:/b.iso"),
        (DEFAULT.without(BhyveCap.AHCI32SLOT), "5:0,ahci-cd,/b.iso"),
    ],
)
def test_sata_disk_at_its_own_pci_slot(caps: object, expected: str) -> None:
    d = domain(
        DISK
        + "<disk type='file' device='cdrom'><source file='/b.iso'/><target dev='sda' bus='sata'/>"
        "<address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/></disk>"
    )
    assert expected in slots(build_commands(d, caps).bhyve)  # type: ignore[arg-type]


def test_pure_cores_do_not_import_trio() -> None:
    import subprocess
    import sys

    code = (
        "import sys, supervisor.vmm.argv, supervisor.vmm.caps, supervisor.domain.xml; "
        "sys.exit('trio' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

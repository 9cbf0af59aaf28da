"""bhyve command lines (bhyve-argv) become guests."""

from __future__ import annotations

import pytest

from supervisor.domain.model import (
    Audio,
    Channel,
    Controller,
    CpuTopology,
    Disk,
    DriveAddress,
    Filesystem,
    Hostdev,
    Input,
    Interface,
    Loader,
    PciAddress,
    Rng,
    Serial,
    Sound,
    VcpuPin,
)
from supervisor.errors import InvalidArgvError
from supervisor.vmm.native import NativeResult, domain_from_argv, domain_from_native

UUID = "5e3c2c52-4d10-11ef-8c55-002590c8d0a4"


def native(text: str, *, strict: bool = False) -> NativeResult:
    return domain_from_native(
        text, uuid_factory=lambda: UUID, mac_factory=lambda: "58:9c:fc:00:00:01", strict=strict
    )


def bhyve(options: str, name: str = "vm0", **kwargs: bool) -> NativeResult:
    return native(f"/usr/sbin/bhyve -c 1 -m 512 -H -P -s 0,hostbridge {options} {name}", **kwargs)


def refused(text: str, **kwargs: bool) -> InvalidArgvError:
    with pytest.raises(InvalidArgvError) as info:
        native(text, **kwargs)
    return info.value


def test_a_plain_guest() -> None:
    result = bhyve("-u -S -w -A")
    d = result.domain
    assert (d.name, d.uuid, d.memory_kib, d.vcpus) == ("vm0", UUID, 512 * 1024, 1)
    assert d.clock == "utc"
    assert d.wired
    assert d.features.msrs_ignore
    assert d.features.acpi
    assert not d.features.apic
    assert result.warnings == ()


def test_bhyve_and_bhyveload_are_recognised_at_any_path() -> None:
    result = native(
        "/opt/bhyve/bin/bhyveload -m 512 -d /vm/disk.img vm0\n"
        "/opt/bhyve/bin/bhyve -c 2 -m 512 -s 3,virtio-blk,/vm/disk.img vm0\n"
    )
    d = result.domain
    assert d.vcpus == 2
    assert d.os.bootloader is None
    assert d.disks[0].source == "/vm/disk.img"


def test_the_bhyve_line_may_come_first_and_shell_quoting_works() -> None:
    result = native(
        "bhyve -m 1G -s '4,virtio-blk,/vm/my disk.img' vm0\n"
        "bhyveload -m 1024 -d '/vm/my disk.img' vm0\n"
    )
    assert result.domain.disks[0].source == "/vm/my disk.img"
    assert result.domain.memory_kib == 1024 * 1024


def test_topology() -> None:
    d = native("bhyve -c sockets=2,cores=2,threads=2 vm0").domain
    assert d.vcpus == 8
    assert d.topology == CpuTopology(sockets=2, cores=2, threads=2)
    assert native("bhyve -c 4 vm0").domain.topology is None
    # bhyve's own rule: "-c 1" and then a topology of 8 do not agree
    assert refused("bhyve -c 1 -c sockets=2,cores=2,threads=2 vm0").field == "-c"


def test_every_device_keeps_its_slot() -> None:
    d = bhyve(
        "-s 1,lpc -s 2,ahci,hd:/vm/a.img,cd:/iso/b.iso -s 3:0,virtio-blk,/dev/zvol/tank/v0,ro "
        "-s 3:1,nvme,/vm/n.img,maxq=4,qsz=512 -s 4,virtio-net,tap3,mac=58:9C:FC:AA:BB:CC "
        "-s 5,e1000,slirp,open -s 6,virtio-rnd -s 7,virtio-9p,share=/srv/share,ro "
        "-s 8,virtio-console,org.qemu.guest_agent.0=/var/run/qga.sock "
        "-s 9,xhci,tablet -s 10,hda,play=/dev/dsp0,rec=/dev/dsp1 -s 11,passthru,2/0/1,rom=/r.rom "
        "-s 12,virtio-scsi,/dev/cam/ctl1.1 -l com1,/dev/nmdm-vm0.1A"
    ).domain
    assert d.controllers == (
        Controller(type="isa", index=0, address=PciAddress(slot=1)),
        Controller(type="sata", index=0, address=PciAddress(slot=2)),
        Controller(type="virtio-serial", index=0, address=PciAddress(slot=8)),
        Controller(type="usb", index=0, model="nec-xhci", address=PciAddress(slot=9)),
        Controller(type="scsi", index=0, model="virtio-scsi", address=PciAddress(slot=12)),
    )
    assert d.disks == (
        Disk(target="sda", source="/vm/a.img", bus="sata", address=DriveAddress(0, unit=0)),
        Disk(
            target="sdb",
            source="/iso/b.iso",
            device="cdrom",
            bus="sata",
            address=DriveAddress(0, unit=1),
        ),
        Disk(
            target="vda",
            source="/dev/zvol/tank/v0",
            type="block",
            bus="virtio",
            readonly=True,
            address=PciAddress(slot=3),
        ),
        Disk(
            target="nvme0n1",
            source="/vm/n.img",
            bus="nvme",
            address=PciAddress(slot=3, function=1),
            nvme_max_queues=4,
            nvme_queue_size=512,
        ),
        Disk(
            target="sdc",
            source="/dev/cam/ctl1.1",
            type="block",
            bus="scsi",
            address=DriveAddress(0),
        ),
    )
    assert d.interfaces == (
        Interface(
            mac="58:9c:fc:aa:bb:cc",
            bridge="virbr0",
            target_dev="tap3",
            address=PciAddress(slot=4),
        ),
        Interface(type="user", mac="58:9c:fc:00:00:01", model="e1000", address=PciAddress(slot=5)),
    )
    assert d.rngs == (Rng(source="/dev/random", address=PciAddress(slot=6)),)
    assert d.filesystems == (
        Filesystem(source="/srv/share", target="share", readonly=True, address=PciAddress(slot=7)),
    )
    assert d.channels == (
        Channel(name="org.qemu.guest_agent.0", path="/var/run/qga.sock", controller=0, port=0),
    )
    assert d.inputs == (Input(type="tablet", bus="usb"),)
    assert d.sounds == (Sound(audio_id=1, address=PciAddress(slot=10)),)
    assert d.audios == (Audio(id=1, input_dev="/dev/dsp0", output_dev="/dev/dsp1"),)
    assert d.hostdevs == (
        Hostdev(
            host=PciAddress(bus=2, slot=0, function=1), address=PciAddress(slot=11), rom="/r.rom"
        ),
    )
    assert d.serials == (Serial(master="/dev/nmdm-vm0.1A", slave="/dev/nmdm-vm0.1B", port=0),)


def test_ahci_hd_and_ahci_with_one_port_are_the_same_guest() -> None:
    assert bhyve("-s 2,ahci-hd,/a.img").domain == bhyve("-s 2,ahci,hd:/a.img").domain


def test_a_device_given_through_the_config_tree_is_read_the_same() -> None:
    via_o = bhyve("-o pci.0.5.0.device=virtio-blk -o pci.0.5.0.path=/d.img").domain
    assert via_o == bhyve("-s 5,virtio-blk,/d.img").domain


def test_com1_to_com4_with_nmdm_tcp_and_stdio_backends() -> None:
    d = bhyve(
        "-s 31,lpc -l com1,/dev/nmdm0A -l com2,tcp=127.0.0.1:4000 -l com3,tcp=[::1]:4001 "
        "-l com4,stdio"
    ).domain
    assert d.serials == (
        Serial(master="/dev/nmdm0A", slave="/dev/nmdm0B", port=0),
        Serial(type="tcp", port=1, host="127.0.0.1", service=4000),
        Serial(type="tcp", port=2, host="::1", service=4001),
        Serial(type="stdio", port=3),
    )


def test_a_tty_that_is_not_nmdm_is_refused() -> None:
    error = refused("bhyve -s 31,lpc -l com1,/dev/ttyu0 vm0")
    assert error.field == "-l com1"


def test_uefi_bootrom_with_variables_and_framebuffer() -> None:
    d = bhyve(
        "-s 31,lpc -l bootrom,/fw/CODE.fd,/vm/VARS.fd "
        "-s 29,fbuf,tcp=[::1]:5901,w=1280,h=720,vga=off,wait,password=pw"
    ).domain
    assert d.os.loader == Loader(path="/fw/CODE.fd", readonly=True, type="pflash")
    assert d.os.nvram == "/vm/VARS.fd"
    (graphics,) = d.graphics
    assert (graphics.port, graphics.listen, graphics.passwd) == (5901, "::1", "pw")
    assert not graphics.autoport
    (video,) = d.videos
    assert (video.resolution, video.vgaconf, video.wait) == ((1280, 720), "off", True)
    assert video.address == PciAddress(slot=29)


def test_loaders() -> None:
    d = native("/usr/sbin/bhyveload -m 512 -c /dev/nmdm0A vm0\nbhyve -m 512 vm0").domain
    assert (d.os.bootloader, d.os.bootloader_args) == (
        "/usr/sbin/bhyveload",
        "-m 512 -c /dev/nmdm0A vm0",
    )
    d = native(
        "/usr/local/sbin/grub-bhyve --root hd0,msdos1 --device-map /m --memory 512 vm0\n"
        "bhyve -m 512 vm0"
    ).domain
    assert d.os.bootloader == "/usr/local/sbin/grub-bhyve"
    assert d.os.bootloader_args == "--root hd0,msdos1 --device-map /m --memory 512 vm0"


@pytest.mark.parametrize(
    ("loader", "field"),
    [
        ("bhyveload -m 1G -d /a vm1", "bhyveload"),
        ("bhyveload -m 1G -d /a vm0", "bhyveload"),
        ("grub-bhyve -r hd0 -m /m -M 256M vm1", "grub-bhyve"),
        ("grub-bhyve -r hd0 -m /m -M 1G vm0", "grub-bhyve"),
        ("bhyveload -m lots vm0", "bhyveload"),
    ],
)
def test_loader_must_agree_with_bhyve(loader: str, field: str) -> None:
    error = refused(f"{loader}\nbhyve -m 512 vm0")
    assert error.field == field


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("bhyveload -m 512 vm0", "text"),
        ("", "text"),
        ("bhyve -m 512", None),
        ("bhyve -s 3,virtio-gpu vm0", "-s"),
        ("bhyve -s 3,virtio-rnd -s 3,virtio-rnd vm0", "-s"),
        ("bhyve -s 32,virtio-rnd vm0", "-s"),
        ("bhyve -c two vm0", "-c"),
        ("bhyve -m 0x vm0", "-m"),
        ("bhyve -m 0 vm0", "-m"),
        ("bhyve -U nope vm0", "-U"),
        ("bhyve 'bad name!'", "vmname"),
        ("bhyve -h", "argv"),
        ("bhyve -k /etc/vm.conf vm0", "-k"),
        ("bhyve -s 3,virtio-9p,/no/share vm0", "-s 0:3:0,virtio-9p"),
    ],
)
def test_clean_errors_name_the_argument(text: str, field: str | None) -> None:
    error = refused(text)
    assert error.field == field
    assert error.message


def test_what_the_model_cannot_hold_is_a_warning_or_with_strict_an_error() -> None:
    text = (
        "bhyve -m 512 -x -p 1:2 -s 3,virtio-net,netgraph,path=a:,peerhook=b "
        "-s 4,uart,stdio -s 5,virtio-blk,/d.img,nocache vm0"
    )
    result = native(text)
    assert result.domain.interfaces == ()
    assert result.domain.disks[0].source == "/d.img"
    joined = "\n".join(result.warnings)
    for needle in ("x86.x2apic=true", "vCPU 1 does not exist", "netgraph", "uart", "nocache"):
        assert needle in joined
    with pytest.raises(InvalidArgvError, match=r"x86\.x2apic"):
        native(text, strict=True)


def test_defaults_and_what_the_supervisor_always_sets_raise_no_warning() -> None:
    result = native("bhyve -A -H -P -D -o acpi_tables=true -o x86.mptable=true vm0")
    assert result.warnings == ()


def test_vcpu_pins() -> None:
    d = native("bhyve -c 2 -p 0:3 -p 0:1 -p 1:5 -o vcpu.1.cpuset=4-6 vm0").domain
    assert d.vcpu_pins == (VcpuPin(0, (1, 3)), VcpuPin(1, (4, 5, 6)))


def test_a_second_loader_is_ignored_with_a_warning() -> None:
    result = native("bhyveload -m 256M vm0\n/bin/true\nbhyve vm0")
    assert result.warnings == ("text: only one loader runs before bhyve; ignored true",)


def test_domain_from_argv_takes_argv_lists() -> None:
    result = domain_from_argv(
        ["bhyve", "-m", "1G", "vm0"], ["bhyveload", "-m", "1G", "-d", "/d.img", "vm0"]
    )
    assert result.domain.memory_kib == 1024 * 1024

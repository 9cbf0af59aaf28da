"""Capability probes: bhyve -h, bhyve -s help, the bootrom and fbuf probes, grub-bhyve."""

from __future__ import annotations

from supervisor.vmm.caps import (
    DEFAULT,
    LIBVIRT_CAPS,
    BhyveCap,
    Capabilities,
    caps_from_probe,
    parse_bhyve_help,
    parse_bootrom_probe,
    parse_device_list,
    parse_fbuf_password_probe,
    parse_grub_help,
)

# The shapes of a FreeBSD 14 bhyve's usage text (stderr of `bhyve -h`).
HELP_14 = """Usage: bhyve [-aCDeHhPSuWwxY]
       bhyve [-c [[cpus=]numcpus][,sockets=n][,cores=n][,threads=n]]
       [-G port] [-k config_file] [-l lpc] [-m mem] [-o var=value]
       [-p vcpu:hostcpu] [-r file] [-s pci] [-U uuid] vmname
       -A: create ACPI tables
       -c: number of CPUs and/or topology specification
       -u: RTC keeps UTC time
       -w: ignore unimplemented MSRs
"""
HELP_OLD = """Usage: bhyve [-abehuwxACHPSWY] [-c vcpus] [-g <gdb port>] [-l <lpc>]
       -c: # cpus (default 1)
       -u: RTC keeps UTC time
"""
S_HELP = (
    "hostbridge\namd_hostbridge\nahci\nahci-hd\nahci-cd\nvirtio-blk\nvirtio-net\n"
    "e1000\nfbuf\nhda\nlpc\nnvme\npassthru\nvirtio-9p\nvirtio-console\nvirtio-rnd\n"
    "virtio-scsi\nxhci\nuart\n"
)


def test_help_text_of_a_current_bhyve() -> None:
    caps = parse_bhyve_help(HELP_14)
    assert caps == BhyveCap.RTC_UTC | BhyveCap.CPUTOPOLOGY | BhyveCap.ACPI


def test_help_text_of_an_old_bhyve_has_no_topology() -> None:
    assert not parse_bhyve_help(HELP_OLD) & BhyveCap.CPUTOPOLOGY
    assert parse_bhyve_help(HELP_OLD) & BhyveCap.RTC_UTC


def test_device_list() -> None:
    caps = parse_device_list(S_HELP)
    for cap in (
        BhyveCap.AHCI32SLOT,
        BhyveCap.NET_E1000,
        BhyveCap.FBUF,
        BhyveCap.SOUND_HDA,
        BhyveCap.NVME,
        BhyveCap.VIRTIO_9P,
        BhyveCap.VIRTIO_RND,
        BhyveCap.XHCI,
        BhyveCap.VIRTIO_SCSI,
        BhyveCap.VIRTIO_CONSOLE,
    ):
        assert caps & cap, cap
    assert not parse_device_list("hostbridge\nvirtio-blk\n")


def test_bootrom_and_password_probes() -> None:
    assert (
        parse_bootrom_probe("bhyve: invalid lpc device configuration 'bootrom'\n") == BhyveCap.NONE
    )
    assert parse_bootrom_probe("bhyve: bootrom: missing ROM path\n") & BhyveCap.LPC_BOOTROM
    assert parse_fbuf_password_probe('Invalid fbuf emulation "password"\n') == BhyveCap.NONE
    assert parse_fbuf_password_probe("bhyve: vm_open: x\n") == BhyveCap.VNC_PASSWORD


def test_grub_help() -> None:
    assert parse_grub_help("  -c, --cons-dev=DEV   use DEV as the console\n")
    assert not parse_grub_help("  -r, --root=DEV\n")


def test_caps_from_probe_combines_everything() -> None:
    caps = caps_from_probe(HELP_14, S_HELP, "", "", "--cons-dev", slirp=True)
    assert caps.has(LIBVIRT_CAPS)
    assert caps.has(BhyveCap.SLIRP | BhyveCap.NVRAM | BhyveCap.NVME)
    assert caps.grub_consdev
    assert not caps_from_probe(HELP_14, S_HELP, grub_help_text=None).grub_consdev


def test_default_has_everything_and_can_lose_flags() -> None:
    assert all(DEFAULT.has(cap) for cap in BhyveCap)
    less = DEFAULT.without(BhyveCap.FBUF)
    assert not less.has(BhyveCap.FBUF)
    assert less.with_(BhyveCap.FBUF) == DEFAULT
    assert Capabilities().has(BhyveCap.NONE)

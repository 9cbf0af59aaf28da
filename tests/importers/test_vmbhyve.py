"""vm-bhyve guest configurations become definitions that start the same guest."""

from __future__ import annotations

import pytest

from supervisor.domain.model import Domain
from supervisor.domain.postparse import post_parse
from supervisor.domain.xml import format_domain_xml, parse_domain_xml
from supervisor.errors import InvalidValueError
from supervisor.importers.vmbhyve import (
    VmBhyveImport,
    domain_from_vmbhyve,
    parse_conf,
    switch_bridges,
)
from supervisor.vmm.argv import Commands, build_commands

SWITCHES = switch_bridges(
    {
        "switch_list": "public lan averyveryverylongname vale0",
        "type_public": "standard",
        "type_lan": "manual",
        "bridge_lan": "bridge3",
        "type_averyveryverylongname": "standard",
        "type_vale0": "vale",
    }
)
UUID = "5a3b1c2d-1111-2222-3333-444455556666"


def convert(text: str, name: str = "web", **kw: object) -> VmBhyveImport:
    conf, problems = parse_conf(text)
    assert problems == []
    kw.setdefault("switches", SWITCHES)
    return domain_from_vmbhyve(
        name,
        conf,
        vm_dir="/vm",
        uuid_factory=lambda: UUID,
        mac_factory=lambda: "58:9c:fc:00:00:01",
        **kw,  # type: ignore[arg-type]
    )


def commands(domain: Domain) -> Commands:
    """What the supervisor would run: through the XML, as a definition is stored."""
    stored = parse_domain_xml(format_domain_xml(domain).encode())
    return build_commands(
        post_parse(stored),
        loader_console=True,
        taps=lambda i, nic: nic.target_dev or f"tap{i}",
    )


def test_parse_conf_reads_values_as_vm_bhyve_does() -> None:
    conf, problems = parse_conf(
        'loader="bhyveload"\n'
        "cpu=2\n"
        "memory='1G'  # one gig\n"
        'disk0_name="disk#0.img"\n'  # '#' starts a comment even inside quotes
        '  network0_type="e1000"\n'  # leading blanks: vm-bhyve ignores the line
        "# a comment\n"
        "\n"
        "cpu=4\n"
        "this is not a setting\n"
    )
    assert conf == {"loader": "bhyveload", "cpu": "4", "memory": "1G", "disk0_name": '"disk'}
    assert problems == ["line 9: not a key=value setting: 'this is not a setting'"]


def test_switch_bridges_follow_vm_bhyve_naming() -> None:
    assert SWITCHES == {
        "public": "vm-public",
        "lan": "bridge3",
        "averyveryverylongname": None,  # a numbered bridge with a description
        "vale0": None,
    }


def test_a_bhyveload_guest_starts_with_the_same_devices() -> None:
    result = convert(
        'loader="bhyveload"\ncpu="2"\nmemory="512M"\n'
        'disk0_type="virtio-blk"\ndisk0_name="disk0.img"\n'
        'disk1_type="ahci-cd"\ndisk1_name="/iso/x.iso"\ndisk1_dev="custom"\ndisk1_opts="ro"\n'
        'network0_type="virtio-net"\nnetwork0_switch="public"\n'
        'network0_mac="58:9C:FC:0A:0B:0C"\n'
        f'uuid="{UUID.upper()}"\nvirt_random="yes"\ncomports="com1 com2"\n'
    )
    assert result.not_carried == ()
    d = result.domain
    assert (d.name, d.uuid, d.vcpus, d.memory_kib, d.clock) == ("web", UUID, 2, 512 * 1024, "utc")
    assert d.features.acpi
    assert d.interfaces[0].mac == "58:9c:fc:0a:0b:0c"
    assert d.interfaces[0].bridge == "vm-public"
    cmd = commands(d)
    assert cmd.loader == (
        "/usr/sbin/bhyveload",
        "-m",
        "512",
        "-c",
        "/dev/nmdm-web.1A",
        "-d",
        "/vm/web/disk0.img",
        "web",
    )
    argv = " ".join(cmd.bhyve)
    for piece in (
        "-c 2",
        "-m 512",
        "-A",
        "-u",
        "virtio-blk,/vm/web/disk0.img",
        "ahci,cd:/iso/x.iso",
        "virtio-net,",
        "mac=58:9c:fc:0a:0b:0c",
        "virtio-rnd",
        "-l com1,/dev/nmdm-web.1A",
        "-l com2,/dev/nmdm-web.2A",
    ):
        assert piece in argv, piece
    assert cmd.bhyve[-1] == "web"


def test_a_uefi_guest_keeps_its_firmware_variables_topology_and_screen() -> None:
    result = convert(
        'loader="uefi"\ncpu=4\ncpu_sockets=1\ncpu_cores=2\ncpu_threads=2\nmemory=2G\n'
        'wired_memory="yes"\nutctime="no"\nuefi_vars="yes"\n'
        'disk0_type="ahci-hd"\ndisk0_name="disk0"\ndisk0_dev="sparse-zvol"\n'
        'network0_type="e1000"\nnetwork0_switch="lan"\nnetwork0_device="tap7"\n'
        'graphics="yes"\ngraphics_port="5901"\ngraphics_res="1024x768"\n'
        'graphics_listen="10.0.0.1"\nvnc_password="secret"\ngraphics_wait="yes"\n'
        'xhci_mouse="yes"\nsound="yes"\nvirt_console0="org.qemu.guest_agent.0"\n'
        'passthru0="3/0/0=7:0"\n',
        name="win",
        zfs_dataset="tank/vm",
    )
    assert result.not_carried == ()
    d = result.domain
    assert d.os.loader is not None
    assert d.os.loader.path == "/usr/local/share/uefi-firmware/BHYVE_UEFI.fd"
    assert d.os.nvram == "/vm/win/uefi-vars.fd"
    assert d.os.nvram_template == "/usr/local/share/uefi-firmware/BHYVE_UEFI_VARS.fd"
    assert d.features.msrs_ignore  # vm-bhyve runs UEFI guests with -w
    assert d.wired
    assert d.clock == "localtime"
    cmd = commands(d)
    assert cmd.loader is None
    argv = " ".join(cmd.bhyve)
    for piece in (
        "-c cpus=4,sockets=1,cores=2,threads=2",
        "-m 2048",
        "-S",
        "-w",
        "-l bootrom,/usr/local/share/uefi-firmware/BHYVE_UEFI.fd,/vm/win/uefi-vars.fd",
        "ahci,hd:/dev/zvol/tank/vm/win/disk0",
        "e1000,tap7",
        "fbuf,tcp=10.0.0.1:5901,password=secret,w=1024,h=768,wait",
        "xhci,tablet",
        "hda,play=/dev/dsp0",
        "virtio-console,org.qemu.guest_agent.0=/vm/win/vtcon.org.qemu.guest_agent.0",
        "passthru,3/0/0",
    ):
        assert piece in argv, piece
    assert "-s 7:0,passthru,3/0/0" in argv
    assert "-u" not in cmd.bhyve


def test_what_cannot_be_carried_over_is_reported_and_left_out() -> None:
    result = convert(
        'loader="bhyveload"\ncpu=1\nmemory=256M\n'
        'disk0_type="virtio-blk"\ndisk0_name="disk0.img"\ndisk0_opts="nocache,direct"\n'
        'disk1_type="virtio-blk"\ndisk1_name="disk1"\ndisk1_dev="zvol"\n'
        'network0_type="virtio-net"\nnetwork0_switch="vale0"\n'
        'network1_type="virtio-net"\nnetwork1_switch="nosuch"\n'
        'network2_type="virtio-net"\nnetwork2_switch="public"\n'
        'hostbridge="amd"\npriority="10"\nlimit_pcpu="50"\nnetwork_slot_start="5"\n'
        'grub_run0="linux /vmlinuz"\nfrobnicate="yes"\n'
    )
    assert result.not_carried == (
        "grub_run0=linux /vmlinuz (the guest boots with bhyveload)",
        "disk0_opts=nocache,direct (bhyvesupd does not set nocache,direct)",
        "disk1_name=disk1 (a zvol below the guest's dataset: give the datastore's ZFS dataset)",
        "network0_switch=vale0 (the switch is not a bridge with a fixed name (vale, netgraph...))",
        "network1_switch=nosuch (no such switch in .config/system.conf)",
        "hostbridge=amd (bhyvesupd always gives the guest bhyve's standard hostbridge)",
        "frobnicate=yes (not a setting bhyvesupd knows)",
        "limit_pcpu=50 (rctl limits are not part of a definition)",
        "network_slot_start=5 (bhyvesupd assigns PCI slots itself)",
        "priority=10 (bhyvesupd runs bhyve at its own priority; use rctl or nice outside it)",
    )
    d = result.domain
    assert [disk.source for disk in d.disks] == ["/vm/web/disk0.img"]
    assert [nic.bridge for nic in d.interfaces] == ["vm-public"]


def test_nics_are_left_out_when_the_switches_are_unknown() -> None:
    result = convert(
        'loader="bhyveload"\ncpu=1\nmemory=256M\ndisk0_type="nvme"\ndisk0_name="d0"\n'
        'network0_type="virtio-net"\nnetwork0_switch="public"\n',
        switches=None,
    )
    assert result.domain.interfaces == ()
    assert result.not_carried == (
        "network0_switch=public (the switches are unknown: import from the vm_dir "
        "(.config/system.conf))",
    )
    assert "nvme,/vm/web/d0" in " ".join(commands(result.domain).bhyve)


def test_bhyveload_settings_become_the_loader_command_vm_bhyve_runs() -> None:
    result = convert(
        'loader="bhyveload"\ncpu=1\nmemory=1G\ndisk0_type="virtio-blk"\ndisk0_name="d.img"\n'
        'loader_timeout="0"\nbhyveload_loader="/boot/userboot.so"\n'
        'bhyveload_args="-e machdep.hyperthreading_allowed=0"\n'
    )
    assert result.not_carried == ()
    assert commands(result.domain).loader == (
        "/usr/sbin/bhyveload",
        "-m",
        "1G",
        "-c",
        "/dev/nmdm-web.1A",
        "-e",
        "autoboot_delay=0",
        "-l",
        "/boot/userboot.so",
        "-e",
        "machdep.hyperthreading_allowed=0",
        "-d",
        "/vm/web/d.img",
        "web",
    )


def test_grub_csm_options_and_exit_actions() -> None:
    grub = convert(
        'loader="grub"\ncpu=1\nmemory=512M\ndisk0_type="virtio-blk"\ndisk0_name="d.img"\n'
        'bhyve_options="-p 0:1 -o x86.strictmsr=false"\non_restart="shutdown"\n'
        'on_fault="restart"\n'
    ).domain
    assert grub.os.bootloader == "/usr/local/sbin/grub-bhyve"
    assert grub.commandline == ("-p", "0:1", "-o", "x86.strictmsr=false")
    assert (grub.on_reboot, grub.on_crash) == ("destroy", "restart")
    assert commands(grub).loader is not None
    csm = convert('uefi="csm"\ncpu=1\nmemory=512M\n').domain
    assert csm.os.loader is not None
    assert csm.os.loader.path.endswith("/BHYVE_UEFI_CSM.fd")


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("cpu=1\nmemory=512M\n", "loader", "without a loader"),
        ('loader="lilo"\ncpu=1\nmemory=512M\n', "loader", "'lilo'"),
        ('loader="uefi"\nmemory=512M\n', "cpu", "cpu count"),
        ('loader="uefi"\ncpu=4\ncpu_sockets=3\nmemory=512M\n', "cpu", "bhyve refuses"),
        ('loader="uefi"\ncpu=1\nmemory=lots\n', "memory", "'lots'"),
        ('loader="uefi"\ncpu=1\nmemory=1G\ncomports="com5"\n', "comports", "com5"),
        (
            'loader="uefi"\ncpu=1\nmemory=1G\ndisk0_type="scsi"\ndisk0_name="x"\n',
            "disk0_type",
            "'scsi'",
        ),
        (
            'loader="uefi"\ncpu=1\nmemory=1G\nnetwork0_type="virtio-net"\n'
            'network0_switch="public"\nnetwork0_mac="01:00:5e:00:00:01"\n',
            "network0_mac",
            "unicast",
        ),
        ('loader="uefi"\ncpu=1\nmemory=1G\nuuid="nope"\n', "uuid", "'nope'"),
    ],
)
def test_what_vm_bhyve_would_refuse_is_an_error_naming_the_key(
    text: str, field: str, words: str
) -> None:
    with pytest.raises(InvalidValueError) as info:
        convert(text)
    assert info.value.field == field
    assert words in str(info.value)
    assert str(info.value).startswith(f"{field}: ")

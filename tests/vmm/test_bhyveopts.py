"""bhyve, bhyveload and grub-bhyve command lines read as FreeBSD reads them."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import InvalidArgvError
from supervisor.vmm.bhyveopts import (
    EX_USAGE,
    EXIT_ERROR,
    EXIT_USAGE,
    MIB,
    PCI_EMULATIONS,
    BhyveCommand,
    BhyveCommandError,
    BhyveEarlyExit,
    FwCfgItem,
    PciDevice,
    TpmDevice,
    parse_bhyve_argv,
    parse_bhyveload_argv,
    parse_grub_bhyve_argv,
    parse_memsize,
)

GIB = 1 << 30


def bhyve(line: str, **kwargs: object) -> BhyveCommand:
    return parse_bhyve_argv(["/usr/sbin/bhyve", *shlex.split(line)], **kwargs)  # type: ignore[arg-type]


def refused(line: str, **kwargs: object) -> BhyveCommandError:
    with pytest.raises(BhyveCommandError) as info:
        bhyve(line, **kwargs)
    return info.value


def device(command: BhyveCommand, bus: int, slot: int, func: int) -> PciDevice:
    (found,) = [d for d in command.pci_devices() if (d.bus, d.slot, d.func) == (bus, slot, func)]
    return found


# -- the config tree and its dump ------------------------------------------------------


def test_typical_command_line_builds_the_tree_bhyve_dumps() -> None:
    command = bhyve(
        "-c 2 -m 1G -AHPw -s 0,hostbridge -s 2,virtio-blk,/dev/zvol/tank/vm0 "
        "-s 3,virtio-net,tap0 -s 31,lpc -l com1,/dev/nmdm-vm0.1A "
        "-l bootrom,/usr/local/share/uefi-firmware/BHYVE_UEFI.fd vm0"
    )
    assert command.dump() == (
        "acpi_tables=true\n"
        "memory.size=1G\n"
        "x86.vmexit_on_hlt=true\n"
        "x86.vmexit_on_pause=true\n"
        "x86.strictmsr=false\n"
        "lpc.fwcfg=bhyve\n"
        "lpc.com1.path=/dev/nmdm-vm0.1A\n"
        "lpc.bootrom=/usr/local/share/uefi-firmware/BHYVE_UEFI.fd\n"
        "cpus=2\n"
        "pci.0.0.0.device=hostbridge\n"
        "pci.0.2.0.device=virtio-blk\n"
        "pci.0.2.0.path=/dev/zvol/tank/vm0\n"
        "pci.0.3.0.device=virtio-net\n"
        "pci.0.3.0.backend=tap0\n"
        "pci.0.31.0.device=lpc\n"
        "name=vm0\n"
    )
    assert command.vmname == "vm0"
    assert command.program == "/usr/sbin/bhyve"


def test_minimal_command_line_keeps_bhyves_defaults() -> None:
    command = bhyve("vm0")
    assert dict(command.config) == {
        "acpi_tables": "true",
        "memory.size": "256M",
        "x86.strictmsr": "true",
        "lpc.fwcfg": "bhyve",
        "name": "vm0",
    }
    assert command.memsize == 256 * MIB
    assert (command.cpus, command.sockets, command.cores, command.threads) == (1, 1, 1, 1)
    assert command.acpi
    assert command.strictmsr
    assert command.rtc_localtime
    assert command.mptable
    assert not (command.wired)
    assert not (command.destroy_on_poweroff)
    assert not (command.vmexit_on_hlt)
    assert command.pci_devices() == []
    assert command.com_ports() == {}
    assert command.bootrom is None
    assert command.uuid is None
    assert command.tpm is None


def test_bhyve_may_live_at_any_path() -> None:
    command = parse_bhyve_argv(["./build/bhyve", "-m", "512", "guest"])
    assert command.program == "./build/bhyve"
    assert command.memsize == 512 * MIB


def test_a_replaced_value_moves_to_the_end_of_its_node() -> None:
    command = bhyve("-o x86.strictmsr=true -o x86.mptable=false -w vm0")
    assert [k for k in command.config if k.startswith("x86.")] == ["x86.mptable", "x86.strictmsr"]
    assert command.config["x86.strictmsr"] == "false"


def test_later_options_override_earlier_ones() -> None:
    command = bhyve("-m 1G -o memory.size=2G -c 2 -o cpus=1 vm0")
    assert command.memsize == 2 * GIB
    assert command.cpus == 1


def test_the_name_may_come_from_the_tree_instead_of_an_operand() -> None:
    assert bhyve("-o name=fromtree").vmname == "fromtree"
    # the operand is set last, so it wins over -o name=
    assert bhyve("-o name=fromtree operand").vmname == "operand"


def test_config_values_resolve_references() -> None:
    command = bhyve("-s 2,virtio-blk,/dev/zvol/tank/%(name) -o uuid=100%%-%(name) vm7")
    assert device(command, 0, 2, 0).options["path"] == "/dev/zvol/tank/%(name)"
    assert command.config_value("pci.0.2.0.path") == "/dev/zvol/tank/vm7"
    assert command.uuid == "100%-vm7"


@pytest.mark.parametrize(
    ("flag", "key", "value"),
    [
        ("-a", "x86.x2apic", "false"),
        ("-C", "memory.guest_in_core", "true"),
        ("-D", "destroy_on_poweroff", "true"),
        ("-e", "x86.strictio", "true"),
        ("-H", "x86.vmexit_on_hlt", "true"),
        ("-P", "x86.vmexit_on_pause", "true"),
        ("-S", "memory.wired", "true"),
        ("-u", "rtc.use_localtime", "false"),
        ("-W", "virtio_msix", "false"),
        ("-w", "x86.strictmsr", "false"),
        ("-x", "x86.x2apic", "true"),
        ("-Y", "x86.mptable", "false"),
    ],
)
def test_each_flag_sets_its_config_variable(flag: str, key: str, value: str) -> None:
    assert bhyve(f"{flag} vm0").config[key] == value


def test_flag_accessors() -> None:
    command = bhyve("-CDeHPSuWwxY vm0")
    assert command.guest_in_core
    assert command.destroy_on_poweroff
    assert command.strictio
    assert command.vmexit_on_hlt
    assert command.vmexit_on_pause
    assert command.wired
    assert not command.rtc_localtime
    assert not command.virtio_msix
    assert not command.strictmsr
    assert command.x2apic
    assert not command.mptable


def test_ignored_flags_are_accepted_and_change_nothing() -> None:
    command = bhyve("-I -A -A vm0")
    assert command.config == bhyve("vm0").config
    assert command.ignored_flags == ("I", "A")


def test_combined_flags_and_attached_arguments() -> None:
    command = bhyve("-AHPwm2G -c4 -s0,hostbridge vm0")
    assert command.memsize == 2 * GIB
    assert command.cpus == 4
    assert command.vmexit_on_hlt
    assert command.vmexit_on_pause
    assert not command.strictmsr
    assert device(command, 0, 0, 0).emulation == "hostbridge"


def test_an_option_argument_may_start_with_a_dash() -> None:
    assert bhyve("-U -abc vm0").uuid == "-abc"


def test_double_dash_ends_the_options() -> None:
    assert bhyve("-H -- -vm-").vmname == "-vm-"


def test_options_after_the_name_are_operands_and_refused() -> None:
    error = refused("vm0 -m 1G")
    assert error.exit_status == EXIT_USAGE
    assert "Usage: bhyve" in error.stderr


# -- usage errors (exit 1) -------------------------------------------------------------


def test_unknown_option_is_a_usage_error() -> None:
    error = refused("-b vm0")
    assert error.exit_status == EXIT_USAGE
    assert error.stderr.startswith("bhyve: illegal option -- b\nUsage: bhyve ")
    assert isinstance(error, InvalidArgvError)


def test_missing_option_argument_is_a_usage_error() -> None:
    error = refused("-m")
    assert error.exit_status == EXIT_USAGE
    assert error.stderr.startswith("bhyve: option requires an argument -- m\n")


def test_missing_vm_name_is_a_usage_error() -> None:
    error = refused("-m 1G")
    assert error.exit_status == EXIT_USAGE
    assert "missing VM name" in error.message


def test_two_names_are_a_usage_error() -> None:
    assert refused("vm0 vm1").exit_status == EXIT_USAGE


def test_usage_names_the_program_as_invoked() -> None:
    with pytest.raises(BhyveCommandError) as info:
        parse_bhyve_argv(["/opt/bin/mybhyve", "-q", "vm"])
    assert info.value.stderr.startswith("mybhyve: illegal option -- q\nUsage: mybhyve ")


def test_help_prints_usage_and_exits_zero() -> None:
    with pytest.raises(BhyveEarlyExit) as info:
        bhyve("-h")
    assert info.value.exit_status == 0
    assert info.value.stderr.startswith("Usage: bhyve [-AaCDeHhPSuWwxY]")


def test_help_is_acted_on_when_met_so_later_errors_go_unseen() -> None:
    with pytest.raises(BhyveEarlyExit):
        bhyve("-h -Z")
    # ...and earlier ones are reported first
    assert refused("-c foo=1 -h").exit_status == EX_USAGE


@pytest.mark.parametrize("arg", ["help", "hel", "h"])
def test_slot_help_lists_the_emulations(arg: str) -> None:
    with pytest.raises(BhyveEarlyExit) as info:
        bhyve(f"-s {arg}")
    assert info.value.exit_status == 0
    listed = info.value.stdout.splitlines()
    assert set(listed) == set(PCI_EMULATIONS)
    assert "virtio-blk" in listed
    assert "ahci-hd" in listed


def test_lpc_help_lists_the_lpc_devices() -> None:
    with pytest.raises(BhyveEarlyExit) as info:
        bhyve("-l help")
    assert info.value.stdout.split() == [
        "bootrom", "com1", "com2", "com3", "com4", "tpm", "pc-testdev",
    ]  # fmt: skip


def test_config_dump_prints_the_tree_and_exits_one() -> None:
    with pytest.raises(BhyveEarlyExit) as info:
        bhyve("-c 2 -s 0,hostbridge -o config.dump=1 vm0")
    assert info.value.exit_status == 1
    assert info.value.stdout.splitlines() == [
        "acpi_tables=true",
        "memory.size=256M",
        "x86.strictmsr=true",
        "lpc.fwcfg=bhyve",
        "cpus=2",
        "pci.0.0.0.device=hostbridge",
        "config.dump=1",
        "name=vm0",
    ]


def test_config_dump_happens_before_the_topology_and_memory_checks() -> None:
    with pytest.raises(BhyveEarlyExit) as info:
        bhyve("-c 3,sockets=2 -m lots -o config.dump=yes vm0")
    assert "memory.size=lots" in info.value.stdout


def test_config_dump_still_needs_a_name() -> None:
    assert refused("-o config.dump=1").exit_status == EXIT_USAGE


# -- -c topology -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("4", (4, 4, 1, 1)),
        ("cpus=4", (4, 4, 1, 1)),
        ("sockets=2,cores=2", (4, 2, 2, 1)),
        ("8,sockets=1,cores=4,threads=2", (8, 1, 4, 2)),
        ("cores=2,threads=2", (4, 1, 2, 2)),
        ("4,sockets=4", (4, 4, 1, 1)),
        ("0x10", (16, 16, 1, 1)),
        ("''", (1, 1, 1, 1)),
    ],
)
def test_topology(arg: str, expected: tuple[int, int, int, int]) -> None:
    command = bhyve(f"-c {arg} vm0")
    assert (command.cpus, command.sockets, command.cores, command.threads) == expected


def test_empty_topology_sets_every_count_to_one() -> None:
    command = bhyve("-c '' vm0")
    assert [command.config[k] for k in ("sockets", "cores", "threads", "cpus")] == ["1"] * 4


def test_topology_that_does_not_multiply_out_exits_4() -> None:
    # sockets default to cpus, so 4 cpus with 2 cores asks for 4*2 = 8
    error = refused("-c 4,cores=2 vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.stderr == (
        "bhyve: Topology (4 sockets, 2 cores, 1 threads) does not match 4 vCPUs\n"
    )


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("0", "Invalid value for cpus: '0'"),
        ("65536", "Invalid value for cpus: '65536'"),
        ("two", "Invalid value for cpus: 'two'"),
        ("2,", "Invalid value for cpus: ''"),
        ("sockets=0", "Invalid value for sockets: '0'"),
        ("cores=-1", "Invalid value for cores: '-1'"),
        ("sockets=256,cores=256,threads=2", "Computed number of vCPUs too large: 131072"),
    ],
)
def test_bad_topology_values_exit_4(arg: str, message: str) -> None:
    error = refused(f"-c {arg} vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.message == message


def test_unknown_topology_key_exits_64() -> None:
    error = refused("-c 2,dies=2 vm0")
    assert error.exit_status == EX_USAGE
    assert error.message == "invalid cpu topology '2,dies=2'"
    assert error.field == "-c"


# -- -m memory -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512 * MIB),
        ("1", MIB),
        ("1048575", 1048575 * MIB),
        ("1048576", 1048576),
        ("2147483648", 2 * GIB),
        ("1G", GIB),
        ("1g", GIB),
        ("1024M", GIB),
        ("1048576K", GIB),
        ("2T", 2 << 40),
        ("4096", 4096 * MIB),  # a bare number counts MiB...
        ("4096B", 4096),  # ...but a B suffix counts bytes
        ("4096b", 4096),
        ("0x400", 1024 * MIB),
        ("010", 8 * MIB),
        ("0x10M", 16 * MIB),
    ],
)
def test_memsize(text: str, size: int) -> None:
    assert parse_memsize(text) == size


@pytest.mark.parametrize("text", ["1.5G", "1GB", "1X", "lots", "1 G", "-1G", "1G2"])
def test_bad_memsize_exits_64(text: str) -> None:
    with pytest.raises(BhyveCommandError) as info:
        parse_memsize(text)
    assert info.value.exit_status == EX_USAGE
    assert info.value.message == f"invalid memsize '{text}'"


def test_bad_memory_option_is_refused_after_the_options() -> None:
    error = refused("-m 2Q vm0")
    assert error.exit_status == EX_USAGE
    assert error.stderr == "bhyve: invalid memsize '2Q'\n"


def test_memory_from_the_config_tree() -> None:
    assert bhyve("-o memory.size=3G vm0").memsize == 3 * GIB


@given(st.integers(min_value=0, max_value=MIB - 1))
def test_bare_numbers_below_one_mebibyte_count_mebibytes(number: int) -> None:
    assert parse_memsize(str(number)) == number * MIB


@given(st.integers(min_value=MIB, max_value=(1 << 64) - 1))
def test_bare_numbers_from_one_mebibyte_count_bytes(number: int) -> None:
    assert parse_memsize(str(number)) == number


@given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from("kKmMgGtT"))
def test_suffixes_multiply_by_powers_of_1024(number: int, suffix: str) -> None:
    shift = {"k": 10, "m": 20, "g": 30, "t": 40}[suffix.lower()]
    assert parse_memsize(f"{number}{suffix}") == number << shift


# -- -s slots --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "bsf"),
    [
        ("5", (0, 5, 0)),
        ("5:3", (0, 5, 3)),
        ("1:5:3", (1, 5, 3)),
        ("0:0:0", (0, 0, 0)),
        ("31", (0, 31, 0)),
        ("255:31:7", (255, 31, 7)),
        ("05", (0, 5, 0)),
        # bhyve reads the field with sscanf, which stops at the first non-digit
        ("3x", (0, 3, 0)),
        ("2:1junk", (0, 2, 1)),
        ("1:2:3:4", (1, 2, 3)),
        ("4:", (0, 4, 0)),
    ],
)
def test_slot_syntax(where: str, bsf: tuple[int, int, int]) -> None:
    command = bhyve(f"-s {where},virtio-rnd vm0")
    assert command.config[f"pci.{bsf[0]}.{bsf[1]}.{bsf[2]}.device"] == "virtio-rnd"


@pytest.mark.parametrize("where", ["32", "0:8", "256:0:0", "-1", "x", "", ":3"])
def test_slot_out_of_range_exits_4(where: str) -> None:
    error = refused(f"-s {where},virtio-rnd vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.stderr == f'Invalid PCI slot info field "{where},virtio-rnd"\n'


def test_slot_without_emulation_exits_4() -> None:
    error = refused("-s 3 vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.stderr == 'Invalid PCI slot info field "3"\n'


def test_unknown_emulation_exits_4() -> None:
    error = refused("-s 3:1,virtio-gpu vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.stderr == 'pci slot 0:3:1: unknown device "virtio-gpu"\n'
    assert error.field == "-s"


def test_occupied_slot_exits_4() -> None:
    error = refused("-s 3,virtio-rnd -s 0:3:0,virtio-blk,/x vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.stderr == "pci slot 0:3:0 already occupied!\n"


def test_several_functions_may_share_a_slot() -> None:
    command = bhyve("-s 3:0,virtio-rnd -s 3:1,virtio-rnd -s 3:7,virtio-rnd vm0")
    assert [d.address for d in command.pci_devices()] == ["0:3:0", "0:3:1", "0:3:7"]


def test_lpc_only_once() -> None:
    error = refused("-s 30,lpc -s 31,lpc vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.stderr.startswith("Only one LPC bridge is allowed.\n")


def test_lpc_only_on_bus_0() -> None:
    error = refused("-s 1:31:0,lpc vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.stderr.startswith("LPC bridge can be present only on bus 0.\n")


def test_devices_come_back_in_bus_slot_function_order() -> None:
    command = bhyve("-s 31,lpc -s 1:0:0,virtio-rnd -s 2:1,virtio-rnd -s 0,hostbridge vm0")
    assert [d.address for d in command.pci_devices()] == ["0:0:0", "0:2:1", "0:31:0", "1:0:0"]
    assert command.has_lpc


def test_a_device_may_be_configured_through_the_tree() -> None:
    command = bhyve("-o pci.0.4.0.device=virtio-blk -o pci.0.4.0.path=/d.img vm0")
    assert device(command, 0, 4, 0) == PciDevice(0, 4, 0, "virtio-blk", {"path": "/d.img"})


def test_a_tree_device_must_name_a_real_emulation() -> None:
    error = refused("-o pci.0.4.0.device=nonesuch vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.stderr.startswith('pci slot 0:4:0: unknown device "nonesuch"\n')
    error = refused("-o pci.0.4.0.path=/x vm0")
    assert error.stderr.startswith('pci slot 0:4:0: missing "device" value\n')
    error = refused("-o pci.0.4.0.device=ahci-hd vm0")
    assert 'legacy device "ahci-hd", use "ahci" instead' in error.stderr


# -- per-emulation options -------------------------------------------------------------


def options(arg: str) -> tuple[str, dict[str, str]]:
    found = device(bhyve(f"-s 4,{arg} vm0"), 0, 4, 0)
    return found.emulation, dict(found.options)


@pytest.mark.parametrize(
    ("arg", "emulation", "expected"),
    [
        ("hostbridge", "hostbridge", {}),
        (
            "amd_hostbridge",
            "hostbridge",
            {"pcireg.vendor": "0x1022", "pcireg.device": "0x7432"},
        ),
        ("lpc", "lpc", {}),
        ("virtio-blk,/dev/zvol/tank/d0", "virtio-blk", {"path": "/dev/zvol/tank/d0"}),
        (
            "virtio-blk,/d.img,nocache,direct,ro,sectorsize=512/4096,nodelete,ser=ABC,bootindex=1",
            "virtio-blk",
            {
                "path": "/d.img",
                "nocache": "true",
                "direct": "true",
                "ro": "true",
                "sectorsize": "512/4096",
                "nodelete": "true",
                "ser": "ABC",
                "bootindex": "1",
            },
        ),
        ("virtio-blk", "virtio-blk", {}),
        (
            "ahci,hd:/a.img,cd:/b.iso",
            "ahci",
            {
                "port.0.type": "hd",
                "port.0.path": "/a.img",
                "port.1.type": "cd",
                "port.1.path": "/b.iso",
            },
        ),
        (
            "ahci,hd:/a.img,nocache,ser=S1,cd:/b.iso,ro",
            "ahci",
            {
                "port.0.type": "hd",
                "port.0.path": "/a.img",
                "port.0.nocache": "true",
                "port.0.ser": "S1",
                "port.1.type": "cd",
                "port.1.path": "/b.iso",
                "port.1.ro": "true",
            },
        ),
        # an empty port segment still uses up its number
        ("ahci,hd:,cd:/b.iso", "ahci", {"port.1.type": "cd", "port.1.path": "/b.iso"}),
        (
            "ahci-hd,/a.img,ro",
            "ahci",
            {"port.0.type": "hd", "port.0.path": "/a.img", "port.0.ro": "true"},
        ),
        ("ahci-cd,/b.iso", "ahci", {"port.0.type": "cd", "port.0.path": "/b.iso"}),
        (
            "nvme,/dev/zvol/t/n,maxq=4,qsz=512,ioslots=16,sectsz=4096,ser=N1,eui64=12,dsm=enable",
            "nvme",
            {
                "path": "/dev/zvol/t/n",
                "maxq": "4",
                "qsz": "512",
                "ioslots": "16",
                "sectsz": "4096",
                "ser": "N1",
                "eui64": "12",
                "dsm": "enable",
            },
        ),
        ("nvme,ram=1024,ser=R", "nvme", {"ram": "1024", "ser": "R"}),
        ("virtio-scsi,/dev/cam/ctl,iid=3", "virtio-scsi", {"dev": "/dev/cam/ctl", "iid": "3"}),
        ("virtio-net,tap0", "virtio-net", {"backend": "tap0"}),
        (
            "virtio-net,tap1,mac=58:9c:fc:00:00:01,mtu=9000",
            "virtio-net",
            {"backend": "tap1", "mac": "58:9c:fc:00:00:01", "mtu": "9000"},
        ),
        (
            "virtio-net,netgraph,path=vmbridge:,peerhook=link0",
            "virtio-net",
            {"backend": "netgraph", "path": "vmbridge:", "peerhook": "link0"},
        ),
        (
            "e1000,vmnet0,mac=00:a0:98:11:22:33",
            "e1000",
            {"backend": "vmnet0", "mac": "00:a0:98:11:22:33"},
        ),
        ("virtio-rnd", "virtio-rnd", {}),
        (
            "virtio-console,org.qemu.guest_agent.0=/var/run/q.sock,c2=/tmp/c2",
            "virtio-console",
            {
                "port.0.name": "org.qemu.guest_agent.0",
                "port.0.path": "/var/run/q.sock",
                "port.1.name": "c2",
                "port.1.path": "/tmp/c2",
            },
        ),
        (
            "virtio-9p,share=/srv/share,ro",
            "virtio-9p",
            {"sharename": "share", "path": "/srv/share", "ro": "true"},
        ),
        ("virtio-input,/dev/input/event0", "virtio-input", {"path": "/dev/input/event0"}),
        ("passthru,ppt0", "passthru", {"pptdev": "ppt0"}),
        (
            "passthru,2/0/1,rom=/gpu.rom",
            "passthru",
            {"bus": "2", "slot": "0", "func": "1", "rom": "/gpu.rom"},
        ),
        ("passthru,pci0:6:5:0", "passthru", {"bus": "6", "slot": "5", "func": "0"}),
        ("passthru,pci3:0:0", "passthru", {"bus": "3", "slot": "0", "func": "0"}),
        (
            "fbuf,tcp=0.0.0.0:5900,w=1024,h=768,wait",
            "fbuf",
            {"tcp": "0.0.0.0:5900", "w": "1024", "h": "768", "wait": "true"},
        ),
        (
            "fbuf,rfb=[::1]:5901,password=secret,vga=off",
            "fbuf",
            {"rfb": "[::1]:5901", "password": "secret", "vga": "off"},
        ),
        ("xhci,tablet", "xhci", {"slot.1.device": "tablet"}),
        ("hda,play=/dev/dsp0,rec=/dev/dsp1", "hda", {"play": "/dev/dsp0", "rec": "/dev/dsp1"}),
        ("uart,tcp=127.0.0.1:4444", "uart", {"path": "tcp=127.0.0.1:4444"}),
        ("uart,stdio", "uart", {"path": "stdio"}),
    ],
)
def test_legacy_device_options(arg: str, emulation: str, expected: dict[str, str]) -> None:
    assert options(arg) == (emulation, expected)


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("ahci,/a.img", 'Missing or invalid type for port 0: "/a.img"'),
        ("ahci,hd:/a,xd:/b", None),  # ",xd:" is an option of port 0, not a new port
        ("virtio-console,noequals", "vtcon: port noequals requires a path"),
        ("virtio-9p,a=/x,b=/y", "virtio-9p: more than one share name given"),
        ("passthru,eth0", 'passthru: invalid options "eth0"'),
        ("virtio-input", None),
        ("virtio-blk,/x,bad.key=1", "Invalid config node name bad.key"),
    ],
)
def test_bad_device_options_exit_4(arg: str, message: str | None) -> None:
    if arg == "ahci,hd:/a,xd:/b":
        assert options(arg)[1]["port.0.xd:/b"] == "true"
        return
    error = refused(f"-s 4,{arg} vm0")
    assert error.exit_status == EXIT_ERROR
    if message is not None:
        assert message in error.stderr


def test_virtio_console_takes_at_most_16_ports() -> None:
    ports = ",".join(f"p{i}=/tmp/p{i}" for i in range(16))
    assert len(options(f"virtio-console,{ports}")[1]) == 32
    error = refused(f"-s 4,virtio-console,{ports},p16=/tmp/p16 vm0")
    assert error.stderr == "vtcon: too many ports\n"


def test_ahci_takes_at_most_32_ports_and_ignores_the_rest() -> None:
    ports = ",".join(f"hd:/d{i}" for i in range(34))
    found = options(f"ahci,{ports}")[1]
    assert found["port.31.path"] == "/d31"
    assert "port.32.path" not in found


def test_unknown_usb_device_only_warns() -> None:
    command = bhyve("-s 30,xhci,tablet,mouse,tablet vm0")
    assert dict(device(command, 0, 30, 0).options) == {"slot.1.device": "tablet"}
    assert command.warnings == ('bhyve: USB device "mouse" does not exist',)


# -- -l LPC devices --------------------------------------------------------------------


def test_com_ports() -> None:
    command = bhyve(
        "-s 31,lpc -l com1,/dev/nmdm0A -l COM2,stdio -l com3,tcp=127.0.0.1:4000 "
        "-l com4,/dev/nmdm3A vm0"
    )
    assert command.com_ports() == {
        1: "/dev/nmdm0A",
        2: "stdio",
        3: "tcp=127.0.0.1:4000",
        4: "/dev/nmdm3A",
    }
    assert command.config["lpc.com2.path"] == "stdio"


def test_com_port_backend_keeps_its_commas() -> None:
    assert bhyve("-l com1,tcp=[::1]:4000,x vm0").com_ports() == {1: "tcp=[::1]:4000,x"}


def test_com_port_without_backend_exits_64() -> None:
    error = refused("-l com1 vm0")
    assert error.exit_status == EX_USAGE
    assert error.message == "invalid lpc device configuration 'com1'"


def test_unknown_lpc_device_exits_64() -> None:
    error = refused("-l com5,/dev/nmdm5A vm0")
    assert error.exit_status == EX_USAGE
    assert error.stderr == "bhyve: invalid lpc device configuration 'com5,/dev/nmdm5A'\n"


def test_bootrom_with_and_without_vars() -> None:
    command = bhyve("-l bootrom,/fw/CODE.fd,/vm/VARS.fd vm0")
    assert (command.bootrom, command.bootvars) == ("/fw/CODE.fd", "/vm/VARS.fd")
    command = bhyve("-l bootrom,/fw/UEFI.fd vm0")
    assert (command.bootrom, command.bootvars) == ("/fw/UEFI.fd", None)


def test_bootrom_extra_options_go_under_lpc() -> None:
    command = bhyve("-l bootrom,/fw/CODE.fd,fwcfg=qemu vm0")
    assert command.bootvars is None
    assert command.fwcfg == "qemu"
    command = bhyve("-l bootrom,/fw/CODE.fd,/vm/VARS.fd,fwcfg=qemu vm0")
    assert (command.bootvars, command.fwcfg) == ("/vm/VARS.fd", "qemu")


def test_bootrom_without_a_file_exits_4() -> None:
    error = refused("-l bootrom vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.message == 'invalid bootrom option "bootrom"'


def test_tpm() -> None:
    assert bhyve("-l tpm,swtpm,/var/run/swtpm.sock vm0").tpm == TpmDevice(
        "swtpm", "/var/run/swtpm.sock", "2.0"
    )
    assert bhyve("-l tpm,passthru,/dev/tpm0,version=1.2 vm0").tpm == TpmDevice(
        "passthru", "/dev/tpm0", "1.2"
    )
    assert refused("-l tpm vm0").exit_status == EXIT_ERROR
    assert refused("-l tpm,swtpm vm0").message == 'invalid tpm path "tpm,swtpm"'


def test_pc_testdev() -> None:
    assert bhyve("-l pc-testdev vm0").pc_testdev
    assert not bhyve("vm0").pc_testdev


# -- -o, -k and the tree's rules -------------------------------------------------------


@pytest.mark.parametrize("arg", ["novalue", "key=", "=", "memory.size"])
def test_bad_config_option_exits_64(arg: str) -> None:
    error = refused(f"-o {arg} vm0")
    assert error.exit_status == EX_USAGE
    assert error.message == f"invalid configuration option '{arg}'"


def test_a_value_cannot_become_a_node_nor_a_node_a_value() -> None:
    error = refused("-o memory.size.low=1 vm0")
    assert error.exit_status == EXIT_ERROR
    assert "is a child of existing variable memory.size" in error.message
    error = refused("-s 3,virtio-rnd -o pci.0.3=x vm0")
    assert error.exit_status == EXIT_ERROR
    assert "existing node" in error.message


def test_empty_node_names_are_refused() -> None:
    error = refused("-o a..b=1 vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.message == "Failed to create configuration node a."


def test_config_file() -> None:
    files = {
        "/etc/vm0.conf": (
            "# a guest\n"
            "\n"
            "name=vm0\n"
            "cpus=2\n"
            "memory.size=2G\n"
            "pci.0.0.0.device=hostbridge\n"
            "pci.0.4.0.device=virtio-blk\n"
            "pci.0.4.0.path=/d.img"
        )
    }
    command = bhyve("-k /etc/vm0.conf -H", read_file=files.__getitem__)
    assert (command.vmname, command.cpus, command.memsize) == ("vm0", 2, 2 * GIB)
    assert device(command, 0, 4, 0).options == {"path": "/d.img"}
    assert command.vmexit_on_hlt


def test_config_file_is_applied_in_order_with_the_other_options() -> None:
    files = {"f": "memory.size=2G\n"}
    assert bhyve("-m 1G -k f vm0", read_file=files.__getitem__).memsize == 2 * GIB
    assert bhyve("-k f -m 1G vm0", read_file=files.__getitem__).memsize == GIB


@pytest.mark.parametrize(("text", "line"), [("a=1\nnoequals\n", 2), ("x=\n", 1)])
def test_bad_config_file_line_exits_4(text: str, line: int) -> None:
    error = refused("-k /c vm0", read_file={"/c": text}.__getitem__)
    assert error.exit_status == EXIT_ERROR
    assert error.message == f"/c line {line}: invalid config option"


def test_missing_config_file_exits_4(tmp_path: object) -> None:
    error = refused(f"-k {tmp_path}/absent.conf vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.message.startswith(f"Failed to open configuration file {tmp_path}/absent.conf")


def test_dump_read_back_through_a_config_file_gives_the_same_tree() -> None:
    original = bhyve(
        "-c sockets=2,cores=2 -m 3G -Hw -u -s 0,hostbridge -s 3,ahci,hd:/a,cd:/b "
        "-s 4,virtio-net,tap0,mac=58:9c:fc:00:00:01 -s 31,lpc -l com1,/dev/nmdm0A "
        "-l bootrom,/r.fd,/v.fd -p 0:1 -p 1:2 -U 5e3c2c52-4d10-11ef-8c55-002590c8d0a4 vm0"
    )
    reread = bhyve("-k dump", read_file={"dump": original.dump()}.__getitem__)
    assert reread.config == original.config
    assert reread.pci_devices() == original.pci_devices()


def test_invalid_boolean_exits_4() -> None:
    error = refused("-o x86.vmexit_on_hlt=maybe vm0")
    assert error.exit_status == EXIT_ERROR
    assert error.message == "Invalid value maybe for boolean variable x86.vmexit_on_hlt"


@pytest.mark.parametrize("word", ["true", "ON", "Yes", "1"])
def test_boolean_words(word: str) -> None:
    assert bhyve(f"-o memory.wired={word} vm0").wired


# -- -p pins ---------------------------------------------------------------------------


def test_pins_accumulate_per_vcpu() -> None:
    command = bhyve("-c 2 -p 0:1 -p 0:3 -p 1:2 vm0")
    assert command.config["vcpu.0.cpuset"] == "1,3"
    assert command.vcpu_pins == {0: frozenset({1, 3}), 1: frozenset({2})}


def test_pins_through_the_tree_accept_ranges() -> None:
    command = bhyve("-c 2 -o vcpu.1.cpuset=4-7,9 vm0")
    assert command.vcpu_pins == {1: frozenset({4, 5, 6, 7, 9})}


def test_pins_for_vcpus_the_guest_lacks_are_ignored() -> None:
    command = bhyve("-c 1 -p 5:1 -o vcpu.6.cpuset=junk vm0")
    assert command.vcpu_pins == {}


@pytest.mark.parametrize(
    ("arg", "first_line"),
    [
        ("0", "invalid format: 0"),
        ("x:1", "invalid format: x:1"),
        ("-1:2", "invalid vcpu '-1'"),
        ("0:1024", "hostcpu '1024' outside valid range from 0 to 1023"),
        ("0:-1", "hostcpu '-1' outside valid range from 0 to 1023"),
    ],
)
def test_bad_pin_exits_64(arg: str, first_line: str) -> None:
    error = refused(f"-p {arg} vm0")
    assert error.exit_status == EX_USAGE
    assert error.stderr == (f"{first_line}\nbhyve: invalid vcpu pinning configuration '{arg}'\n")


@pytest.mark.parametrize("cpuset", ["junk", "3-1", "1-2-3", "2048", "1;2"])
def test_bad_cpuset_exits_4(cpuset: str) -> None:
    assert refused(f"-o vcpu.0.cpuset={cpuset} vm0").exit_status == EXIT_ERROR


# -- the remaining options -------------------------------------------------------------


def test_uuid_keyboard_and_gdb() -> None:
    command = bhyve("-U 5e3c2c52-4d10-11ef-8c55-002590c8d0a4 -K fr -G w127.0.0.1:1234 vm0")
    assert command.uuid == "5e3c2c52-4d10-11ef-8c55-002590c8d0a4"
    assert command.keyboard_layout == "fr"
    assert command.gdb == ("127.0.0.1", "1234", True)
    assert bhyve("-G 1234 vm0").gdb == (None, "1234", False)
    assert bhyve("vm0").gdb is None


def test_fw_cfg_items() -> None:
    command = bhyve("-f name=opt/a,string=hello -f opt/b,file=/etc/b vm0")
    assert command.fw_cfg == (
        FwCfgItem("opt/a", "string", "hello"),
        FwCfgItem("opt/b", "file", "/etc/b"),
    )


@pytest.mark.parametrize("arg", ["opt/a", "opt/a,data=x", "x" * 56 + ",string=y"])
def test_bad_fw_cfg_item_exits_64(arg: str) -> None:
    error = refused(f"-f {arg} vm0")
    assert error.exit_status == EX_USAGE
    assert error.message == f"invalid fwcfg item '{arg}'"


def test_numa_domains() -> None:
    command = bhyve("-n id=0,size=2G,cpus=0-1 -n id=1,size=1G vm0")
    assert command.config["domains.0.size"] == "2G"
    assert command.config["domains.0.cpus"] == "0-1"
    assert command.config["domains.1.size"] == "1G"
    assert refused("-n size=1G vm0").exit_status == EX_USAGE
    assert refused("-n id=0,color=red vm0").exit_status == EX_USAGE


def test_errors_are_invalid_argv_errors_naming_the_option() -> None:
    error = refused("-s 3,bogus vm0")
    assert isinstance(error, InvalidArgvError)
    assert error.to_data()["field"] == "-s"
    assert error.to_data()["detail"] == {"exit_status": EXIT_ERROR}


# -- properties ------------------------------------------------------------------------

_slot_addresses = st.tuples(st.integers(0, 255), st.integers(0, 31), st.integers(0, 7)).filter(
    lambda bsf: bsf != (0, 31, 0)
)


@given(st.lists(_slot_addresses, min_size=1, max_size=8, unique=True))
def test_every_free_address_takes_a_device_and_none_takes_two(
    addresses: list[tuple[int, int, int]],
) -> None:
    argv = ["bhyve"]
    for bus, slot, func in addresses:
        argv += ["-s", f"{bus}:{slot}:{func},virtio-rnd"]
    command = parse_bhyve_argv([*argv, "vm"])
    assert [(d.bus, d.slot, d.func) for d in command.pci_devices()] == sorted(addresses)
    bus, slot, func = addresses[0]
    with pytest.raises(BhyveCommandError) as info:
        parse_bhyve_argv([*argv, "-s", f"{bus}:{slot}:{func},virtio-rnd", "vm"])
    assert info.value.exit_status == EXIT_ERROR


_config_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r,=%"), min_size=1
)


@given(
    path=_config_text,
    options=st.dictionaries(
        st.sampled_from(["nocache", "ro", "direct", "nodelete", "ser", "bootindex"]),
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\n,"), min_size=1
        ),
    ),
)
def test_block_options_land_as_keys(path: str, options: dict[str, str]) -> None:
    conf = ",".join([path, *(f"{k}={v}" for k, v in options.items())])
    command = parse_bhyve_argv(["bhyve", "-s", f"5,virtio-blk,{conf}", "vm"])
    assert dict(device(command, 0, 5, 0).options) == {"path": path, **options}


# -- bhyveload -------------------------------------------------------------------------


def test_bhyveload() -> None:
    command = parse_bhyveload_argv(
        [
            "/usr/sbin/bhyveload", "-m", "1G", "-c", "/dev/nmdm0A", "-d", "/d0.img",
            "-d", "/cd.iso", "-e", "boot_verbose=YES", "-h", "/boot", "-S", "-C", "vm0",
        ]
    )  # fmt: skip
    assert command.vmname == "vm0"
    assert command.memsize == GIB
    assert command.console == "/dev/nmdm0A"
    assert command.disks == ("/d0.img", "/cd.iso")
    assert command.env == ("boot_verbose=YES",)
    assert command.host_path == "/boot"
    assert command.wired
    assert command.guest_in_core
    assert command.loader is None


def test_bhyveload_defaults() -> None:
    command = parse_bhyveload_argv(["bhyveload", "vm0"])
    assert command.memsize == 256 * MIB
    assert command.console is None
    assert command.disks == ()


def test_bhyveload_memory_follows_bhyves_rule() -> None:
    assert parse_bhyveload_argv(["bhyveload", "-m", "512", "v"]).memsize == 512 * MIB


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["-m", "1Q", "v"], EX_USAGE, "Invalid memsize '1Q'"),
        (["-l", "/a.so", "-l", "/b.so", "v"], EX_USAGE, "-l can only be given once"),
        (["-x", "v"], EXIT_USAGE, "illegal option -- x"),
        (["-m"], EXIT_USAGE, "option requires an argument -- m"),
        ([], EXIT_USAGE, "missing VM name"),
        (["a", "b"], EXIT_USAGE, "more than one VM name"),
    ],
)
def test_bhyveload_refusals(argv: list[str], status: int, message: str) -> None:
    with pytest.raises(BhyveCommandError) as info:
        parse_bhyveload_argv(["bhyveload", *argv])
    assert (info.value.exit_status, info.value.message) == (status, message)


def test_bhyveload_usage_text() -> None:
    with pytest.raises(BhyveCommandError) as info:
        parse_bhyveload_argv(["/usr/sbin/bhyveload"])
    assert info.value.stderr.startswith("usage: bhyveload [-CS] [-c <console-device>]")


# -- grub-bhyve ------------------------------------------------------------------------


def test_grub_bhyve_long_options_as_libvirt_writes_them() -> None:
    command = parse_grub_bhyve_argv(
        [
            "/usr/local/sbin/grub-bhyve", "--root", "hd0,msdos1", "--device-map",
            "/var/run/map", "--memory", "1024", "--cons-dev", "/dev/nmdm0B", "vm0",
        ]
    )  # fmt: skip
    assert command.vmname == "vm0"
    assert command.root == "hd0,msdos1"
    assert command.device_map == "/var/run/map"
    assert command.memsize == GIB
    assert command.cons_dev == "/dev/nmdm0B"


def test_grub_bhyve_short_and_equals_forms_and_options_after_the_name() -> None:
    command = parse_grub_bhyve_argv(
        ["grub-bhyve", "-m", "/map", "-rcd", "vm0", "-M512M", "--grub-cfg=/g.cfg",
         "-d", "/boot/grub", "-S", "--verb"]
    )  # fmt: skip
    assert (command.device_map, command.root, command.memsize) == ("/map", "cd", 512 * MIB)
    assert (command.grub_cfg, command.directory) == ("/g.cfg", "/boot/grub")
    assert command.wired
    assert command.verbose
    assert command.vmname == "vm0"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus", "v"], "unrecognized option '--bogus'"),
        (["--memory", "x", "v"], "Invalid guest memory size 'x'"),
        (["-M"], "option requires an argument -- 'M'"),
        (["-q", "v"], "invalid option -- 'q'"),
        (["--root"], "option '--root' requires an argument"),
        (["--evga=1", "v"], "option '--evga' doesn't allow an argument"),
        (["-r", "hd0"], "missing VM name"),
        (["a", "b"], "more than one VM name"),
    ],
)
def test_grub_bhyve_refusals_exit_64(argv: list[str], message: str) -> None:
    with pytest.raises(BhyveCommandError) as info:
        parse_grub_bhyve_argv(["grub-bhyve", *argv])
    assert info.value.exit_status == EX_USAGE
    assert info.value.message == message

"""Builder and parser agree: model -> argv -> model, and argv -> model -> argv.

1. For every model the builder accepts, parsing what it builds gives the model back, on
   the fields a command line carries (not the UUID, lifecycle policy, disk target names
   or bridge names, which bhyve never sees).
2. For every command line the parser accepts, building from what it parsed gives the
   same VM: compared through bhyve's own reading of both command lines (bhyveopts), so
   the same devices sit at the same slots with the same options.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.domain.model import (
    Channel,
    Controller,
    CpuTopology,
    Disk,
    Domain,
    DriveAddress,
    Features,
    Filesystem,
    Interface,
    Loader,
    Os,
    PciAddress,
    Rng,
    Serial,
    VcpuPin,
)
from supervisor.vmm.argv import build_bhyve_argv, build_commands
from supervisor.vmm.bhyveopts import BhyveCommand, parse_bhyve_argv
from supervisor.vmm.caps import DEFAULT
from supervisor.vmm.loader import boot_disk
from supervisor.vmm.native import domain_from_argv

UUID = "5e3c2c52-4d10-11ef-8c55-002590c8d0a4"
_names = st.from_regex(r"[a-z][a-z0-9._-]{0,15}", fullmatch=True)
_paths = st.from_regex(r"/(vm|dev/zvol/tank)/[a-z0-9]{1,8}(\.img)?", fullmatch=True)
_macs = st.tuples(*[st.integers(0, 255)] * 5).map(lambda t: "58:" + ":".join(f"{b:02x}" for b in t))


# -- model -> argv -> model ------------------------------------------------------------


@st.composite
def domains(draw: st.DrawFn) -> Domain:
    slots = iter(draw(st.permutations(range(2, 31))))

    def address() -> PciAddress:
        return PciAddress(slot=next(slots), function=draw(st.integers(0, 7)))

    def kind(path: str) -> Any:
        return "block" if path.startswith("/dev/") else "file"

    disks: list[Disk] = []
    controllers: list[Controller] = []
    for i, path in enumerate(draw(st.lists(_paths, max_size=3))):
        disks.append(
            Disk(target=f"vd{'abc'[i]}", source=path, type=kind(path), bus="virtio",
                 readonly=draw(st.booleans()), address=address())
        )  # fmt: skip
    sata = draw(st.lists(st.tuples(_paths, st.booleans()), max_size=3))
    if sata:
        controllers.append(Controller(type="sata", index=0, address=address()))
        for unit, (path, cdrom) in enumerate(sata):
            disks.append(
                Disk(target=f"sd{'abc'[unit]}", source=path, type=kind(path), bus="sata",
                     device="cdrom" if cdrom else "disk", address=DriveAddress(0, unit=unit))
            )  # fmt: skip
    nics = tuple(
        Interface(mac=mac, model=model, bridge="virbr0", target_dev=f"tap{n}", address=address())
        for n, (mac, model) in enumerate(
            draw(st.lists(st.tuples(_macs, st.sampled_from(["virtio", "e1000"])), max_size=2))
        )
    )
    coms = draw(st.lists(st.integers(1, 4), unique=True, max_size=3))
    serials = tuple(
        Serial(master=f"/dev/nmdm-x.{c}A", slave=f"/dev/nmdm-x.{c}B", port=c - 1) for c in coms
    )
    bootrom = draw(st.booleans())
    if serials or bootrom:
        controllers.append(Controller(type="isa", index=0, address=address()))
    channels: tuple[Channel, ...] = ()
    if draw(st.booleans()):
        controllers.append(Controller(type="virtio-serial", index=0, address=address()))
        channels = (Channel(name="org.qemu.guest_agent.0", path="/var/run/q.sock", controller=0,
                            port=0),)  # fmt: skip
    sockets, cores, threads = draw(st.tuples(*[st.integers(1, 2)] * 3))
    topology = draw(st.sampled_from([None, CpuTopology(sockets, cores, threads)]))
    vcpus = topology.vcpus if topology else draw(st.integers(1, 16))
    pinned = draw(st.lists(st.integers(0, vcpus - 1), unique=True, max_size=2))
    pins = tuple(
        VcpuPin(v, tuple(sorted(draw(st.sets(st.integers(0, 63), min_size=1, max_size=3)))))
        for v in sorted(pinned)
    )
    os = Os()
    if bootrom:
        os = Os(loader=Loader(path="/fw/CODE.fd", readonly=True, type="pflash"),
                nvram=draw(st.sampled_from([None, "/vm/VARS.fd"])))  # fmt: skip
    elif not disks:
        os = Os(bootloader="/usr/local/bin/loader", bootloader_args="--go")
    return Domain(
        name=draw(_names),
        memory_kib=draw(st.integers(1, 8192)) * 1024,
        vcpus=vcpus,
        topology=topology,
        vcpu_pins=pins,
        wired=draw(st.booleans()),
        clock=draw(st.sampled_from(["utc", "localtime"])),
        features=Features(*draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))),
        os=os,
        disks=tuple(disks),
        controllers=tuple(controllers),
        interfaces=nics,
        serials=serials,
        channels=channels,
        rngs=tuple(
            Rng(source="/dev/random", address=address()) for _ in range(draw(st.integers(0, 1)))
        ),
        filesystems=tuple(
            Filesystem(source=f"/srv/{t}", target=t, readonly=ro, address=address())
            for t, ro in draw(st.lists(st.tuples(_names, st.booleans()), max_size=2))
        ),
    )


def _by_address(items: tuple[Any, ...]) -> tuple[Any, ...]:
    # a command line orders devices by slot, a model by document order
    return tuple(sorted(items, key=lambda item: repr(getattr(item, "address", None))))


def carried(d: Domain) -> Domain:
    """*d* reduced to what a command line carries, devices in slot order."""
    return attrs.evolve(
        d,
        uuid=None,
        current_memory_kib=None,
        on_reboot="restart",
        # bhyveload's -d says which disk boots, not how the model spelled it (see below)
        disks=_by_address(tuple(attrs.evolve(x, target="xda", boot_order=None) for x in d.disks)),
        controllers=_by_address(d.controllers),
        interfaces=_by_address(d.interfaces),
        filesystems=_by_address(d.filesystems),
        rngs=_by_address(d.rngs),
        serials=tuple(sorted(d.serials, key=lambda serial: serial.port or 0)),
    )


@settings(max_examples=150)
@given(domains())
def test_parse_of_build_gives_the_model_back(domain: Domain) -> None:
    commands = build_commands(domain, DEFAULT)
    result = domain_from_argv(commands.bhyve, commands.loader, uuid_factory=lambda: UUID)
    assert result.warnings == ()
    assert carried(result.domain) == carried(domain)
    if commands.loader is not None and domain.os.bootloader is None:
        assert boot_disk(result.domain).source == boot_disk(domain).source


# -- argv -> model -> argv -------------------------------------------------------------


def vm(command: BhyveCommand) -> tuple[object, ...]:
    """What makes two bhyve command lines the same VM, as bhyve reads them."""
    return (
        command.vmname,
        command.memsize,
        (command.cpus, command.sockets, command.cores, command.threads),
        command.wired,
        command.rtc_localtime,
        command.strictmsr,
        command.bootrom,
        command.bootvars,
        command.com_ports(),
        command.vcpu_pins,
        command.pci_devices(),
    )


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    slots = iter(draw(st.permutations(range(1, 31))))

    def at() -> str:
        return f"{next(slots)}:{draw(st.integers(0, 7))}"

    argv = ["/usr/sbin/bhyve"]
    cpus = draw(st.sampled_from(["2", "sockets=2,cores=1,threads=2", "cpus=1"]))
    argv += ["-c", cpus, "-m", draw(st.sampled_from(["512", "1G", "2048M", "1073741824"]))]
    argv += draw(st.lists(st.sampled_from(["-S", "-A", "-I", "-w", "-u"]), unique=True))
    last_vcpu = {"2": 1, "cpus=1": 0}.get(cpus, 3)
    pins = st.tuples(st.integers(0, last_vcpu), st.integers(0, 7))
    for vcpu, host in draw(st.lists(pins, max_size=3)):
        argv += ["-p", f"{vcpu}:{host}"]
    argv += ["-H", "-P", "-s", "0:0,hostbridge"]
    devices = []
    for path in draw(st.lists(_paths, max_size=3)):
        devices.append(f"{at()},virtio-blk,{path}" + draw(st.sampled_from(["", ",ro"])))
    ports = draw(st.lists(st.tuples(st.sampled_from(["hd", "cd"]), _paths), max_size=3))
    if ports:
        devices.append(f"{at()},ahci," + ",".join(f"{k}:{p}" for k, p in ports))
    for n, mac in enumerate(draw(st.lists(_macs, max_size=2))):
        devices.append(f"{at()},{draw(st.sampled_from(['virtio-net', 'e1000']))},tap{n},mac={mac}")
    if draw(st.booleans()):
        devices.append(f"{at()},virtio-rnd")
    if draw(st.booleans()):
        devices.append(f"{at()},virtio-9p,share=/srv/share")
    if draw(st.booleans()):
        devices.append(f"{at()},virtio-console,org.qemu.guest_agent.0=/var/run/q.sock")
    coms = draw(st.lists(st.integers(1, 4), unique=True, max_size=3))
    bootrom = draw(st.booleans())
    if coms or bootrom:
        devices.append(f"{at()},lpc")
    for dev in draw(st.permutations(devices)):
        argv += ["-s", dev]
    if bootrom:
        argv += ["-l", "bootrom,/fw/CODE.fd" + draw(st.sampled_from(["", ",/vm/VARS.fd"]))]
    for com in coms:
        argv += ["-l", f"com{com},/dev/nmdm{com}A"]
    return [*argv, draw(_names)]


@settings(max_examples=150)
@given(command_lines())
def test_build_of_parse_is_the_same_vm(argv: list[str]) -> None:
    result = domain_from_argv(argv, uuid_factory=lambda: UUID)
    assert result.warnings == ()
    rebuilt = build_bhyve_argv(result.domain, DEFAULT)
    assert vm(parse_bhyve_argv(list(rebuilt))) == vm(parse_bhyve_argv(argv))

"""DomainXMLFromNative for format ``bhyve-argv``: command lines become a :class:`Domain`.

Theory of operation
-------------------

The text holds a bhyve command and, optionally, the loader run before it (bhyveload,
grub-bhyve or any program), one command per line (:func:`split_command_text`). The bhyve
command is read by :func:`parse_bhyve_argv`, so this module sees bhyve's own config tree,
never raw options: ``-s 3,ahci-hd,/x``, ``-s 3,ahci,hd:/x`` and ``-o pci.0.3.0.device=ahci
-o pci.0.3.0.port.0.type=hd -o pci.0.3.0.port.0.path=/x`` are one and the same VM and give
one and the same model. Then every tree node is mapped to the model and marked as used;
whatever is left is something the model cannot hold.

Three outcomes for a piece of the command line:

* it maps to the model: every PCI function keeps its bus:slot:function, so the builder
  (:mod:`supervisor.vmm.argv`) puts it back where it was;
* bhyve itself would refuse it (unknown emulation, slot used twice, bad number, no VM
  name), or the loader disagrees with bhyve (name, memory): :class:`InvalidArgvError`;
* bhyve accepts it but the model has no place for it (a netgraph NIC, a PCI UART,
  ``x86.x2apic``, a pin for a vCPU the guest lacks): a warning, and the piece is left out; with
  ``strict=True`` it is an error instead.

libvirt compatibility (CASES.md §6.4): where libvirt's argv2xml parser gives a result the
model can express, this module gives the same one (clock ``localtime`` unless ``-u``,
``on_reboot`` ``destroy``, NICs on bridge ``virbr0``, a NIC with an option other than
``mac=`` dropped with a warning, an unparsable MAC kept as ``00:00:00:00:00:00``,
bhyveload's ``-d`` disk getting a boot order from its position). It deliberately differs
where libvirt loses information: it keeps every device libvirt drops (the LPC bridge,
AHCI controllers, the bootrom, 9p shares...), reads COM3 and COM4 and tcp/stdio
consoles, and recognises bhyve and bhyveload at any path. tests/conformance lists each
difference.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping, Sequence

import attrs

from supervisor._record import Record
from supervisor.domain.model import (
    Audio,
    Channel,
    Controller,
    CpuTopology,
    Disk,
    Domain,
    DriveAddress,
    Features,
    Filesystem,
    Graphics,
    Hostdev,
    Input,
    Interface,
    Loader,
    Os,
    PciAddress,
    Rng,
    Serial,
    Sound,
    VcpuPin,
    Video,
    normalize_mac,
    normalize_uuid,
)
from supervisor.domain.postparse import random_mac, random_uuid
from supervisor.errors import InvalidArgvError, InvalidValueError
from supervisor.vmm.bhyveopts import (
    LPC_UARTS,
    BhyveCommand,
    BhyveCommandError,
    BhyveEarlyExit,
    PciDevice,
    parse_bhyve_argv,
    parse_bhyveload_argv,
    parse_grub_bhyve_argv,
)
from supervisor.vmm.cmdline import split_command_text

__all__ = ["FORMAT", "NativeResult", "domain_from_argv", "domain_from_native"]

#: The native format name, as libvirt and virsh spell it.
FORMAT = "bhyve-argv"
#: The bridge libvirt's parser gives every NIC; the command line does not say.
DEFAULT_BRIDGE = "virbr0"
#: The VNC address bhyve listens on when ``tcp=`` leaves it out.
DEFAULT_VNC_LISTEN = "127.0.0.1"

_NMDM = re.compile(r"/dev/nmdm.+[AB]")
_TCP_BACKEND = re.compile(r"tcp=(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:]*)):(?P<port>[0-9]+)")
_TAP = re.compile(r"(tap|vmnet)[0-9]+")

#: Global config keys the model holds, and keys harmless at these values (bhyve's
#: defaults, and what the builder always sets): neither is reported as lost.
_HARMLESS: Mapping[str, frozenset[str]] = {
    "acpi_tables": frozenset({"true", "on", "yes", "1"}),
    "lpc.fwcfg": frozenset({"bhyve"}),
    "x86.strictio": frozenset({"false", "off", "no", "0"}),
    "x86.x2apic": frozenset({"false", "off", "no", "0"}),
    "x86.mptable": frozenset({"true", "on", "yes", "1"}),
    "virtio_msix": frozenset({"true", "on", "yes", "1"}),
    "memory.guest_in_core": frozenset({"false", "off", "no", "0"}),
}
_USED_GLOBALS = frozenset(
    {
        "name",
        "cpus",
        "sockets",
        "cores",
        "threads",
        "memory.size",
        "memory.wired",
        "uuid",
        "rtc.use_localtime",
        "x86.strictmsr",
        # the supervisor always sets these two and always destroys a VM after its
        # final exit, so none of them needs a place in the model
        "x86.vmexit_on_hlt",
        "x86.vmexit_on_pause",
        "destroy_on_poweroff",
        "lpc.bootrom",
        "lpc.bootvars",
        *(f"lpc.{com}.path" for com in LPC_UARTS),
    }
)


@attrs.frozen(repr=False)
class NativeResult(Record):
    """What a native command line became.

    Attributes:
        domain: the guest (not post-parsed: no implicit devices, no assigned slots).
        warnings: what was left out or guessed, one sentence each, naming the argument.
    """

    domain: Domain
    warnings: tuple[str, ...] = ()


def _target(prefix: str, index: int) -> str:
    """libvirt's disk target name: ``vda`` for 0, ``vdz`` 25, ``vdaa`` 26."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return prefix + letters


def _refuse_config_files(path: str) -> str:
    raise OSError(0, "configuration files are not read when importing a command line")


class _Importer:
    def __init__(
        self,
        *,
        uuid_factory: Callable[[], str],
        mac_factory: Callable[[], str],
        strict: bool,
    ) -> None:
        self.uuid_factory = uuid_factory
        self.mac_factory = mac_factory
        self.strict = strict
        self.warnings: list[str] = []
        self.disks: list[Disk] = []
        self.controllers: list[Controller] = []
        self.interfaces: list[Interface] = []
        self.serials: list[Serial] = []
        self.channels: list[Channel] = []
        self.filesystems: list[Filesystem] = []
        self.graphics: list[Graphics] = []
        self.videos: list[Video] = []
        self.sounds: list[Sound] = []
        self.audios: list[Audio] = []
        self.inputs: list[Input] = []
        self.hostdevs: list[Hostdev] = []
        self.rngs: list[Rng] = []
        self.counts: dict[str, int] = {}

    # -- reporting

    def lost(self, message: str, field: str) -> None:
        """Something bhyve accepts that the model cannot hold."""
        if self.strict:
            raise InvalidArgvError(f"{field}: {message}", field=field)
        self.warnings.append(f"{field}: {message}")

    @staticmethod
    def bad(message: str, field: str) -> InvalidArgvError:
        return InvalidArgvError(f"{field}: {message}", field=field)

    def next_index(self, kind: str) -> int:
        index = self.counts.get(kind, 0)
        self.counts[kind] = index + 1
        return index

    # -- the bhyve command

    def bhyve(self, argv: Sequence[str]) -> BhyveCommand:
        try:
            return parse_bhyve_argv(argv, read_file=_refuse_config_files)
        except BhyveCommandError as exc:
            raise InvalidArgvError(
                f"bhyve command line: {exc.message}", field=exc.field, data=exc.data
            ) from None
        except BhyveEarlyExit:
            raise InvalidArgvError(
                "bhyve command line: asks bhyve to print and exit (-h, help, config.dump), "
                "not to run a guest",
                field="argv",
            ) from None

    def domain(self, cmd: BhyveCommand) -> dict[str, object]:
        config = cmd.config
        for key, value in config.items():
            if key.startswith("pci.") or key in _USED_GLOBALS:
                continue
            if key in _HARMLESS and value.lower() in _HARMLESS[key]:
                continue
            if key.startswith("vcpu.") and key.endswith(".cpuset"):
                vcpu = key.split(".")[1]
                if not vcpu.isdigit() or int(vcpu) >= cmd.cpus:
                    self.lost(f"vCPU {vcpu} does not exist; bhyve ignores its pinning", "-p")
                continue
            self.lost(f"{key}={value} has no place in the guest model", key)
        for fw in cmd.fw_cfg:
            self.lost(f"fw_cfg item {fw.name!r} has no place in the guest model", "-f")

        uuid = cmd.uuid
        if uuid is not None:
            try:
                uuid = normalize_uuid(uuid)
            except InvalidValueError:
                raise self.bad(f"cannot parse UUID {uuid!r}", "-U") from None
        else:
            uuid = self.uuid_factory()
        memsize = cmd.memsize
        if memsize <= 0:
            raise self.bad(f"memory must be > 0, got {cmd.config.get('memory.size')!r}", "-m")
        if memsize % 1024:
            self.lost(f"memory {memsize} bytes is not a whole number of KiB; rounded up", "-m")
        topology = None
        if any(key in config for key in ("sockets", "cores", "threads")):
            topology = CpuTopology(sockets=cmd.sockets, cores=cmd.cores, threads=cmd.threads)
        features = Features(
            acpi="A" in cmd.ignored_flags,
            apic="I" in cmd.ignored_flags,
            msrs_ignore=not cmd.strictmsr,
        )
        os = Os()
        if cmd.bootrom is not None:
            os = Os(
                loader=Loader(path=cmd.bootrom, readonly=True, type="pflash"),
                nvram=cmd.bootvars,
            )
            if not cmd.has_lpc:
                self.lost("a bootrom without an lpc slot is never loaded by bhyve", "-l bootrom")
        self.com_ports(cmd)
        return {
            "name": cmd.vmname,
            "uuid": uuid,
            "memory_kib": -(-memsize // 1024),
            "current_memory_kib": -(-memsize // 1024),
            "vcpus": cmd.cpus,
            "topology": topology,
            "vcpu_pins": tuple(
                VcpuPin(vcpu=vcpu, cpuset=tuple(sorted(cpus)))
                for vcpu, cpus in sorted(cmd.vcpu_pins.items())
            ),
            "wired": cmd.wired,
            "clock": "localtime" if cmd.rtc_localtime else "utc",
            "features": features,
            "os": os,
            # what libvirt's argv2xml writes: the command line says nothing about reboot
            "on_reboot": "destroy",
        }

    def com_ports(self, cmd: BhyveCommand) -> None:
        for com, backend in cmd.com_ports().items():
            field = f"-l com{com}"
            if _NMDM.fullmatch(backend):
                slave = backend[:-1] + ("B" if backend.endswith("A") else "A")
                serial = Serial(type="nmdm", port=com - 1, master=backend, slave=slave)
            elif backend == "stdio":
                serial = Serial(type="stdio", port=com - 1)
            elif (m := _TCP_BACKEND.fullmatch(backend)) is not None:
                host = m.group("v6") or m.group("v4")
                if not host:
                    raise self.bad(f"a tcp backend needs an address, got {backend!r}", field)
                serial = Serial(type="tcp", port=com - 1, host=host, service=int(m.group("port")))
            else:
                raise self.bad(
                    f"backend {backend!r} is neither an nmdm device (/dev/nmdm...A or B), "
                    "tcp=ADDRESS:PORT nor stdio",
                    field,
                )
            self.serials.append(serial)
        if self.serials and not cmd.has_lpc:
            self.lost("COM ports without an lpc slot are never opened by bhyve", "-l com")

    # -- PCI devices

    def pci(self, cmd: BhyveCommand) -> None:
        for dev in cmd.pci_devices():
            address = PciAddress(slot=dev.slot, function=dev.func, bus=dev.bus)
            field = f"-s {dev.address},{dev.emulation}"
            handler = _HANDLERS.get(dev.emulation)
            if handler is None:
                self.lost("this emulation has no place in the guest model", field)
                continue
            handler(self, dev, address, field)

    def hostbridge(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        if (dev.bus, dev.slot, dev.func) != (0, 0, 0) or dev.options:
            self.lost("the host bridge is always a plain one at 0:0:0", field)

    def lpc(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        self.controllers.append(Controller(type="isa", index=0, address=address))
        for key in dev.options:
            self.lost(f"lpc option {key} has no place in the guest model", field)

    def _path_type(self, path: str) -> str:
        return "block" if path.startswith("/dev/") else "file"

    def _block_options(self, opts: Mapping[str, str], field: str) -> bool:
        """Returns whether the disk is read-only; reports the options the model lacks."""
        readonly = False
        for key, value in opts.items():
            if key == "path":
                continue
            if key == "ro":
                readonly = value.lower() in ("true", "on", "yes", "1")
            else:
                self.lost(f"disk option {key}={value} has no place in the guest model", field)
        return readonly

    def ahci(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        ports: dict[int, dict[str, str]] = {}
        for key, value in dev.options.items():
            head, _, rest = key.partition(".")
            number, _, option = rest.partition(".")
            if head != "port" or not number.isdigit() or not option:
                self.lost(f"ahci option {key} has no place in the guest model", field)
                continue
            ports.setdefault(int(number), {})[option] = value
        index = self.next_index("sata-controller")
        self.controllers.append(Controller(type="sata", index=index, address=address))
        for port in sorted(ports):
            opts = ports[port]
            kind, path = opts.get("type"), opts.get("path")
            if kind not in ("hd", "cd") or path is None:
                raise self.bad(f"port {port} needs type hd or cd and a path", field)
            readonly = self._block_options(
                {k: v for k, v in opts.items() if k != "type"}, f"{field} port {port}"
            )
            self.disks.append(
                Disk(
                    target=_target("sd", self.next_index("sd")),
                    source=path,
                    type=self._path_type(path),  # type: ignore[arg-type]
                    device="cdrom" if kind == "cd" else "disk",
                    bus="sata",
                    readonly=readonly and kind == "hd",
                    address=DriveAddress(controller=index, unit=port),
                )
            )

    def virtio_blk(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        path = dev.options.get("path")
        if path is None:
            raise self.bad("a virtio-blk device needs a path", field)
        readonly = self._block_options(dev.options, field)
        self.disks.append(
            Disk(
                target=_target("vd", self.next_index("vd")),
                source=path,
                type=self._path_type(path),  # type: ignore[arg-type]
                bus="virtio",
                readonly=readonly,
                address=address,
            )
        )

    def nvme(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        opts = dict(dev.options)
        path = opts.pop("path", None)
        if path is None:
            self.lost("an nvme device without a backing path (ram=) has no place", field)
            return
        queues: dict[str, int | None] = {"maxq": None, "qsz": None}
        for key in queues:
            if key in opts:
                text = opts.pop(key)
                if not text.isdigit():
                    raise self.bad(f"{key} must be a number, got {text!r}", field)
                queues[key] = int(text)
        readonly = self._block_options({"path": path, **opts}, field)
        self.disks.append(
            Disk(
                target=f"nvme{self.next_index('nvme')}n1",
                source=path,
                type=self._path_type(path),  # type: ignore[arg-type]
                bus="nvme",
                readonly=readonly,
                address=address,
                nvme_max_queues=queues["maxq"],
                nvme_queue_size=queues["qsz"],
            )
        )

    def virtio_scsi(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        index = self.next_index("scsi-controller")
        self.controllers.append(
            Controller(type="scsi", index=index, model="virtio-scsi", address=address)
        )
        for key in dev.options:
            if key != "dev":
                self.lost(f"virtio-scsi option {key} has no place in the guest model", field)
        path = dev.options.get("dev")
        if path is not None:
            self.disks.append(
                Disk(
                    target=_target("sd", self.next_index("sd")),
                    source=path,
                    type="block",
                    bus="scsi",
                    address=DriveAddress(controller=index),
                )
            )

    def nic(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        model = "e1000" if dev.emulation == "e1000" else "virtio"
        opts = dict(dev.options)
        backend = opts.pop("backend", "")
        mac_text = opts.pop("mac", None)
        if backend == "slirp":
            opts.pop("open", None)
            kind = "user"
        elif _TAP.fullmatch(backend):
            kind = "bridge"
        else:
            self.lost(f"only tap, vmnet and slirp backends are kept, got {backend!r}", field)
            return
        if opts:
            self.lost(
                f"only the mac= option is kept, got {', '.join(sorted(opts))}; NIC left out",
                field,
            )
            return
        mac = self.mac_factory()
        if mac_text is not None:
            try:
                mac = normalize_mac(mac_text)
            except InvalidValueError:
                self.lost(
                    f"unable to parse mac address {mac_text!r}; using 00:00:00:00:00:00", field
                )
                mac = "00:00:00:00:00:00"
        self.interfaces.append(
            Interface(
                type=kind,  # type: ignore[arg-type]
                mac=mac,
                model=model,
                bridge=DEFAULT_BRIDGE if kind == "bridge" else None,
                target_dev=backend if kind == "bridge" else None,
                address=address,
            )
        )

    def rnd(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        for key in dev.options:
            self.lost(f"virtio-rnd option {key} has no place in the guest model", field)
        self.rngs.append(Rng(source="/dev/random", address=address))

    def ninep(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        opts = dict(dev.options)
        share, path = opts.pop("sharename", None), opts.pop("path", None)
        if share is None or path is None:
            raise self.bad("a virtio-9p device needs SHARENAME=/host/dir", field)
        readonly = opts.pop("ro", "false").lower() in ("true", "on", "yes", "1")
        for key in opts:
            self.lost(f"virtio-9p option {key} has no place in the guest model", field)
        self.filesystems.append(
            Filesystem(source=path, target=share, readonly=readonly, address=address)
        )

    def console(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        index = self.next_index("virtio-serial")
        self.controllers.append(Controller(type="virtio-serial", index=index, address=address))
        ports: dict[int, dict[str, str]] = {}
        for key, value in dev.options.items():
            head, _, rest = key.partition(".")
            number, _, option = rest.partition(".")
            if head != "port" or not number.isdigit() or option not in ("name", "path"):
                self.lost(f"virtio-console option {key} has no place in the guest model", field)
                continue
            ports.setdefault(int(number), {})[option] = value
        for port in sorted(ports):
            name, path = ports[port].get("name"), ports[port].get("path")
            if name is None or path is None:
                raise self.bad(f"port {port} needs NAME=PATH", field)
            self.channels.append(Channel(name=name, path=path, controller=index, port=port))

    def fbuf(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        opts = dict(dev.options)
        listen, port = DEFAULT_VNC_LISTEN, 5900
        where = opts.pop("tcp", None) or opts.pop("rfb", None)
        opts.pop("rfb", None)
        if where is not None:
            host, colon, port_text = where.rpartition(":")
            if not colon:
                host, port_text = "", where
            if not port_text.isdigit():
                raise self.bad(f"cannot parse the VNC port in {where!r}", field)
            port = int(port_text)
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            listen = host or DEFAULT_VNC_LISTEN
        resolution = None
        if "w" in opts or "h" in opts:
            width, height = opts.pop("w", "1024"), opts.pop("h", "768")
            if not (width.isdigit() and height.isdigit()):
                raise self.bad(f"cannot parse the resolution {width}x{height}", field)
            resolution = (int(width), int(height))
        vga = opts.pop("vga", None)
        if vga not in (None, "io", "on", "off"):
            raise self.bad(f"vga must be io, on or off, got {vga!r}", field)
        wait = "wait" in opts and opts.pop("wait").lower() in ("true", "on", "yes", "1")
        passwd = opts.pop("password", None)
        for key in opts:
            self.lost(f"fbuf option {key} has no place in the guest model", field)
        self.graphics.append(
            Graphics(
                port=port,
                autoport=False,
                listen=listen,
                passwd=passwd,
                listen_type="address",
                listen_address=listen,
            )
        )
        self.videos.append(
            Video(
                model="gop",
                heads=1,
                resolution=resolution,
                vgaconf=vga,  # type: ignore[arg-type]
                wait=wait,
                address=address,
            )
        )

    def xhci(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        self.controllers.append(Controller(type="usb", index=0, model="nec-xhci", address=address))
        for key, value in dev.options.items():
            if key.startswith("slot.") and key.endswith(".device") and value == "tablet":
                self.inputs.append(Input(type="tablet", bus="usb"))
            else:
                self.lost(f"xhci option {key}={value} has no place in the guest model", field)

    def hda(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        opts = dict(dev.options)
        play, rec = opts.pop("play", None), opts.pop("rec", None)
        for key in opts:
            self.lost(f"hda option {key} has no place in the guest model", field)
        audio_id = None
        if play is not None or rec is not None:
            audio_id = len(self.audios) + 1
            # the builder's (libvirt's) mapping: play= is the input device, rec= the output
            self.audios.append(Audio(id=audio_id, input_dev=play, output_dev=rec))
        self.sounds.append(Sound(model="ich7", audio_id=audio_id, address=address))

    def passthru(self, dev: PciDevice, address: PciAddress, field: str) -> None:
        opts = dict(dev.options)
        if "pptdev" in opts:
            self.lost(
                f"{opts['pptdev']} names a ppt device, not its host address (use B/S/F)", field
            )
            return
        try:
            host = PciAddress(
                bus=int(opts.pop("bus")), slot=int(opts.pop("slot")), function=int(opts.pop("func"))
            )
        except (KeyError, ValueError):
            raise self.bad("needs the host device as B/S/F", field) from None
        except InvalidValueError as exc:
            raise self.bad(f"host device {exc.message}", field) from None
        rom = opts.pop("rom", None)
        for key in opts:
            self.lost(f"passthru option {key} has no place in the guest model", field)
        self.hostdevs.append(Hostdev(host=host, address=address, rom=rom))

    # -- the loader

    def loader(self, argv: Sequence[str], cmd: BhyveCommand, fields: dict[str, object]) -> None:
        program = posixpath.basename(argv[0])
        os = fields["os"]
        assert isinstance(os, Os)
        if program == "bhyveload":
            self.bhyveload(argv, cmd, fields)
            return
        if program == "grub-bhyve":
            try:
                grub = parse_grub_bhyve_argv(argv)
            except (BhyveCommandError, BhyveEarlyExit) as exc:
                message = exc.message if isinstance(exc, BhyveCommandError) else "not a load"
                raise self.bad(message, "grub-bhyve") from None
            self.same_vm(grub.vmname, grub.memsize, cmd, "grub-bhyve")
        if os.loader is not None:
            self.lost("a loader before a bootrom guest is never needed", argv[0])
            return
        fields["os"] = attrs.evolve(
            os, bootloader=argv[0], bootloader_args=self.joined(argv[1:], argv[0])
        )

    def joined(self, args: Sequence[str], field: str) -> str:
        if any(" " in arg or arg == "" for arg in args):
            self.lost("an argument with a space or an empty one does not survive", field)
        return " ".join(args)

    def same_vm(self, name: str, memsize: int, cmd: BhyveCommand, field: str) -> None:
        if name != cmd.vmname:
            raise self.bad(f"VM name mismatch: {name!r} here, {cmd.vmname!r} for bhyve", field)
        if memsize != cmd.memsize:
            raise self.bad(
                f"memory size mismatch: {memsize} bytes here, {cmd.memsize} for bhyve", field
            )

    def bhyveload(self, argv: Sequence[str], cmd: BhyveCommand, fields: dict[str, object]) -> None:
        try:
            load = parse_bhyveload_argv(argv)
        except BhyveCommandError as exc:
            raise self.bad(exc.message, "bhyveload") from None
        self.same_vm(load.vmname, load.memsize, cmd, "bhyveload")
        plain = (
            len(load.disks) <= 1
            and load.console is None
            and not load.env
            and load.host_path is None
            and load.loader is None
            and not load.wired
            and not load.guest_in_core
            and "-m" in argv[1:]
        )
        os = fields["os"]
        assert isinstance(os, Os)
        if not plain:
            fields["os"] = attrs.evolve(
                os, bootloader=argv[0], bootloader_args=self.joined(argv[1:], "bhyveload")
            )
            return
        for path in load.disks:
            matches = [i for i, disk in enumerate(self.disks) if disk.source == path]
            if not matches:
                self.lost(f"-d {path} is none of bhyve's disks", "bhyveload")
                continue
            # libvirt's rule: the disk's position is its boot order, so the first disk
            # (position 0) gets none and is still the one booted by default.
            if matches[0] > 0:
                self.disks[matches[0]] = attrs.evolve(self.disks[matches[0]], boot_order=matches[0])


_Handler = Callable[[_Importer, PciDevice, PciAddress, str], None]
_HANDLERS: Mapping[str, _Handler] = {
    "hostbridge": _Importer.hostbridge,
    "lpc": _Importer.lpc,
    "ahci": _Importer.ahci,
    "virtio-blk": _Importer.virtio_blk,
    "nvme": _Importer.nvme,
    "virtio-scsi": _Importer.virtio_scsi,
    "virtio-net": _Importer.nic,
    "e1000": _Importer.nic,
    "virtio-rnd": _Importer.rnd,
    "virtio-9p": _Importer.ninep,
    "virtio-console": _Importer.console,
    "fbuf": _Importer.fbuf,
    "xhci": _Importer.xhci,
    "hda": _Importer.hda,
    "passthru": _Importer.passthru,
}


def domain_from_argv(
    bhyve: Sequence[str],
    loader: Sequence[str] | None = None,
    *,
    uuid_factory: Callable[[], str] = random_uuid,
    mac_factory: Callable[[], str] = random_mac,
    strict: bool = False,
) -> NativeResult:
    """The guest that a bhyve argv (and the loader argv run before it) describes.

    See :func:`domain_from_native`, which takes the same commands as text.
    """
    importer = _Importer(uuid_factory=uuid_factory, mac_factory=mac_factory, strict=strict)
    cmd = importer.bhyve(bhyve)
    fields = importer.domain(cmd)
    importer.pci(cmd)
    if loader is not None:
        importer.loader(loader, cmd, fields)
    try:
        domain = Domain(
            **fields,  # type: ignore[arg-type]
            disks=tuple(importer.disks),
            controllers=tuple(importer.controllers),
            filesystems=tuple(importer.filesystems),
            interfaces=tuple(importer.interfaces),
            serials=tuple(importer.serials),
            channels=tuple(importer.channels),
            inputs=tuple(importer.inputs),
            graphics=tuple(importer.graphics),
            sounds=tuple(importer.sounds),
            audios=tuple(importer.audios),
            videos=tuple(importer.videos),
            hostdevs=tuple(importer.hostdevs),
            rngs=tuple(importer.rngs),
        )
    except InvalidValueError as exc:
        field = exc.field or "argv"
        if field == "name":
            field = "vmname"
        raise InvalidArgvError(exc.message, field=field) from None
    return NativeResult(domain=domain, warnings=tuple(importer.warnings))


def domain_from_native(
    text: str,
    *,
    uuid_factory: Callable[[], str] = random_uuid,
    mac_factory: Callable[[], str] = random_mac,
    strict: bool = False,
) -> NativeResult:
    """DomainXMLFromNative for ``bhyve-argv``: the guest that command lines describe.

    Args:
        text: the commands, one per line (backslash-newline continues a line), shell or
            libvirt quoting. The first command whose program is ``bhyve`` (at any path)
            is the bhyve command; the first other command is the loader run before it
            (bhyveload or grub-bhyve at any path, or any program).
        uuid_factory: gives the UUID when the command has no ``-U``.
        mac_factory: gives the MAC of a NIC without ``mac=``.
        strict: raise instead of warning when bhyve accepts something the guest model
            cannot hold.

    Returns:
        The guest (not post-parsed) and the warnings.

    Raises:
        InvalidArgvError: no bhyve command; bhyve would refuse its command line; the
            loader's VM name or memory differs from bhyve's; a value the model rejects
            (the message names the argument).
    """
    commands = split_command_text(text)
    bhyve = next((c for c in commands if posixpath.basename(c[0]) == "bhyve"), None)
    if bhyve is None:
        raise InvalidArgvError("no bhyve command (a line whose program is bhyve)", field="text")
    others = [c for c in commands if c is not bhyve]
    result = domain_from_argv(
        bhyve,
        others[0] if others else None,
        uuid_factory=uuid_factory,
        mac_factory=mac_factory,
        strict=strict,
    )
    if len(others) > 1:
        extra = ", ".join(posixpath.basename(c[0]) for c in others[1:])
        message = f"text: only one loader runs before bhyve; ignored {extra}"
        if strict:
            raise InvalidArgvError(message, field="text")
        result = attrs.evolve(result, warnings=(*result.warnings, message))
    return result

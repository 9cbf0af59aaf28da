"""The guest model: a bhyve guest as frozen attrs values.

The model speaks libvirt's vocabulary (a :class:`Domain` is what a ``<domain
type='bhyve'>`` document describes) and covers everything bhyve(8) can run. It is
pure data: :mod:`supervisor.domain.xml` reads and writes it, :mod:`supervisor.vmm.argv`
turns it into command lines, and the supervisor core reads its policy.

Every value checks itself when it is built. A bad value raises
:class:`~supervisor.errors.InvalidValueError` whose ``field`` names the offending
attribute; containers re-raise it with their own prefix, so a user sees
``devices.disk[1].source: ...`` rather than a bare ``source``.

Strings that end up inside one bhyve option (paths, tags, socket names, passwords)
must not contain a comma: bhyve splits every ``-s``/``-l`` value on commas, so a comma
would silently become a second option.
"""

from __future__ import annotations

import re
import uuid as _uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, TypeAlias

import attrs

from supervisor._record import Record
from supervisor.errors import InvalidValueError

__all__ = [
    "Audio",
    "BootDev",
    "Channel",
    "ClockOffset",
    "Controller",
    "ControllerType",
    "CpuTopology",
    "Disk",
    "DiskBus",
    "DiskDevice",
    "DiskType",
    "Domain",
    "DriveAddress",
    "Features",
    "Filesystem",
    "Graphics",
    "Hostdev",
    "Input",
    "Interface",
    "InterfaceType",
    "LifecycleAction",
    "Loader",
    "Os",
    "PciAddress",
    "Rng",
    "Serial",
    "SerialType",
    "Sound",
    "SupervisorPolicy",
    "VcpuPin",
    "Video",
    "prefixed",
]

# --------------------------------------------------------------------------------------
# Vocabulary

DiskType: TypeAlias = Literal["file", "block", "volume"]
DiskDevice: TypeAlias = Literal["disk", "cdrom"]
DiskBus: TypeAlias = Literal["sata", "virtio", "nvme", "scsi"]
ControllerType: TypeAlias = Literal["pci", "sata", "usb", "isa", "nvme", "virtio-serial", "scsi"]
InterfaceType: TypeAlias = Literal["bridge", "network", "user"]
SerialType: TypeAlias = Literal["nmdm", "tcp", "stdio"]
BootDev: TypeAlias = Literal["hd", "cdrom", "network", "fd"]
ClockOffset: TypeAlias = Literal["utc", "localtime"]
#: libvirt's lifecycle actions (``<on_poweroff>`` and friends).
LifecycleAction: TypeAlias = Literal[
    "destroy", "restart", "preserve", "rename-restart", "coredump-destroy", "coredump-restart"
]
FilesystemType: TypeAlias = Literal["mount", "bind", "block", "file", "template", "ram", "volume"]
FilesystemAccess: TypeAlias = Literal["passthrough", "mapped", "squash"]
VgaConf: TypeAlias = Literal["io", "on", "off"]

#: The portable guest name rule: bhyve itself allows 229 bytes, but 31 characters of
#: this set work on every FreeBSD release and in every path the name ends up in.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,30}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
#: SATA ports per AHCI controller (bhyve's ahci emulation has 32).
AHCI_PORTS = 32


# --------------------------------------------------------------------------------------
# Errors with a field path


@contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Re-raise an :class:`InvalidValueError` from the block with *prefix* on its field.

    ``with prefixed("devices.disk[1]"):`` turns a ``source: ...`` error into
    ``devices.disk[1].source: ...``. The error keeps its class.
    """
    try:
        yield
    except InvalidValueError as exc:
        inner = exc.field
        field = f"{prefix}.{inner}" if inner else prefix
        message = exc.message
        if inner and message.startswith(inner + ":"):
            message = message[len(inner) + 1 :].lstrip()
        raise type(exc)(f"{field}: {message}", field=field, data=exc.data) from None


def _bad(field: str, message: str) -> InvalidValueError:
    return InvalidValueError(f"{field}: {message}", field=field)


def _no_comma(field: str, value: str | None) -> None:
    if value is not None and "," in value:
        raise _bad(field, f"must not contain ',' (bhyve splits options on commas), got {value!r}")


def _check_path(field: str, value: str | None) -> None:
    if value is None:
        return
    if value == "":
        raise _bad(field, "must not be empty")
    _no_comma(field, value)


def _check_file(field: str, value: str | None) -> None:
    """A host file the supervisor or bhyve opens: absolute, and no ``..`` in it, so what
    the definition names is what is opened (bhyve runs in / and as root)."""
    _check_path(field, value)
    if value is None:
        return
    if not value.startswith("/"):
        raise _bad(field, f"must be an absolute path, got {value!r}")
    if ".." in value.split("/"):
        raise _bad(field, f"must not contain '..', got {value!r}")


def _check_range(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise _bad(field, f"must be in {low}..{high}, got {value}")


def normalize_mac(value: str) -> str:
    """*value* as a lower-case ``xx:xx:xx:xx:xx:xx`` unicast MAC address.

    Raises:
        InvalidValueError: not a MAC address, or a multicast one.
    """
    mac = value.strip().lower()
    if not _MAC_RE.fullmatch(mac):
        raise _bad("mac", f"not a MAC address (xx:xx:xx:xx:xx:xx), got {value!r}")
    if int(mac[:2], 16) & 1:
        raise _bad("mac", f"must be a unicast address, got {value!r}")
    return mac


def normalize_uuid(value: str) -> str:
    """*value* as a canonical lower-case UUID with dashes.

    Raises:
        InvalidValueError: not a UUID.
    """
    try:
        return str(_uuid.UUID(value.strip()))
    except ValueError:
        raise _bad("uuid", f"not a UUID, got {value!r}") from None


def check_name(value: str) -> None:
    """Check a guest name against the portable rule (:data:`NAME_RE`).

    Raises:
        InvalidValueError: the name is empty, too long, starts with ``-`` or has a
            character outside ``[A-Za-z0-9._-]``.
    """
    if not NAME_RE.fullmatch(value):
        raise _bad(
            "name",
            "must be 1-31 characters of [A-Za-z0-9._-] not starting with '-' or '.', "
            f"got {value!r}",
        )


# --------------------------------------------------------------------------------------
# Addresses


@attrs.frozen(repr=False)
class PciAddress(Record):
    """A guest PCI address; bhyve's ``-s bus:slot:function``."""

    slot: int
    function: int = 0
    bus: int = 0
    domain: int = 0

    def __attrs_post_init__(self) -> None:
        _check_range("slot", self.slot, 0, 31)
        _check_range("function", self.function, 0, 7)
        _check_range("bus", self.bus, 0, 255)
        if self.domain != 0:
            raise _bad("domain", f"bhyve has only PCI domain 0, got {self.domain}")

    def key(self) -> tuple[int, int, int]:
        """(bus, slot, function), for finding collisions."""
        return (self.bus, self.slot, self.function)

    def __str__(self) -> str:
        if self.bus:
            return f"{self.bus}:{self.slot}:{self.function}"
        return f"{self.slot}:{self.function}"


@attrs.frozen(repr=False)
class DriveAddress(Record):
    """A disk's place on a disk controller: AHCI controller *controller*, port *unit*."""

    controller: int = 0
    bus: int = 0
    target: int = 0
    unit: int = 0

    def __attrs_post_init__(self) -> None:
        for name in ("controller", "bus", "target", "unit"):
            value = getattr(self, name)
            if value < 0:
                raise _bad(name, f"must be >= 0, got {value}")


Address: TypeAlias = PciAddress | DriveAddress | None


# --------------------------------------------------------------------------------------
# Devices


@attrs.frozen(repr=False)
class Disk(Record):
    """A ``<disk>``: a virtio-blk, AHCI (SATA), NVMe or virtio-scsi disk or cdrom.

    Args:
        type: where the data lives: a ``file``, a ``block`` device (a zvol), or a
            storage-pool ``volume``.
        device: ``disk`` or ``cdrom``.
        bus: ``sata`` (AHCI), ``virtio`` (virtio-blk), ``nvme`` or ``scsi`` (virtio-scsi,
            whose source is a CTL device such as ``/dev/cam/ctl``).
        target: the guest name (``hda``, ``sda``, ``vda``, ``nvme0n1``...).
        source: the host path; ``None`` only for an empty cdrom or a pool volume.
        readonly: open read-only (bhyve's ``ro``).
        boot_order: the ``<boot order>``; ``None`` when not given.
        address: a PCI address (virtio, nvme; SATA disks from bhyve argv) or a drive
            address (SATA).
        nvme_max_queues / nvme_queue_size: bhyve's nvme ``maxq=`` / ``qsz=``.
    """

    target: str
    source: str | None = None
    type: DiskType = "file"
    device: DiskDevice = "disk"
    bus: DiskBus = "sata"
    readonly: bool = False
    boot_order: int | None = None
    address: Address = None
    driver_name: str | None = None
    driver_type: str | None = None
    source_pool: str | None = None
    source_volume: str | None = None
    nvme_max_queues: int | None = None
    nvme_queue_size: int | None = None

    def __attrs_post_init__(self) -> None:
        if not re.fullmatch(r"[a-z]+[0-9a-z]*", self.target):
            raise _bad("target", f"not a disk target name, got {self.target!r}")
        _check_file("source", self.source)
        if self.source is None and self.device == "disk" and self.type != "volume":
            raise _bad("source", "a disk needs a source path")
        if self.boot_order is not None and self.boot_order < 1:
            raise _bad("boot.order", f"must be >= 1, got {self.boot_order}")
        if self.nvme_max_queues is not None:
            _check_range("driver.queues", self.nvme_max_queues, 1, 16)
        if self.nvme_queue_size is not None:
            _check_range("driver.queue_size", self.nvme_queue_size, 1, 65536)
        if isinstance(self.address, DriveAddress) and self.bus not in ("sata", "scsi"):
            raise _bad("address", f"a {self.bus} disk takes a PCI address, not a drive address")

    @property
    def index(self) -> int:
        """The target's index: ``hda``/``sda``/``vda`` 0, ``sdb`` 1, ``sdaa`` 26..."""
        return target_index(self.target)


def target_index(target: str) -> int:
    """The index of disk target *target*, as libvirt counts (``sda`` 0, ``sdz`` 25, ``sdaa`` 26).

    The prefix (``hd``, ``sd``, ``vd``) is two letters; ``nvmeXnY`` counts namespaces.
    """
    m = re.fullmatch(r"nvme(\d+)n(\d+)", target)
    if m:
        return int(m.group(2)) - 1
    letters = target[2:]
    if not letters or not letters.isalpha():
        raise _bad("target", f"not a disk target name, got {target!r}")
    index = 0
    for char in letters:
        index = index * 26 + (ord(char) - ord("a") + 1)
    return index - 1


@attrs.frozen(repr=False)
class Controller(Record):
    """A ``<controller>``. bhyve emulates ``pci`` (model ``pci-root`` only), ``sata``
    (AHCI), ``usb`` (model ``nec-xhci``), ``isa`` (the LPC bridge), ``nvme``,
    ``virtio-serial`` (virtio-console) and ``scsi`` (virtio-scsi)."""

    type: ControllerType
    index: int = 0
    model: str | None = None
    address: PciAddress | None = None

    def __attrs_post_init__(self) -> None:
        if self.index < 0:
            raise _bad("index", f"must be >= 0, got {self.index}")


@attrs.frozen(repr=False)
class Interface(Record):
    """A NIC: ``-s S:0,virtio-net|e1000,BACKEND,mac=...``.

    Args:
        type: ``bridge`` (a tap on *bridge*), ``network`` (a supervisor network, which
            names its bridge) or ``user`` (bhyve's slirp backend).
        mac: ``None`` until post-parse generates one.
        model: ``virtio`` or ``e1000``; ``None`` when the XML names none.
        target_dev: the host tap device (``tap3``); assigned at start when ``None``.
    """

    type: InterfaceType = "bridge"
    mac: str | None = None
    model: str | None = "virtio"
    bridge: str | None = None
    network: str | None = None
    target_dev: str | None = None
    address: PciAddress | None = None

    def __attrs_post_init__(self) -> None:
        if self.mac is not None:
            with prefixed("mac"):
                if normalize_mac(self.mac) != self.mac:
                    raise InvalidValueError(
                        f"must be lower-case xx:xx:xx:xx:xx:xx, got {self.mac!r}"
                    )
        for name in ("bridge", "network", "target_dev"):
            _check_path(name, getattr(self, name))
        if self.type == "bridge" and not self.bridge:
            raise _bad("source.bridge", "a bridge interface needs a bridge name")
        if self.type == "network" and not self.network:
            raise _bad("source.network", "a network interface needs a network name")


@attrs.frozen(repr=False)
class Serial(Record):
    """A serial port or console: bhyve's ``-l comN,BACKEND``.

    Args:
        type: ``nmdm`` (a null-modem pair: bhyve opens *master*, people use *slave*),
            ``tcp`` (bhyve listens on *host*:*service*) or ``stdio``.
        port: the COM port index: 0 is com1 ... 3 is com4.
        target_type: for ``<console>`` only: ``serial`` (a view of the serial port
            *port*). ``None`` for a ``<serial>``.
    """

    type: SerialType = "nmdm"
    port: int | None = 0
    master: str | None = None
    slave: str | None = None
    host: str | None = None
    service: int | None = None
    target_type: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.port is not None:
            _check_range("target.port", self.port, 0, 3)
        _check_file("source.master", self.master)
        _check_file("source.slave", self.slave)
        if self.type == "tcp":
            if not self.host:
                raise _bad("source.host", "a tcp serial needs a listen address")
            _no_comma("source.host", self.host)
            if self.service is None:
                raise _bad("source.service", "a tcp serial needs a port")
            _check_range("source.service", self.service, 1, 65535)
        if self.target_type is not None and self.target_type != "serial":
            raise _bad("target.type", f"bhyve consoles are serial ports, got {self.target_type!r}")

    @property
    def com(self) -> int:
        """The COM port number, 1-4."""
        return (self.port or 0) + 1


@attrs.frozen(repr=False)
class Channel(Record):
    """A virtio-console port (``<channel type='unix'>``), e.g. the guest agent's.

    Args:
        name: the port name the guest sees (``org.qemu.guest_agent.0``).
        path: the UNIX socket bhyve creates on the host.
    """

    name: str
    path: str
    controller: int | None = None
    port: int | None = None

    def __attrs_post_init__(self) -> None:
        _check_path("target.name", self.name)
        if "=" in self.name:
            raise _bad("target.name", f"must not contain '=', got {self.name!r}")
        _check_file("source.path", self.path)
        if not self.path.startswith("/"):
            raise _bad("source.path", f"must be an absolute path, got {self.path!r}")


@attrs.frozen(repr=False)
class Graphics(Record):
    """A VNC framebuffer: bhyve's ``fbuf,tcp=LISTEN:PORT``.

    ``port`` is -1 with ``autoport`` until the supervisor picks one at start.
    """

    port: int = -1
    autoport: bool = True
    listen: str | None = None
    passwd: str | None = None
    listen_type: str | None = None
    listen_address: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.port != -1:
            _check_range("port", self.port, 0, 65535)
        if self.passwd is not None:
            _no_comma("passwd", self.passwd)
        _no_comma("listen", self.listen)


@attrs.frozen(repr=False)
class Video(Record):
    """The framebuffer's video card: ``gop`` (UEFI GOP).

    Args:
        model: ``gop``; libvirt's ``default`` until post-parse.
        resolution: (width, height), bhyve's ``w=``/``h=``.
        vgaconf: bhyve's ``vga=io|on|off``.
        wait: bhyve's ``wait`` (boot waits for a VNC client); written as
            ``<driver wait='yes'/>`` in the supervisor's own dialect.
    """

    model: str = "default"
    heads: int | None = None
    primary: bool | None = None
    resolution: tuple[int, int] | None = None
    vgaconf: VgaConf | None = None
    wait: bool = False
    address: PciAddress | None = None

    def __attrs_post_init__(self) -> None:
        if self.resolution is not None:
            width, height = self.resolution
            _check_range("model.resolution.x", width, 640, 3840)
            _check_range("model.resolution.y", height, 480, 2160)


@attrs.frozen(repr=False)
class Input(Record):
    """An input device; bhyve has the USB tablet on the xhci controller."""

    type: str = "tablet"
    bus: str = "usb"


@attrs.frozen(repr=False)
class Sound(Record):
    """A sound card: bhyve's ``hda`` (model ``ich7``), fed by an OSS :class:`Audio`."""

    model: str = "ich7"
    audio_id: int | None = None
    address: PciAddress | None = None


@attrs.frozen(repr=False)
class Audio(Record):
    """An OSS audio backend: ``input_dev`` and ``output_dev`` are ``/dev/dspN``."""

    id: int
    type: str = "oss"
    input_dev: str | None = None
    output_dev: str | None = None

    def __attrs_post_init__(self) -> None:
        _check_path("input.dev", self.input_dev)
        _check_path("output.dev", self.output_dev)


@attrs.frozen(repr=False)
class Rng(Record):
    """A virtio-rnd device, fed by the host's ``/dev/random`` (the only backend)."""

    model: str = "virtio"
    backend: str = "random"
    source: str | None = None
    address: PciAddress | None = None

    def __attrs_post_init__(self) -> None:
        if self.model != "virtio":
            raise _bad("model", f"bhyve's rng is model 'virtio', got {self.model!r}")
        if self.backend != "random":
            raise _bad("backend.model", f"bhyve's rng backend is 'random', got {self.backend!r}")
        if self.source not in (None, "/dev/random"):
            raise _bad("backend", f"bhyve's rng reads '/dev/random', got {self.source!r}")


@attrs.frozen(repr=False)
class Filesystem(Record):
    """A virtio-9p share: ``-s S:0,virtio-9p,TARGET=SOURCE[,ro]``.

    Args:
        source: the host directory.
        target: the share (mount tag) the guest mounts.
    """

    source: str
    target: str
    type: FilesystemType = "mount"
    accessmode: FilesystemAccess = "passthrough"
    driver: str | None = None
    readonly: bool = False
    address: PciAddress | None = None

    def __attrs_post_init__(self) -> None:
        _check_file("source.dir", self.source)
        _check_path("target.dir", self.target)
        if "=" in self.target:
            raise _bad("target.dir", f"must not contain '=', got {self.target!r}")


@attrs.frozen(repr=False)
class Hostdev(Record):
    """A host PCI device passed through: ``-s S:F,passthru,B/S/F[,rom=FILE]``.

    The device must be claimed by ppt(4) on the host, and bhyve wires guest memory
    (``-S``) whenever one is present.
    """

    host: PciAddress
    address: PciAddress | None = None
    rom: str | None = None
    managed: bool | None = None

    def __attrs_post_init__(self) -> None:
        _check_path("rom.file", self.rom)


# --------------------------------------------------------------------------------------
# Domain-wide parts


@attrs.frozen(repr=False)
class CpuTopology(Record):
    """``<cpu><topology>``: bhyve's ``-c cpus=N,sockets=S,cores=C,threads=T``."""

    sockets: int = 1
    cores: int = 1
    threads: int = 1
    dies: int = 1
    clusters: int = 1

    def __attrs_post_init__(self) -> None:
        for name in ("sockets", "cores", "threads", "dies", "clusters"):
            value = getattr(self, name)
            if value < 1:
                raise _bad(f"cpu.topology.{name}", f"must be >= 1, got {value}")

    @property
    def vcpus(self) -> int:
        """sockets x cores x threads."""
        return self.sockets * self.cores * self.threads


@attrs.frozen(repr=False)
class VcpuPin(Record):
    """``<cputune><vcpupin>``: vCPU *vcpu* runs on the host CPUs *cpuset*
    (bhyve's ``-p vcpu:hostcpu``, once per host CPU)."""

    vcpu: int
    cpuset: tuple[int, ...]

    def __attrs_post_init__(self) -> None:
        if self.vcpu < 0:
            raise _bad("vcpu", f"must be >= 0, got {self.vcpu}")
        if not self.cpuset:
            raise _bad("cpuset", "must name at least one host CPU")
        if list(self.cpuset) != sorted(set(self.cpuset)) or self.cpuset[0] < 0:
            raise _bad("cpuset", f"must be ascending host CPU numbers, got {self.cpuset}")


@attrs.frozen(repr=False)
class Features(Record):
    """``<features>``: ``acpi`` (``-A``), ``apic`` (``-I``), ``msrs_ignore`` (``-w``)."""

    acpi: bool = False
    apic: bool = False
    msrs_ignore: bool = False


@attrs.frozen(repr=False)
class Loader(Record):
    """The UEFI firmware (``<loader>``): ``-l bootrom,PATH[,VARS]``."""

    path: str
    readonly: bool | None = None
    type: str | None = None
    format: str | None = None

    def __attrs_post_init__(self) -> None:
        _check_path("path", self.path)


@attrs.frozen(repr=False)
class Os(Record):
    """``<os>`` plus libvirt's ``<bootloader>``.

    Args:
        arch: ``x86_64`` (post-parse fills it in) or ``aarch64``.
        firmware: ``efi`` asks the supervisor to choose a UEFI firmware at start.
        loader: the UEFI firmware, when booting through a bootrom.
        nvram: the guest's own copy of the UEFI variables (bhyve's bootvars).
        nvram_template: the file copied to *nvram* when it does not exist yet.
        bootloader: a loader run before bhyve (``/usr/sbin/bhyveload``,
            ``/usr/local/sbin/grub-bhyve`` or any program); ``None`` with no loader
            means bhyveload.
        bootloader_args: its arguments, one string, split on spaces.
        boot_devs: the ``<boot dev>`` list.
    """

    type: str = "hvm"
    arch: str | None = None
    machine: str | None = None
    firmware: str | None = None
    loader: Loader | None = None
    nvram: str | None = None
    nvram_template: str | None = None
    bootloader: str | None = None
    bootloader_args: str | None = None
    boot_devs: tuple[BootDev, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.type != "hvm":
            raise _bad("os.type", f"bhyve runs 'hvm' guests, got {self.type!r}")
        if self.arch not in (None, "x86_64", "aarch64"):
            raise _bad("os.type.arch", f"bhyve runs x86_64 and aarch64 guests, got {self.arch!r}")
        if self.firmware not in (None, "efi"):
            raise _bad("os.firmware", f"must be 'efi', got {self.firmware!r}")
        _check_file("os.nvram", self.nvram)
        _check_path("os.bootloader", self.bootloader)


@attrs.frozen(repr=False)
class SupervisorPolicy(Record):
    """The supervisor's own per-guest policy, kept in ``<metadata>`` under
    ``urn:bhyve-supervisor:domain:1``.

    Args:
        autostart: start the guest when the daemon starts.
        start_order: autostart order, lowest first; guests of one order start together.
        depends_on: guests that must be running before this one starts.
        start_delay: seconds to wait after starting this guest before the next order.
        stop_timeout: seconds between the ACPI shutdown request and a forced poweroff.
        restart_backoff: the first delay (s) before restarting a crashed guest; it
            doubles with each crash up to *restart_backoff_max*, which also caps the
            retries of a launch the host failed (see ``docs/policy.md``).
        crash_limit: this many crashes within *crash_window* seconds make the guest fatal.
        ready_console_regex: the guest counts as "up" once its console prints a match.
    """

    autostart: bool = False
    start_order: int = 0
    depends_on: tuple[str, ...] = ()
    start_delay: float = 0.0
    stop_timeout: float = 120.0
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0
    crash_limit: int = 5
    crash_window: float = 300.0
    ready_console_regex: str | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("start_delay", "restart_backoff", "restart_backoff_max", "crash_window"):
            value = getattr(self, name)
            if not value >= 0:
                raise _bad(f"policy.{name}", f"must be >= 0, got {value}")
        if not self.stop_timeout > 0:
            raise _bad("policy.stop_timeout", f"must be > 0, got {self.stop_timeout}")
        if self.restart_backoff_max < self.restart_backoff:
            raise _bad(
                "policy.restart_backoff_max",
                f"must be >= restart_backoff ({self.restart_backoff}), "
                f"got {self.restart_backoff_max}",
            )
        if self.crash_limit < 1:
            raise _bad("policy.crash_limit", f"must be >= 1, got {self.crash_limit}")
        for i, dep in enumerate(self.depends_on):
            with prefixed(f"policy.depends_on[{i}]"):
                check_name(dep)
        if self.ready_console_regex is not None:
            try:
                re.compile(self.ready_console_regex)
            except re.error as exc:
                raise _bad(
                    "policy.ready_console_regex", f"not a regular expression: {exc}"
                ) from None


# --------------------------------------------------------------------------------------
# The domain


@attrs.frozen(repr=False)
class Domain(Record):
    """One bhyve guest.

    Memory is kept in KiB, as libvirt does; :attr:`memory_bytes` and
    :attr:`memory_mib` give it in other units. Device lists keep their document
    order; the argv builder assigns bhyve's order.
    """

    name: str
    memory_kib: int
    uuid: str | None = None
    current_memory_kib: int | None = None
    vcpus: int = 1
    topology: CpuTopology | None = None
    vcpu_pins: tuple[VcpuPin, ...] = ()
    wired: bool = False
    clock: ClockOffset = "utc"
    features: Features = Features()
    os: Os = Os()
    on_poweroff: LifecycleAction = "destroy"
    on_reboot: LifecycleAction = "restart"
    on_crash: LifecycleAction = "destroy"
    policy: SupervisorPolicy = SupervisorPolicy()
    #: Other ``<metadata>`` children, each serialised verbatim.
    metadata: tuple[str, ...] = ()
    #: ``<bhyve:commandline>`` arguments, appended to bhyve's argv as they are.
    commandline: tuple[str, ...] = ()
    title: str | None = None
    description: str | None = None
    disks: tuple[Disk, ...] = ()
    controllers: tuple[Controller, ...] = ()
    filesystems: tuple[Filesystem, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    serials: tuple[Serial, ...] = ()
    consoles: tuple[Serial, ...] = ()
    channels: tuple[Channel, ...] = ()
    inputs: tuple[Input, ...] = ()
    graphics: tuple[Graphics, ...] = ()
    sounds: tuple[Sound, ...] = ()
    audios: tuple[Audio, ...] = ()
    videos: tuple[Video, ...] = ()
    hostdevs: tuple[Hostdev, ...] = ()
    rngs: tuple[Rng, ...] = ()

    def __attrs_post_init__(self) -> None:
        check_name(self.name)
        if self.uuid is not None and normalize_uuid(self.uuid) != self.uuid:
            raise _bad("uuid", f"must be a lower-case UUID with dashes, got {self.uuid!r}")
        if self.memory_kib <= 0:
            raise _bad("memory", f"must be > 0, got {self.memory_kib}")
        if self.current_memory_kib is not None and self.current_memory_kib <= 0:
            raise _bad("currentMemory", f"must be > 0, got {self.current_memory_kib}")
        if self.vcpus < 1:
            raise _bad("vcpu", f"must be >= 1, got {self.vcpus}")
        for i, pin in enumerate(self.vcpu_pins):
            if pin.vcpu >= self.vcpus:
                raise _bad(
                    f"cputune.vcpupin[{i}].vcpu",
                    f"the guest has {self.vcpus} vCPUs, got vCPU {pin.vcpu}",
                )
        _check_pci_collisions(self)
        _check_ahci_ports(self)
        ports = [s.port for s in self.serials if s.port is not None]
        if len(ports) != len(set(ports)):
            raise _bad("devices.serial", f"two serial ports share a COM port: {sorted(ports)}")

    # -- conveniences the supervisor uses ----------------------------------------------

    @property
    def memory_bytes(self) -> int:
        """The guest's memory in bytes."""
        return self.memory_kib * 1024

    @property
    def memory_mib(self) -> int:
        """The guest's memory in MiB, rounded up (bhyve's ``-m``)."""
        return -(-self.memory_kib // 1024)

    @property
    def uses_bootrom(self) -> bool:
        """Whether bhyve boots a UEFI bootrom itself (a ``<loader>`` or
        ``firmware='efi'`` and no ``<bootloader>``), so no loader runs before it."""
        return self.os.bootloader is None and (
            self.os.loader is not None or self.os.firmware == "efi"
        )

    def console_paths(self) -> list[tuple[int, str, str]]:
        """(COM port 1-4, master path, slave path) of every nmdm serial port."""
        return [
            (s.com, s.master, s.slave)
            for s in self.serials
            if s.type == "nmdm" and s.master is not None and s.slave is not None
        ]

    def pci_devices(self) -> Iterator[tuple[str, PciAddress]]:
        """(field, address) of every device with an explicit PCI address."""
        groups: tuple[tuple[str, tuple[object, ...]], ...] = (
            ("devices.controller", self.controllers),
            ("devices.disk", self.disks),
            ("devices.interface", self.interfaces),
            ("devices.video", self.videos),
            ("devices.sound", self.sounds),
            ("devices.filesystem", self.filesystems),
            ("devices.rng", self.rngs),
            ("devices.hostdev", self.hostdevs),
        )
        for field, devices in groups:
            for i, dev in enumerate(devices):
                address = getattr(dev, "address", None)
                if isinstance(address, PciAddress):
                    yield f"{field}[{i}].address", address


def _check_pci_collisions(domain: Domain) -> None:
    seen: dict[tuple[int, int, int], str] = {}
    for field, address in domain.pci_devices():
        if address.slot == 0 and address.bus == 0:
            raise _bad(field, "PCI slot 0 is the host bridge")
        other = seen.get(address.key())
        if other is not None:
            raise _bad(field, f"PCI address {address} is already used by {other}")
        seen[address.key()] = field


def _check_ahci_ports(domain: Domain) -> None:
    per_controller: dict[int, int] = {}
    for i, disk in enumerate(domain.disks):
        if disk.bus != "sata" or not isinstance(disk.address, DriveAddress):
            continue
        if disk.address.unit >= AHCI_PORTS:
            raise _bad(
                f"devices.disk[{i}].address.unit",
                f"an AHCI controller has {AHCI_PORTS} ports (0-31), got {disk.address.unit}",
            )
        count = per_controller.get(disk.address.controller, 0) + 1
        if count > AHCI_PORTS:
            raise _bad(
                f"devices.disk[{i}]",
                f"more than {AHCI_PORTS} disks on SATA controller {disk.address.controller}",
            )
        per_controller[disk.address.controller] = count

"""The builder: a :class:`Domain` becomes the loader and bhyve command lines.

Pure and synchronous. It follows libvirt's bhyve builder (CASES.md §6.2; facts §3)
where libvirt has the feature, so that libvirt's test corpus passes byte for byte:

``bhyve -c … -m MiB [-S] [-A] [-I] [-w] [-u] -H -P -s 0:0,hostbridge [-l bootrom,…]``
then controllers in list order (ahci, xhci, lpc, virtio-scsi, virtio-console), NICs,
virtio-blk and nvme disks, the framebuffer, sound, 9p shares, serial ports, rngs,
``<bhyve:commandline>`` arguments, passthrough devices, and the VM name.

Beyond libvirt 11.3 it emits what bhyve has and that builder lacks: nvme disks,
virtio-console channels, virtio-scsi, com1-com4 with nmdm/tcp/stdio backends, UEFI
variable files (``-l bootrom,CODE,VARS``), slirp NICs, PCI passthrough (which always
wires memory: ``-S``), read-only disks (``,ro``) and block-device (zvol) disks.

Every device keeps the PCI address the model gives it; post-parse assigns them.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from supervisor._record import Record
from supervisor.domain.model import (
    Controller,
    Disk,
    Domain,
    DriveAddress,
    Graphics,
    Interface,
    PciAddress,
)
from supervisor.errors import InvalidValueError, UnsupportedError
from supervisor.host import TOOL_PATHS
from supervisor.vmm.caps import DEFAULT, BhyveCap, Capabilities
from supervisor.vmm.loader import DEFAULT_DEVICE_MAP, build_loader, select_firmware

__all__ = [
    "DEFAULT_VNC_PORT",
    "Commands",
    "TapResolver",
    "VncPortResolver",
    "build_bhyve_argv",
    "build_commands",
    "select_firmware",
]

#: bhyve's own default VNC port, used for autoport when nothing better is given.
DEFAULT_VNC_PORT = 5900

#: (interface index, interface) -> the host tap device name.
TapResolver = Callable[[int, Interface], str]
#: graphics -> the TCP port for an autoport framebuffer.
VncPortResolver = Callable[[Graphics], int]


@attrs.frozen(repr=False)
class Commands(Record):
    """What starting a guest runs.

    Args:
        loader: the loader's argv (bhyveload, grub-bhyve or a custom program), or
            ``None`` when bhyve boots a bootrom.
        bhyve: bhyve's argv.
        device_map: grub-bhyve's device.map text, to be written where the loader argv
            says, or ``None``.
    """

    loader: tuple[str, ...] | None
    bhyve: tuple[str, ...]
    device_map: str | None = None


def _target_tap(index: int, nic: Interface) -> str:
    if nic.target_dev is None:
        raise InvalidValueError(
            f"devices.interface[{index}].target.dev: no tap device assigned yet",
            field=f"devices.interface[{index}].target.dev",
        )
    return nic.target_dev


def _default_vnc_port(graphics: Graphics) -> int:
    return DEFAULT_VNC_PORT


def _unsupported(field: str, message: str) -> UnsupportedError:
    return UnsupportedError(f"{field}: {message}", field=field)


def _bad(field: str, message: str) -> InvalidValueError:
    return InvalidValueError(f"{field}: {message}", field=field)


def _need(caps: Capabilities, cap: BhyveCap, field: str, what: str) -> None:
    if not caps.has(cap):
        raise _unsupported(field, f"this bhyve does not support {what}")


def _slot(field: str, address: object) -> str:
    if not isinstance(address, PciAddress):
        raise _bad(f"{field}.address", "has no PCI address (run post-parse first)")
    return str(address)


class _Builder:
    def __init__(
        self,
        domain: Domain,
        caps: Capabilities,
        taps: TapResolver,
        vnc_port: VncPortResolver,
    ) -> None:
        self.d = domain
        self.caps = caps
        self.taps = taps
        self.vnc_port = vnc_port
        self.argv: list[str] = [TOOL_PATHS["bhyve"]]
        self.x86 = domain.os.arch != "aarch64"

    def add(self, *args: str) -> None:
        self.argv.extend(args)

    def device(self, address: str, *parts: str) -> None:
        self.add("-s", ",".join((address, *parts)))

    def build(self) -> tuple[str, ...]:
        self.globals()
        self.controllers()
        self.nets()
        self.disks()
        self.framebuffer()
        self.sounds()
        self.filesystems()
        self.serials()
        for i, rng in enumerate(self.d.rngs):
            self.device(_slot(f"devices.rng[{i}]", rng.address), "virtio-rnd")
        self.add(*self.d.commandline)
        self.hostdevs()
        self.add(self.d.name)
        return tuple(self.argv)

    # -- global options ---------------------------------------------------------------

    def globals(self) -> None:
        d = self.d
        if d.topology is not None:
            t = d.topology
            if t.dies != 1 or t.clusters != 1:
                raise _unsupported("cpu.topology", "bhyve has no dies or clusters")
            if t.vcpus != d.vcpus:
                raise _bad(
                    "cpu.topology",
                    f"invalid CPU topology: sockets x cores x threads = {t.vcpus}, "
                    f"but vcpu is {d.vcpus}",
                )
            _need(self.caps, BhyveCap.CPUTOPOLOGY, "cpu.topology", "CPU topology")
            self.add(
                "-c", f"cpus={d.vcpus},sockets={t.sockets},cores={t.cores},threads={t.threads}"
            )
        else:
            self.add("-c", str(d.vcpus))
        for pin in d.vcpu_pins:
            for cpu in pin.cpuset:
                self.add("-p", f"{pin.vcpu}:{cpu}")
        self.add("-m", str(d.memory_mib))
        # Passthrough needs wired guest memory; bhyve refuses to start without it.
        if d.wired or d.hostdevs:
            self.add("-S")
        if d.features.acpi:
            self.add("-A")
        if d.features.apic:
            self.add("-I")
        if d.features.msrs_ignore:
            self.add("-w")
        if d.clock == "utc":
            _need(self.caps, BhyveCap.RTC_UTC, "clock.offset", "a UTC clock")
            self.add("-u")
        if self.x86:
            self.add("-H", "-P")
        self.add("-s", "0:0,hostbridge")
        self.bootrom()

    def bootrom(self) -> None:
        d = self.d
        if not d.uses_bootrom:
            return
        if d.os.loader is None:
            raise _bad("os.loader", "firmware='efi' needs a firmware chosen (select_firmware)")
        parts = [d.os.loader.path]
        if d.os.nvram is not None:
            _need(self.caps, BhyveCap.NVRAM, "os.nvram", "UEFI variable files")
            parts.append(d.os.nvram)
        if self.x86:
            _need(self.caps, BhyveCap.LPC_BOOTROM, "os.loader", "booting from a bootrom")
            self.add("-l", ",".join(("bootrom", *parts)))
        else:
            self.add("-o", f"bootrom={parts[0]}")
            if len(parts) > 1:
                self.add("-o", f"bootvars={parts[1]}")

    # -- controllers ------------------------------------------------------------------

    def controllers(self) -> None:
        seen: set[str] = set()
        for i, ctrl in enumerate(self.d.controllers):
            field = f"devices.controller[{i}]"
            if ctrl.type == "pci":
                if ctrl.model not in (None, "pci-root"):
                    raise _unsupported(f"{field}.model", f"bhyve has no PCI {ctrl.model!r}")
                continue
            if ctrl.type in ("usb", "isa") and ctrl.type in seen:
                raise _unsupported(field, f"bhyve has only one {ctrl.type} controller")
            seen.add(ctrl.type)
            if ctrl.type == "sata":
                self.ahci(field, ctrl)
            elif ctrl.type == "usb":
                self.xhci(field, ctrl)
            elif ctrl.type == "isa":
                self.device(_slot(field, ctrl.address), "lpc")
            elif ctrl.type == "scsi":
                self.virtio_scsi(field, ctrl)
            elif ctrl.type == "virtio-serial":
                self.virtio_console(field, ctrl)
            else:
                raise _unsupported(
                    f"{field}.type",
                    "nvme controllers are not used; give each nvme disk its PCI address",
                )

    def _disk_path(self, i: int, disk: Disk) -> str:
        field = f"devices.disk[{i}]"
        if disk.type not in ("file", "block") and disk.source is None:
            raise _unsupported(f"{field}.source", "pool volumes must be resolved to a path")
        if disk.source is None:
            raise _bad(f"{field}.source", f"a {disk.device} on {disk.bus} needs a source")
        return disk.source + (",ro" if disk.readonly and disk.device == "disk" else "")

    def _on_controller(self, bus: str, index: int) -> list[tuple[int, Disk]]:
        return [
            (i, d)
            for i, d in enumerate(self.d.disks)
            if d.bus == bus
            and isinstance(d.address, DriveAddress)
            and d.address.controller == index
        ]

    def ahci(self, field: str, ctrl: Controller) -> None:
        disks = self._on_controller("sata", ctrl.index)
        slot = _slot(field, ctrl.address)
        if self.caps.has(BhyveCap.AHCI32SLOT):
            ports = [
                f"{'cd' if d.device == 'cdrom' else 'hd'}:{self._disk_path(i, d)}" for i, d in disks
            ]
            self.device(slot, "ahci", *ports)
            return
        # Old bhyve: one disk per AHCI controller.
        if not disks:
            return
        if len(disks) > 1:
            raise _unsupported(field, "this bhyve has one disk per AHCI controller")
        i, disk = disks[0]
        emul = "ahci-cd" if disk.device == "cdrom" else "ahci-hd"
        self.device(slot, emul, self._disk_path(i, disk))

    def xhci(self, field: str, ctrl: Controller) -> None:
        if ctrl.model not in (None, "nec-xhci"):
            raise _unsupported(f"{field}.model", f"bhyve's USB is 'nec-xhci', got {ctrl.model!r}")
        if len(self.d.inputs) != 1:
            raise _unsupported(
                field, f"the xhci controller needs exactly one tablet, got {len(self.d.inputs)}"
            )
        self.device(_slot(field, ctrl.address), "xhci", "tablet")

    def virtio_scsi(self, field: str, ctrl: Controller) -> None:
        _need(self.caps, BhyveCap.VIRTIO_SCSI, field, "virtio-scsi")
        disks = self._on_controller("scsi", ctrl.index)
        parts = ["virtio-scsi"]
        if disks:
            i, disk = disks[0]
            parts.append(self._disk_path(i, disk))
        self.device(_slot(field, ctrl.address), *parts)

    def virtio_console(self, field: str, ctrl: Controller) -> None:
        _need(self.caps, BhyveCap.VIRTIO_CONSOLE, field, "virtio-console")
        ports = [f"{c.name}={c.path}" for c in self.d.channels if c.controller == ctrl.index]
        if len(ports) > 16:
            raise _bad(field, f"a virtio-console has 16 ports, got {len(ports)}")
        self.device(_slot(field, ctrl.address), "virtio-console", *ports)

    # -- NICs and disks ---------------------------------------------------------------

    def nets(self) -> None:
        for i, nic in enumerate(self.d.interfaces):
            field = f"devices.interface[{i}]"
            if nic.model == "virtio":
                model = "virtio-net"
            elif nic.model == "e1000":
                _need(self.caps, BhyveCap.NET_E1000, f"{field}.model", "e1000 NICs")
                model = "e1000"
            else:
                raise _unsupported(
                    f"{field}.model", f"bhyve has virtio and e1000, got {nic.model!r}"
                )
            mac = f"mac={nic.mac}" if nic.mac else None
            slot = _slot(field, nic.address)
            if nic.type == "user":
                _need(self.caps, BhyveCap.SLIRP, field, "slirp (user) networking")
                self.device(slot, model, "slirp", *([mac] if mac else []), "open")
            else:
                tap = self.taps(i, nic)
                self.device(slot, model, tap, *([mac] if mac else []))

    def disks(self) -> None:
        for i, disk in enumerate(self.d.disks):
            field = f"devices.disk[{i}]"
            if disk.bus == "sata" and isinstance(disk.address, PciAddress):
                # A SATA disk at its own PCI slot (how a bhyve command line reads back):
                # an AHCI controller with that one port.
                kind = "cd" if disk.device == "cdrom" else "hd"
                if self.caps.has(BhyveCap.AHCI32SLOT):
                    self.device(str(disk.address), "ahci", f"{kind}:{self._disk_path(i, disk)}")
                else:
                    self.device(str(disk.address), f"ahci-{kind}", self._disk_path(i, disk))
                continue
            if disk.bus in ("sata", "scsi"):
                continue
            if disk.device != "disk":
                raise _unsupported(f"{field}.device", f"a {disk.bus} disk cannot be a cdrom")
            path = self._disk_path(i, disk)
            if disk.bus == "virtio":
                self.device(_slot(field, disk.address), "virtio-blk", path)
                continue
            _need(self.caps, BhyveCap.NVME, field, "NVMe disks")
            opts = [path]
            if disk.nvme_max_queues is not None:
                opts.append(f"maxq={disk.nvme_max_queues}")
            if disk.nvme_queue_size is not None:
                opts.append(f"qsz={disk.nvme_queue_size}")
            self.device(_slot(field, disk.address), "nvme", *opts)

    # -- the rest ---------------------------------------------------------------------

    def framebuffer(self) -> None:
        d = self.d
        if not d.graphics:
            return
        if len(d.graphics) != 1 or len(d.videos) != 1:
            raise _unsupported("devices.graphics", "bhyve has one VNC framebuffer and one video")
        graphics, video = d.graphics[0], d.videos[0]
        if not d.uses_bootrom or not self.caps.has(BhyveCap.LPC_BOOTROM):
            raise _unsupported("devices.graphics", "graphics need a guest booting through UEFI")
        _need(self.caps, BhyveCap.FBUF, "devices.graphics", "a VNC framebuffer")
        if video.model != "gop":
            raise _unsupported(
                "devices.video[0].model", f"bhyve's video is 'gop', got {video.model!r}"
            )
        if graphics.autoport:
            port = self.vnc_port(graphics)
        else:
            port = graphics.port
            if not 5900 <= port <= 65535:
                raise _bad("devices.graphics[0].port", f"must be in 5900..65535, got {port}")
        listen = graphics.listen_address or graphics.listen or "127.0.0.1"
        if ":" in listen:
            listen = f"[{listen}]"
        parts = [f"tcp={listen}:{port}"]
        if graphics.passwd is not None:
            _need(self.caps, BhyveCap.VNC_PASSWORD, "devices.graphics[0].passwd", "VNC passwords")
            parts.append(f"password={graphics.passwd}")
        if video.resolution is not None:
            parts += [f"w={video.resolution[0]}", f"h={video.resolution[1]}"]
        if video.vgaconf is not None:
            parts.append(f"vga={video.vgaconf}")
        if video.wait:
            parts.append("wait")
        self.device(_slot("devices.video[0]", video.address), "fbuf", *parts)

    def sounds(self) -> None:
        for i, sound in enumerate(self.d.sounds):
            field = f"devices.sound[{i}]"
            if sound.model != "ich7":
                raise _unsupported(
                    f"{field}.model", f"bhyve's sound is 'ich7', got {sound.model!r}"
                )
            _need(self.caps, BhyveCap.SOUND_HDA, field, "HDA sound")
            parts = ["hda"]
            audio = next((a for a in self.d.audios if a.id == sound.audio_id), None)
            if audio is not None:
                if audio.type != "oss":
                    raise _unsupported(
                        "devices.audio.type", f"bhyve plays through OSS, got {audio.type!r}"
                    )
                # libvirt's mapping, kept for compatibility: play= is the backend's
                # input device and rec= its output device.
                if audio.input_dev:
                    parts.append(f"play={audio.input_dev}")
                if audio.output_dev:
                    parts.append(f"rec={audio.output_dev}")
            self.device(_slot(field, sound.address), *parts)

    def filesystems(self) -> None:
        for i, fs in enumerate(self.d.filesystems):
            field = f"devices.filesystem[{i}]"
            if fs.type != "mount":
                raise _unsupported(
                    f"{field}.type", f"bhyve shares 'mount' filesystems, got {fs.type!r}"
                )
            if fs.driver not in (None, "default"):
                raise _unsupported(f"{field}.driver", f"bhyve has no {fs.driver!r} driver")
            if fs.accessmode != "passthrough":
                raise _unsupported(
                    f"{field}.accessmode", f"bhyve's 9p is 'passthrough', got {fs.accessmode!r}"
                )
            parts = ["virtio-9p", f"{fs.target}={fs.source}"]
            if fs.readonly:
                parts.append("ro")
            self.device(_slot(field, fs.address), *parts)

    def serials(self) -> None:
        for i, serial in enumerate(self.d.serials):
            field = f"devices.serial[{i}]"
            if serial.type == "nmdm":
                if not serial.master:
                    raise _bad(f"{field}.source.master", "is required")
                backend = serial.master
            elif serial.type == "tcp":
                host = f"[{serial.host}]" if serial.host and ":" in serial.host else serial.host
                backend = f"tcp={host}:{serial.service}"
            else:
                backend = "stdio"
            if self.x86:
                self.add("-l", f"com{serial.com},{backend}")
            elif i == 0:
                self.add("-o", f"console={backend}")
            else:
                raise _unsupported(field, "arm64 bhyve has one console")

    def hostdevs(self) -> None:
        for i, hostdev in enumerate(self.d.hostdevs):
            field = f"devices.hostdev[{i}]"
            host = hostdev.host
            parts = ["passthru", f"{host.bus}/{host.slot}/{host.function}"]
            if hostdev.rom is not None:
                parts.append(f"rom={hostdev.rom}")
            self.device(_slot(field, hostdev.address), *parts)


def build_bhyve_argv(
    domain: Domain,
    caps: Capabilities = DEFAULT,
    *,
    taps: TapResolver | None = None,
    vnc_port: VncPortResolver | None = None,
) -> tuple[str, ...]:
    """bhyve's argv for *domain* (a post-parsed model). See :func:`build_commands`."""
    builder = _Builder(domain, caps, taps or _target_tap, vnc_port or _default_vnc_port)
    return builder.build()


def build_commands(
    domain: Domain,
    caps: Capabilities = DEFAULT,
    *,
    device_map_path: str = DEFAULT_DEVICE_MAP,
    taps: TapResolver | None = None,
    vnc_port: VncPortResolver | None = None,
    loader_console: bool = False,
) -> Commands:
    """The loader and bhyve command lines that start *domain*.

    Args:
        domain: a post-parsed guest (every PCI device has its address), with its
            firmware chosen if it asked for one (:func:`select_firmware`).
        caps: what this host's bhyve supports.
        device_map_path: where grub-bhyve's device.map goes (``{name}`` is replaced).
        taps: names the host tap of each bridge/network NIC; by default the NIC's
            ``<target dev>``, which the core assigns at start.
        vnc_port: picks the port of an autoport framebuffer; by default 5900.
        loader_console: put bhyveload on the guest's com1 (see
            :func:`~supervisor.vmm.loader.build_loader`).

    Raises:
        UnsupportedError: this bhyve (per *caps*) cannot run the guest as described.
        InvalidValueError: the description is inconsistent (topology, boot devices,
            missing tap name...).
    """
    bhyve = build_bhyve_argv(domain, caps, taps=taps, vnc_port=vnc_port)
    loader = build_loader(
        domain, caps, device_map_path=device_map_path, loader_console=loader_console
    )
    return Commands(
        loader=None if loader is None else loader.argv,
        bhyve=bhyve,
        device_map=None if loader is None else loader.device_map,
    )

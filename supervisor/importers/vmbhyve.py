"""vm-bhyve guests as domain definitions.

Theory of operation
-------------------

vm-bhyve keeps each guest in ``$vm_dir/NAME/NAME.conf``: rc-style ``key="value"``
lines (a key must start the line, ``#`` starts a comment even inside quotes) read by
its ``vm _run``, which turns them into one bhyve command line. Switches live in
``$vm_dir/.config/system.conf`` (``switch_list``, ``type_NAME``, ``bridge_NAME``).
:func:`parse_conf` reads such a file; :func:`domain_from_vmbhyve` maps every key the
way ``vm _run`` uses it to the guest model:

* what maps is carried over: loader (bhyveload, grub, uefi, uefi-csm, uefi-devel,
  uefi-custom, and the older ``uefi=`` key), cpu and its topology, memory, wired
  memory, uuid, utctime, MSR handling, com ports (as vm-bhyve's
  ``/dev/nmdm-NAME.N`` pairs), disks (virtio-blk, ahci-hd, ahci-cd, nvme on a file, a
  zvol or a custom path; ``ro``), NICs (virtio-net, e1000 on a standard or manual
  switch, MAC, fixed tap), pass-through devices, virtio-rnd, the framebuffer and xhci
  tablet, sound, virtio-console ports, ``bhyve_options`` (kept verbatim as
  ``<bhyve:commandline>``) and ``on_restart``/``on_fault``;
* what bhyve would run but the model or the supervisor does things differently (PCI
  slot numbers, disk cache options, rctl limits, prestart scripts, grub command lists,
  a switch whose bridge cannot be known) is reported, one ``KEY=VALUE (why)`` line
  each, and left out: nothing is guessed;
* what vm-bhyve itself refuses (no loader, no cpu or memory, an unknown disk type) is
  an :class:`InvalidValueError` naming the key.

vm-bhyve always runs bhyve with ``-A -H -P`` (ACPI tables, yield on HLT and PAUSE): the
guests get ``<acpi/>``; the supervisor sets the other two itself. PCI slots are
assigned by the supervisor; a guest that names its NICs after their slot (Linux's
``enp0sN``) may see a new name.

Pure: no I/O. The CLI (:mod:`supervisor.cli.importverbs`) reads the files.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping

import attrs

from supervisor._record import Record
from supervisor.domain.model import (
    Audio,
    Channel,
    Controller,
    CpuTopology,
    Disk,
    DiskBus,
    DiskDevice,
    DiskType,
    Domain,
    Features,
    Graphics,
    Hostdev,
    Input,
    Interface,
    LifecycleAction,
    Loader,
    Os,
    PciAddress,
    Rng,
    Serial,
    Sound,
    VgaConf,
    Video,
    check_name,
    normalize_mac,
    normalize_uuid,
)
from supervisor.domain.postparse import random_mac, random_uuid
from supervisor.errors import InvalidArgvError, InvalidValueError
from supervisor.host import FIRMWARE_DIR, TOOL_PATHS
from supervisor.vmm.bhyveopts import parse_memsize

__all__ = ["VmBhyveImport", "domain_from_vmbhyve", "parse_conf", "switch_bridges"]

_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"", "no", "false", "off", "0"})

#: The firmware each UEFI loader boots (vm-bhyve's ``vm::uefi``).
_UEFI_FIRMWARE = {
    "uefi": "BHYVE_UEFI.fd",
    "uefi-csm": "BHYVE_UEFI_CSM.fd",
    "uefi-devel": "BHYVE_UEFI_CODE-devel.fd",
}
_UEFI_VARS_TEMPLATE = "BHYVE_UEFI_VARS.fd"

#: disk type -> (bus, device, target prefix)
_DISK_TYPES: Mapping[str, tuple[DiskBus, DiskDevice, str]] = {
    "virtio-blk": ("virtio", "disk", "vd"),
    "ahci-hd": ("sata", "disk", "sd"),
    "ahci-cd": ("sata", "cdrom", "sd"),
    "nvme": ("nvme", "disk", "nvme"),
}
_NIC_MODELS = {"virtio-net": "virtio", "e1000": "e1000"}
_VGA: Mapping[str, VgaConf] = {"io": "io", "on": "on", "off": "off"}

#: Keys whose only effect is a PCI slot; the supervisor assigns slots itself.
_SLOT_KEYS = re.compile(
    r"(hostbridge|lpc|install|virt_random|virt_console|sound|xhci|fbuf)_slot"
    r"|(disk|network|passthru)_slot_start|(disk|network)[0-9]+_slot"
)
#: Keys the supervisor has no counterpart for, and why.
_WHY_NOT = {
    "debug": "bhyvesupd always keeps bhyve's output in NAME.bhyve.log",
    "priority": "bhyvesupd runs bhyve at its own priority; use rctl or nice outside it",
    "prestart": "bhyvesupd runs no per-guest scripts",
    "nulliso_fix": "no empty install cdrom is attached",
    "ahci_device_limit": "bhyvesupd places SATA disks on controllers itself",
    "zfs_dataset_opts": "a provisioning setting, not part of a definition",
    "zfs_zvol_opts": "a provisioning setting, not part of a definition",
    "guest": "an old vm-bhyve loader selector; set loader= instead",
}


def _yes(value: str) -> bool:
    return value.strip().lower() not in _FALSE


def parse_conf(text: str) -> tuple[dict[str, str], list[str]]:
    """The settings of a vm-bhyve configuration file, and the lines it could not read.

    As vm-bhyve reads them: a key must start its line (a line that starts with a space
    is ignored), ``#`` starts a comment anywhere, a value may be in double or single
    quotes. A later setting of a key wins.
    """
    values: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip()
        if not line or line[0].isspace():
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            problems.append(f"line {number}: not a key=value setting: {raw.strip()!r}")
            continue
        value = m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[m.group(1)] = value
    return values, problems


def switch_bridges(system_conf: Mapping[str, str]) -> dict[str, str | None]:
    """Each vm-bhyve switch and the bridge its guests' taps join (``None``: not a bridge
    whose name can be known, e.g. a vale or netgraph switch).

    A standard switch is the bridge ``vm-NAME`` when NAME has at most 12 characters
    (vm-bhyve renames its bridge so); a manual switch names its bridge (``bridge_NAME``).
    """
    out: dict[str, str | None] = {}
    for name in system_conf.get("switch_list", "").split():
        kind = system_conf.get(f"type_{name}", "standard")
        if kind == "standard":
            out[name] = f"vm-{name}" if len(name) <= 12 else None
        elif kind == "manual":
            out[name] = system_conf.get(f"bridge_{name}") or None
        else:
            out[name] = None
    return out


@attrs.frozen(repr=False)
class VmBhyveImport(Record):
    """A vm-bhyve guest as a definition.

    Attributes:
        domain: the guest (not post-parsed).
        not_carried: one ``KEY=VALUE (why)`` line for every setting left out.
    """

    domain: Domain
    not_carried: tuple[str, ...] = ()


def _target(prefix: str, index: int) -> str:
    if prefix == "nvme":
        return f"nvme{index}n1"
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return prefix + letters


class _Converter:
    def __init__(
        self,
        name: str,
        conf: Mapping[str, str],
        *,
        vm_dir: str,
        switches: Mapping[str, str | None] | None,
        zfs_dataset: str | None,
        firmware_dir: str,
        uuid_factory: Callable[[], str],
        mac_factory: Callable[[], str],
    ) -> None:
        self.name = name
        self.conf = dict(conf)
        self.vm_dir = vm_dir.rstrip("/") or "/"
        self.guest_dir = f"{self.vm_dir}/{name}"
        self.switches = switches
        self.zfs_dataset = zfs_dataset.strip("/") if zfs_dataset else None
        self.firmware_dir = firmware_dir.rstrip("/")
        self.uuid_factory = uuid_factory
        self.mac_factory = mac_factory
        self.used: set[str] = set()
        self.lost: list[str] = []

    # -- reading keys

    def get(self, key: str, default: str = "") -> str:
        self.used.add(key)
        return self.conf.get(key, default)

    def has(self, key: str) -> bool:
        return bool(self.conf.get(key, ""))

    def yes(self, key: str, default: str = "no") -> bool:
        return _yes(self.get(key, default))

    def drop(self, key: str, why: str) -> None:
        self.used.add(key)
        self.lost.append(f"{key}={self.conf.get(key, '')} ({why})")

    @staticmethod
    def bad(key: str, message: str) -> InvalidValueError:
        return InvalidValueError(f"{key}: {message}", field=key)

    def number(self, key: str, low: int, high: int) -> int:
        text = self.get(key)
        if not re.fullmatch(r"[0-9]+", text) or not low <= int(text) <= high:
            raise self.bad(key, f"must be a number in {low}..{high}, got {text!r}")
        return int(text)

    # -- the guest

    def convert(self) -> Domain:
        check_name(self.name)
        os_, features = self.boot()
        vcpus, topology = self.cpu()
        memory = self.get("memory")
        if not memory:
            raise self.bad("memory", "vm-bhyve needs the guest's memory size (512M, 2G)")
        try:
            memory_kib = parse_memsize(memory) // 1024
        except InvalidArgvError:
            raise self.bad("memory", f"not a size bhyve reads (512M, 2G), got {memory!r}") from None
        uuid_text = self.get("uuid")
        try:
            uuid = normalize_uuid(uuid_text) if uuid_text else self.uuid_factory()
        except InvalidValueError:
            raise self.bad("uuid", f"not a UUID, got {uuid_text!r}") from None
        serials = self.comports()
        disks = self.disks(uefi=os_.loader is not None)
        interfaces = self.nics()
        hostdevs = self.passthru()
        wired = self.yes("wired_memory") or bool(hostdevs)
        graphics, videos, controllers, inputs = self.framebuffer(uefi=os_.loader is not None)
        sounds, audios = self.sound()
        commandline = tuple(shlex.split(self.get("bhyve_options")))
        if self.get("hostbridge") not in ("", "standard"):
            self.drop("hostbridge", "bhyvesupd always gives the guest bhyve's standard hostbridge")
        domain = Domain(
            name=self.name,
            uuid=uuid,
            memory_kib=memory_kib,
            vcpus=vcpus,
            topology=topology,
            wired=wired,
            clock="utc" if self.yes("utctime", "yes") else "localtime",
            features=features,
            os=os_,
            on_reboot=self.action("on_restart", {"restart": "restart", "shutdown": "destroy"}),
            on_crash=self.action("on_fault", {"restart": "restart", "shutdown": "destroy"}),
            commandline=commandline,
            disks=disks,
            interfaces=interfaces,
            serials=serials,
            hostdevs=hostdevs,
            rngs=(Rng(),) if self.yes("virt_random") else (),
            graphics=graphics,
            videos=videos,
            controllers=controllers,
            inputs=inputs,
            sounds=sounds,
            audios=audios,
            channels=self.consoles(),
        )
        self.leftovers()
        return domain

    def boot(self) -> tuple[Os, Features]:
        loader = self.get("loader")
        legacy = self.get("uefi")
        if not loader and _yes(legacy):
            loader = "uefi-csm" if "csm" in legacy.lower() else "uefi"
        msrs = self.yes("ignore_msr") or self.yes("ignore_bad_msr")
        if loader.startswith("uefi"):
            if loader == "uefi-custom":
                firmware = f"{self.vm_dir}/.config/BHYVE_UEFI.fd"
            elif loader in _UEFI_FIRMWARE:
                firmware = f"{self.firmware_dir}/{_UEFI_FIRMWARE[loader]}"
            else:
                raise self.bad("loader", f"not a vm-bhyve loader, got {loader!r}")
            nvram = template = None
            if self.yes("uefi_vars"):
                nvram = f"{self.guest_dir}/uefi-vars.fd"
                template = f"{self.firmware_dir}/{_UEFI_VARS_TEMPLATE}"
            for key in ("bhyveload_loader", "bhyveload_args", "loader_timeout"):
                if self.has(key):
                    self.drop(key, "a UEFI guest runs no loader")
            self.grub_keys("a UEFI guest runs no loader")
            # vm-bhyve runs every UEFI guest with -w.
            features = Features(acpi=True, msrs_ignore=True)
            os_ = Os(
                loader=Loader(path=firmware, readonly=True, type="pflash"),
                nvram=nvram,
                nvram_template=template,
            )
            return os_, features
        features = Features(acpi=True, msrs_ignore=msrs)
        if self.has("uefi_vars") and self.yes("uefi_vars"):
            self.drop("uefi_vars", "only UEFI guests have variables")
        if loader == "bhyveload":
            self.grub_keys("the guest boots with bhyveload")
            return Os(bootloader_args=self.bhyveload_args()), features
        if loader == "grub":
            for key in ("bhyveload_loader", "bhyveload_args"):
                if self.has(key):
                    self.drop(key, "the guest boots with grub-bhyve")
            if self.has("loader_timeout"):
                self.drop("loader_timeout", "grub-bhyve's menu timeout is the guest's own")
            self.grub_keys("bhyvesupd runs grub-bhyve on the guest's own grub.cfg")
            return Os(bootloader=TOOL_PATHS["grub-bhyve"]), features
        if not loader:
            raise self.bad("loader", "vm-bhyve cannot start a guest without a loader")
        raise self.bad("loader", f"not a vm-bhyve loader, got {loader!r}")

    def grub_keys(self, why: str) -> None:
        for key in sorted(self.conf):
            if re.fullmatch(r"grub_(run|install)[0-9]+|grub_run_(partition|dir|file)", key):
                if self.has(key):
                    self.drop(key, why)
                else:
                    self.used.add(key)

    def bhyveload_args(self) -> str | None:
        """The whole bhyveload command, when the guest changes vm-bhyve's defaults;
        ``None`` lets the supervisor build it."""
        keys = ("bhyveload_loader", "bhyveload_args", "loader_timeout")
        if not any(self.has(k) for k in keys):
            for k in keys:
                self.used.add(k)
            return None
        disk = self.get("disk0_name")
        if not disk:
            raise self.bad("disk0_name", "bhyveload needs a boot disk")
        path = self.disk_path(0, disk, self.conf.get("disk0_dev", "file") or "file")
        if path is None:
            return None
        memory = self.conf.get("memory", "")
        args = ["-m", memory]
        if self.conf.get("comports", "com1").split():
            args += ["-c", f"/dev/nmdm-{self.name}.1A"]
        args += ["-e", f"autoboot_delay={self.get('loader_timeout', '3') or '3'}"]
        if self.has("bhyveload_loader"):
            args += ["-l", self.get("bhyveload_loader")]
        args += self.get("bhyveload_args").split()
        args += ["-d", path, self.name]
        for i, arg in enumerate(args):
            if " " in arg or not arg:
                raise self.bad("bhyveload_args", f"argument {i} is empty or has a space")
        return " ".join(args)

    def cpu(self) -> tuple[int, CpuTopology | None]:
        if not self.has("cpu"):
            self.get("cpu")
            raise self.bad("cpu", "vm-bhyve needs the guest's cpu count")
        cpus = self.number("cpu", 1, 65535)
        parts = {}
        for key in ("sockets", "cores", "threads"):
            if self.has(f"cpu_{key}"):
                parts[key] = self.number(f"cpu_{key}", 1, 65535)
            else:
                self.used.add(f"cpu_{key}")
        if not parts:
            return cpus, None
        topology = CpuTopology(**parts)
        if topology.vcpus != cpus:
            raise self.bad(
                "cpu",
                f"cpu={cpus} but cpu_sockets x cpu_cores x cpu_threads = {topology.vcpus}; "
                "bhyve refuses that",
            )
        return cpus, topology

    def action(self, key: str, mapping: Mapping[str, LifecycleAction]) -> LifecycleAction:
        value = self.get(key)
        if not value:
            return "restart" if key == "on_restart" else "destroy"
        if value not in mapping:
            raise self.bad(key, f"must be one of {', '.join(mapping)}, got {value!r}")
        return mapping[value]

    def comports(self) -> tuple[Serial, ...]:
        out = []
        seen = set()
        for i, port in enumerate(self.get("comports", "com1").split(), 1):
            m = re.fullmatch(r"com([1-4])", port)
            if m is None:
                raise self.bad("comports", f"ports are com1..com4, got {port!r}")
            if port in seen:
                raise self.bad("comports", f"{port} is listed twice")
            seen.add(port)
            base = f"/dev/nmdm-{self.name}.{i}"
            out.append(
                Serial(type="nmdm", port=int(m.group(1)) - 1, master=f"{base}A", slave=f"{base}B")
            )
        return tuple(out)

    def disk_path(self, index: int, disk: str, dev: str) -> str | None:
        key = f"disk{index}_dev"
        if dev == "file":
            return f"{self.guest_dir}/{disk}"
        if dev in ("zvol", "sparse-zvol"):
            if self.zfs_dataset is None:
                self.drop(
                    f"disk{index}_name",
                    f"a {dev} below the guest's dataset: give the datastore's ZFS dataset",
                )
                return None
            return f"/dev/zvol/{self.zfs_dataset}/{self.name}/{disk}"
        if dev == "custom":
            return disk
        if dev == "iscsi":
            self.drop(key, "the iSCSI disk's device node is only known on the host at run time")
            self.used.add(f"disk{index}_name")
            return None
        raise self.bad(key, f"must be file, zvol, sparse-zvol, custom or iscsi, got {dev!r}")

    def disks(self, *, uefi: bool) -> tuple[Disk, ...]:
        out: list[Disk] = []
        counts: dict[str, int] = {}
        index = 0
        while self.has(f"disk{index}_name") and self.has(f"disk{index}_type"):
            kind = self.get(f"disk{index}_type")
            name = self.get(f"disk{index}_name")
            dev = self.get(f"disk{index}_dev", "file") or "file"
            opts = [o for o in self.get(f"disk{index}_opts").split(",") if o]
            self.used.add(f"disk{index}_size")
            if self.has(f"disk{index}_size"):
                self.drop(f"disk{index}_size", "a template setting; the image has its own size")
            if kind not in _DISK_TYPES:
                raise self.bad(
                    f"disk{index}_type",
                    f"must be virtio-blk, ahci-hd, ahci-cd or nvme, got {kind!r}",
                )
            path = self.disk_path(index, name, dev)
            if path is not None:
                bus, device, prefix = _DISK_TYPES[kind]
                group = "sd" if prefix == "sd" else prefix
                n = counts.get(group, 0)
                counts[group] = n + 1
                readonly = "ro" in opts
                lost = [o for o in opts if o != "ro"]
                if lost:
                    kept = "; 'ro' is kept" if readonly else ""
                    self.lost.append(
                        f"disk{index}_opts={','.join(opts)} "
                        f"(bhyvesupd does not set {','.join(lost)}{kept})"
                    )
                disk_type: DiskType = "block" if path.startswith("/dev/") else "file"
                try:
                    out.append(
                        Disk(
                            target=_target(group, n),
                            source=path,
                            type=disk_type,
                            device=device,
                            bus=bus,
                            readonly=readonly,
                        )
                    )
                except InvalidValueError as exc:
                    raise self.bad(f"disk{index}_name", exc.message) from None
            index += 1
        return tuple(out)

    def nics(self) -> tuple[Interface, ...]:
        out: list[Interface] = []
        index = 0
        while self.has(f"network{index}_type"):
            key = f"network{index}"
            kind = self.get(f"{key}_type")
            if kind not in _NIC_MODELS:
                raise self.bad(f"{key}_type", f"must be virtio-net or e1000, got {kind!r}")
            switch = self.get(f"{key}_switch")
            mac_text = self.get(f"{key}_mac")
            tap = self.get(f"{key}_device") or self.get(f"{key}_name") or None
            if self.yes(f"{key}_span"):
                self.drop(f"{key}_span", "taps join their bridge as ordinary members")
            bridge = self.bridge_of(index, switch)
            if bridge is None:
                index += 1
                continue
            try:
                mac = normalize_mac(mac_text) if mac_text else self.mac_factory()
                out.append(
                    Interface(
                        type="bridge",
                        bridge=bridge,
                        mac=mac,
                        model=_NIC_MODELS[kind],
                        target_dev=tap,
                    )
                )
            except InvalidValueError as exc:
                field = f"{key}_mac" if exc.field == "mac" else f"{key}_device"
                raise self.bad(field, exc.message) from None
            index += 1
        return tuple(out)

    def bridge_of(self, index: int, switch: str) -> str | None:
        key = f"network{index}_switch"
        if not switch:
            self.lost.append(
                f"network{index}_type={self.conf.get(f'network{index}_type')} "
                "(no switch: vm-bhyve leaves the tap unattached; bhyvesupd needs a bridge)"
            )
            return None
        if self.switches is None:
            self.drop(key, "the switches are unknown: import from the vm_dir (.config/system.conf)")
            return None
        if switch not in self.switches:
            self.drop(key, "no such switch in .config/system.conf")
            return None
        bridge = self.switches[switch]
        if bridge is None:
            self.drop(key, "the switch is not a bridge with a fixed name (vale, netgraph...)")
        return bridge

    def passthru(self) -> tuple[Hostdev, ...]:
        out: list[Hostdev] = []
        index = 0
        while self.has(f"passthru{index}"):
            key = f"passthru{index}"
            value = self.get(key)
            m = re.fullmatch(r"([0-9]+)/([0-9]+)/([0-9]+)(?:=([0-9]+):([0-9]+))?", value)
            if m is None:
                raise self.bad(key, f"must be B/S/F or B/S/F=SLOT:FUNC, got {value!r}")
            b, s, f, gs, gf = m.groups()
            try:
                address = PciAddress(slot=int(gs), function=int(gf)) if gs is not None else None
                out.append(
                    Hostdev(
                        host=PciAddress(bus=int(b), slot=int(s), function=int(f)), address=address
                    )
                )
            except InvalidValueError as exc:
                raise self.bad(key, exc.message) from None
            index += 1
        return tuple(out)

    def framebuffer(
        self, *, uefi: bool
    ) -> tuple[tuple[Graphics, ...], tuple[Video, ...], tuple[Controller, ...], tuple[Input, ...]]:
        keys = (
            "graphics_port",
            "graphics_listen",
            "graphics_res",
            "graphics_vga",
            "vnc_password",
            "graphics_wait",
        )
        controllers: tuple[Controller, ...] = ()
        inputs: tuple[Input, ...] = ()
        if self.yes("xhci_mouse"):
            controllers = (Controller(type="usb", model="nec-xhci"),)
            inputs = (Input(),)
        if not self.yes("graphics"):
            for key in keys:
                self.used.add(key)
            return (), (), controllers, inputs
        if not uefi:
            self.drop("graphics", "vm-bhyve gives only UEFI guests a framebuffer")
            for key in keys:
                self.used.add(key)
            return (), (), controllers, inputs
        port_text = self.get("graphics_port")
        port = -1
        if port_text:
            port = self.number("graphics_port", 1, 65535)
        res = self.get("graphics_res")
        resolution = None
        if res:
            m = re.fullmatch(r"([0-9]+)x([0-9]+)", res)
            if m is None:
                raise self.bad("graphics_res", f"must be WIDTHxHEIGHT, got {res!r}")
            resolution = (int(m.group(1)), int(m.group(2)))
        vga = self.get("graphics_vga")
        if vga and vga not in _VGA:
            raise self.bad("graphics_vga", f"must be io, on or off, got {vga!r}")
        wait = self.get("graphics_wait", "auto")
        # "auto" waits only on an install run, which a definition is not.
        wait_flag = False if wait == "auto" else _yes(wait)
        try:
            graphics = Graphics(
                port=port,
                autoport=port == -1,
                listen=self.get("graphics_listen") or "0.0.0.0",
                passwd=self.get("vnc_password") or None,
            )
            video = Video(
                model="gop",
                resolution=resolution,
                vgaconf=_VGA[vga] if vga else None,
                wait=wait_flag,
            )
        except InvalidValueError as exc:
            raise self.bad(f"graphics_{exc.field}", exc.message) from None
        return (graphics,), (video,), controllers, inputs

    def sound(self) -> tuple[tuple[Sound, ...], tuple[Audio, ...]]:
        play = self.get("sound_play", "/dev/dsp0") or "/dev/dsp0"
        rec = self.get("sound_rec") or None
        if not self.yes("sound"):
            return (), ()
        # The model keeps libvirt's naming, in which bhyve's play= device is the OSS
        # backend's input and rec= its output (see supervisor.vmm.argv).
        return (Sound(audio_id=1),), (Audio(id=1, input_dev=play, output_dev=rec),)

    def consoles(self) -> tuple[Channel, ...]:
        out: list[Channel] = []
        index = 0
        while self.has(f"virt_console{index}") and index < 16:
            value = self.get(f"virt_console{index}")
            port = str(index) if value.lower() in ("yes", "on", "1") else value
            try:
                out.append(Channel(name=port, path=f"{self.guest_dir}/vtcon.{port}"))
            except InvalidValueError as exc:
                raise self.bad(f"virt_console{index}", exc.message) from None
            index += 1
        return tuple(out)

    def leftovers(self) -> None:
        for key in sorted(self.conf):
            if key in self.used:
                continue
            value = self.conf[key]
            if not value:
                continue  # an empty setting is vm-bhyve's default
            if _SLOT_KEYS.fullmatch(key):
                self.drop(key, "bhyvesupd assigns PCI slots itself")
            elif key in _WHY_NOT:
                self.drop(key, _WHY_NOT[key])
            elif key.startswith("limit_"):
                self.drop(key, "rctl limits are not part of a definition")
            else:
                self.drop(key, "not a setting bhyvesupd knows")


def domain_from_vmbhyve(
    name: str,
    conf: Mapping[str, str],
    *,
    vm_dir: str,
    switches: Mapping[str, str | None] | None = None,
    zfs_dataset: str | None = None,
    firmware_dir: str = FIRMWARE_DIR,
    uuid_factory: Callable[[], str] = random_uuid,
    mac_factory: Callable[[], str] = random_mac,
) -> VmBhyveImport:
    """The definition of vm-bhyve guest *name*, from its settings *conf*.

    Args:
        name: the guest (its directory's name).
        conf: the settings of ``NAME.conf`` (:func:`parse_conf`).
        vm_dir: the datastore directory holding ``NAME/`` (vm-bhyve's ``$vm_dir``).
        switches: each switch's bridge (:func:`switch_bridges`), or ``None`` when the
            datastore has no ``.config/system.conf``; NICs on an unknown switch are
            reported and left out.
        zfs_dataset: the datastore's ZFS dataset (``zfs:pool/vm`` in ``vm_dir``), which
            zvol disks are below; without it they are reported and left out.
        firmware_dir: where the UEFI firmware lives.
        uuid_factory / mac_factory: for a guest without ``uuid``, a NIC without a MAC
            (vm-bhyve too makes them up at the first start).

    Raises:
        InvalidValueError: vm-bhyve itself would not start the guest (no loader, cpu
            or memory; a value it does not know); ``field`` names the key.
    """
    converter = _Converter(
        name,
        conf,
        vm_dir=vm_dir,
        switches=switches,
        zfs_dataset=zfs_dataset,
        firmware_dir=firmware_dir,
        uuid_factory=uuid_factory,
        mac_factory=mac_factory,
    )
    domain = converter.convert()
    return VmBhyveImport(domain=domain, not_carried=tuple(converter.lost))

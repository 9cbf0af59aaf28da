"""Post-parse: what a parsed domain gains before anyone uses it.

This is libvirt's bhyve post-parse, in its order (CASES.md §6.1; libvirt-bhyve-facts §3,
"Slot assignment"), plus the supervisor's own devices:

1. a ``pci-root`` controller, and an ``isa`` (LPC) controller when the guest boots
   from a bootrom, has a serial port or console, or has graphics and a video;
2. SATA disks get drive addresses from their target names (one AHCI controller per
   32 disks when bhyve has AHCI32SLOT, one per disk otherwise); videos of model
   ``default`` become ``gop``; nmdm serials without paths get ``/dev/nmdm<uuid>A``
   and ``B``; interfaces without a MAC get one;
3. ``<boot dev='hd'/>`` when nothing says how to boot; the implicit SATA, virtio-serial
   and virtio-scsi controllers; a video when there are graphics without one; the
   console that mirrors serial port 0;
4. PCI slots for everything without one.

Generating MACs and UUIDs is injectable (:class:`IdSource`) so tests can use fixed
values.
"""

from __future__ import annotations

import os
import uuid as _uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from supervisor._record import Record
from supervisor.domain.model import (
    AHCI_PORTS,
    Controller,
    ControllerType,
    Disk,
    Domain,
    DriveAddress,
    PciAddress,
    Serial,
    Video,
    prefixed,
    target_index,
)
from supervisor.errors import InvalidValueError
from supervisor.vmm.caps import DEFAULT, BhyveCap, Capabilities

__all__ = ["LIBVIRT_MAC_PREFIX", "IdSource", "post_parse", "random_mac", "random_uuid"]

#: libvirt's (QEMU's) locally administered prefix; the supervisor uses it too.
LIBVIRT_MAC_PREFIX = "52:54:00"
#: bhyve's virtio-console has 16 ports per device.
CONSOLE_PORTS = 16
#: The last usable PCI slot on bus 0.
LAST_SLOT = 31


def random_mac() -> str:
    """A random MAC address under :data:`LIBVIRT_MAC_PREFIX`."""
    tail = os.urandom(3)
    return LIBVIRT_MAC_PREFIX + "".join(f":{b:02x}" for b in tail)


def random_uuid() -> str:
    """A random (version 4) UUID."""
    return str(_uuid.uuid4())


@attrs.frozen(repr=False)
class IdSource(Record):
    """Where post-parse gets new identifiers.

    Args:
        mac: returns a new MAC address (lower-case, colon-separated).
        uuid: returns a new UUID string.
    """

    mac: Callable[[], str] = random_mac
    uuid: Callable[[], str] = random_uuid


_T = TypeVar("_T")


def _replace(items: Sequence[_T], index: int, item: _T) -> tuple[_T, ...]:
    return (*items[:index], item, *items[index + 1 :])


_DOMAIN_FIELDS = tuple(f.name for f in attrs.fields(Domain))


def _draft(domain: Domain, **changes: Any) -> Domain:
    """*domain* with *changes*, not validated.

    Post-parse builds its result in a dozen steps, and validating a whole domain
    walks every device: each step yields a draft, and :func:`assign_pci_slots`, the
    last one, builds the finished domain with every check (half of the time a
    definition took to load went into validating drafts).
    """
    new = object.__new__(Domain)
    put = object.__setattr__
    for name in _DOMAIN_FIELDS:
        put(new, name, changes[name] if name in changes else getattr(domain, name))
    return new


def _same(new: Sequence[object], old: Sequence[object]) -> bool:
    """Whether a step's *new* items are the very *old* ones (nothing to draft)."""
    return len(new) == len(old) and all(a is b for a, b in zip(new, old, strict=True))


def post_parse(domain: Domain, caps: Capabilities = DEFAULT, ids: IdSource | None = None) -> Domain:
    """*domain* with libvirt's bhyve post-parse applied (see the module docstring).

    Post-parse is idempotent: applying it to its own result changes nothing.

    Raises:
        InvalidValueError: two ``<boot>`` styles at once, or no PCI slot left.
    """
    ids = ids or IdSource()
    # Each step drafts only what it changes: a draft copies every field of the domain.
    defaults: dict[str, Any] = {}
    if domain.uuid is None:
        defaults["uuid"] = ids.uuid()
    if domain.os.arch is None:
        defaults["os"] = attrs.evolve(domain.os, arch="x86_64")
    if domain.current_memory_kib is None or domain.current_memory_kib > domain.memory_kib:
        defaults["current_memory_kib"] = domain.memory_kib
    if defaults:
        domain = _draft(domain, **defaults)
    domain = _serial_console_compat(domain)
    domain = _implicit_bridges(domain)
    domain = _device_defaults(domain, caps, ids)
    domain = _boot_order(domain)
    domain = _implicit_controllers(domain)
    if domain.graphics and not domain.videos:
        domain = _draft(domain, videos=(Video(model="gop", heads=1, primary=True),))
    return assign_pci_slots(domain)


def _serial_console_compat(domain: Domain) -> Domain:
    # libvirt keeps <console> 0 as a view of <serial> 0: a lone console becomes the
    # serial port, and every serial port 0 gets its console.
    serials = domain.serials
    consoles = domain.consoles
    if consoles and not serials and consoles[0].target_type in (None, "serial"):
        first = attrs.evolve(consoles[0], target_type=None, port=consoles[0].port or 0)
        serials = (first,)
    serials = tuple(attrs.evolve(s, port=i) if s.port is None else s for i, s in enumerate(serials))
    if serials:
        mirror = attrs.evolve(serials[0], target_type="serial")
        consoles = (mirror, *consoles[1:]) if consoles else (mirror,)
    return _draft(domain, serials=serials, consoles=consoles)


def _insert_controller(
    controllers: tuple[Controller, ...], new: Controller
) -> tuple[Controller, ...]:
    """Insert *new* after the controllers of its type with a lower index (libvirt's rule),
    before one with a higher index, or at the end when its type is new."""
    insert_at = len(controllers)
    for i in range(len(controllers) - 1, -1, -1):
        current = controllers[i]
        if current.type != new.type:
            continue
        if current.index < new.index:
            insert_at = i + 1
            break
        insert_at = i
    return (*controllers[:insert_at], new, *controllers[insert_at:])


def _add_controllers(domain: Domain, wanted: Sequence[Controller]) -> Domain:
    """*domain* plus those of *wanted* whose type and index it lacks, in one draft (none
    when it lacks nothing)."""
    controllers = domain.controllers
    for new in wanted:
        if not any(c.type == new.type and c.index == new.index for c in controllers):
            controllers = _insert_controller(controllers, new)
    if controllers is domain.controllers:
        return domain
    return _draft(domain, controllers=controllers)


def _implicit_bridges(domain: Domain) -> Domain:
    wanted = [Controller(type="pci", index=0, model="pci-root")]
    needs_lpc = (
        domain.uses_bootrom
        or bool(domain.serials)
        or bool(domain.consoles)
        # A framebuffer always has a video: a missing one is added below. Counting it
        # here keeps a definition read back from gaining the LPC bridge later.
        or bool(domain.graphics)
    )
    if needs_lpc and domain.os.arch != "aarch64":
        wanted.append(Controller(type="isa", index=0))
    return _add_controllers(domain, wanted)


def _device_defaults(domain: Domain, caps: Capabilities, ids: IdSource) -> Domain:
    ahci32 = caps.has(BhyveCap.AHCI32SLOT)
    disks = list(domain.disks)
    for i, disk in enumerate(disks):
        if disk.address is not None:
            continue
        if disk.bus == "sata":
            with prefixed(f"devices.disk[{i}]"):
                index = target_index(disk.target)
            if ahci32:
                address = DriveAddress(controller=index // AHCI_PORTS, unit=index % AHCI_PORTS)
            else:
                address = DriveAddress(controller=index)
            disks[i] = attrs.evolve(disk, address=address)
        elif disk.bus == "scsi":
            with prefixed(f"devices.disk[{i}]"):
                index = target_index(disk.target)
            disks[i] = attrs.evolve(disk, address=DriveAddress(controller=0, unit=index))
    videos = tuple(
        attrs.evolve(
            v,
            model="gop" if v.model == "default" else v.model,
            heads=1 if v.heads is None else v.heads,
            primary=True if i == 0 else v.primary,
        )
        for i, v in enumerate(domain.videos)
    )
    interfaces = tuple(
        attrs.evolve(n, mac=ids.mac()) if n.mac is None else n for n in domain.interfaces
    )
    serials = tuple(_nmdm_defaults(s, domain.uuid) for s in domain.serials)
    consoles = tuple(_nmdm_defaults(s, domain.uuid) for s in domain.consoles)
    channels = tuple(
        attrs.evolve(c, controller=i // CONSOLE_PORTS, port=i % CONSOLE_PORTS)
        if c.controller is None
        else c
        for i, c in enumerate(domain.channels)
    )
    rngs = tuple(
        attrs.evolve(r, source="/dev/random") if r.source is None else r for r in domain.rngs
    )
    changed = {
        name: new
        for name, new in (
            ("rngs", rngs),
            ("disks", tuple(disks)),
            ("videos", videos),
            ("interfaces", interfaces),
            ("serials", serials),
            ("consoles", consoles),
            ("channels", channels),
        )
        if not _same(new, getattr(domain, name))
    }
    return _draft(domain, **changed) if changed else domain


def _nmdm_defaults(serial: Serial, uuid: str | None) -> Serial:
    if serial.type != "nmdm" or (serial.master and serial.slave):
        return serial
    return attrs.evolve(serial, master=f"/dev/nmdm{uuid}A", slave=f"/dev/nmdm{uuid}B")


def _boot_order(domain: Domain) -> Domain:
    per_device = any(d.boot_order is not None for d in domain.disks)
    if per_device and domain.os.boot_devs:
        raise InvalidValueError(
            "os.boot: per-device <boot order> cannot be used together with <os><boot dev>",
            field="os.boot",
        )
    if not per_device and not domain.os.boot_devs and domain.os.bootloader is None:
        return _draft(domain, os=attrs.evolve(domain.os, boot_devs=("hd",)))
    return domain


def _implicit_controllers(domain: Domain) -> Domain:
    wanted: list[Controller] = []
    for bus, type_ in (("sata", "sata"), ("scsi", "scsi")):
        indices = [
            d.address.controller
            for d in domain.disks
            if d.bus == bus and isinstance(d.address, DriveAddress)
        ]
        if indices:
            model = "virtio-scsi" if type_ == "scsi" else None
            for index in range(max(indices) + 1):
                ctype: ControllerType = "sata" if type_ == "sata" else "scsi"
                wanted.append(Controller(type=ctype, index=index, model=model))
    consoles = [c.controller for c in domain.channels if c.controller is not None]
    if consoles:
        wanted += [Controller(type="virtio-serial", index=i) for i in range(max(consoles) + 1)]
    return _add_controllers(domain, wanted)


# --------------------------------------------------------------------------------------
# PCI slots


class _Slots:
    def __init__(self, domain: Domain) -> None:
        self.used: set[int] = {0}
        for _field, address in domain.pci_devices():
            if address.bus == 0:
                self.used.add(address.slot)

    def take(self, field: str) -> PciAddress:
        for slot in range(1, LAST_SLOT + 1):
            if slot not in self.used:
                self.used.add(slot)
                return PciAddress(slot=slot)
        raise InvalidValueError(f"{field}: no more available PCI slots", field=field)


def _pci_wanted(disk: Disk) -> bool:
    return disk.bus in ("virtio", "nvme") and disk.address is None


def assign_pci_slots(domain: Domain) -> Domain:
    """*domain* with a PCI slot for every PCI device that has none.

    Explicit addresses are kept. Slot 0 is the host bridge; slot 1 is kept for the LPC
    bridge unless a device claims it. The rest take the lowest free slot in libvirt's
    order: controllers, NICs, virtio (and nvme) disks, videos, sounds, filesystems,
    rngs, then the supervisor's additions (passthrough devices).

    Raises:
        InvalidValueError: the 31 slots of bus 0 are exhausted.
    """
    slots = _Slots(domain)
    lpc_reserved = 1 not in slots.used
    slots.used.add(1)

    controllers = list(domain.controllers)
    for i, ctrl in enumerate(controllers):
        if ctrl.address is not None or ctrl.type == "pci":
            continue
        if ctrl.type == "isa" and lpc_reserved:
            lpc_reserved = False
            controllers[i] = attrs.evolve(ctrl, address=PciAddress(slot=1))
            continue
        controllers[i] = attrs.evolve(ctrl, address=slots.take(f"devices.controller[{i}]"))

    def fill(name: str, items: Sequence[_T], wanted: Callable[[_T], bool]) -> tuple[_T, ...]:
        out = list(items)
        for i, item in enumerate(out):
            if wanted(item):
                out[i] = attrs.evolve(item, address=slots.take(f"devices.{name}[{i}]"))  # type: ignore[misc]
        return tuple(out)

    def no_address(item: object) -> bool:
        return getattr(item, "address", None) is None

    return attrs.evolve(
        domain,
        controllers=tuple(controllers),
        interfaces=fill("interface", domain.interfaces, no_address),
        disks=fill("disk", domain.disks, _pci_wanted),
        videos=fill("video", domain.videos, no_address),
        sounds=fill("sound", domain.sounds, no_address),
        filesystems=fill("filesystem", domain.filesystems, no_address),
        rngs=fill("rng", domain.rngs, no_address),
        hostdevs=fill("hostdev", domain.hostdevs, no_address),
    )

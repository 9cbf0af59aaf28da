"""The command that loads a guest's kernel before bhyve runs, and UEFI firmware choice.

A guest without a bootrom needs a loader run first (libvirt-bhyve-facts §3, "Loader
commands"; CASES.md §6.3):

* no ``<bootloader>``: ``bhyveload -m MiB -d BOOTDISK NAME``, or bhyveload with the
  ``<bootloader_args>`` split on spaces;
* a ``<bootloader>`` containing ``grub-bhyve`` and no arguments:
  ``grub-bhyve --root R --device-map MAP --memory MiB [--cons-dev TTY] NAME`` plus the
  device.map text;
* any other ``<bootloader>`` (or grub-bhyve with arguments): the program and its
  arguments, which are then required.

A UEFI guest (``<os firmware='efi'>``) gets its firmware chosen from the firmware
directory at start (:func:`select_firmware`), as libvirt's prepare step does.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from supervisor._record import Record
from supervisor.domain.model import Disk, Domain, Loader
from supervisor.errors import HostNotReadyError, InvalidValueError, UnsupportedError
from supervisor.host import FIRMWARE_DIR, TOOL_PATHS
from supervisor.vmm.caps import DEFAULT, Capabilities

__all__ = [
    "DEFAULT_DEVICE_MAP",
    "PREFERRED_FIRMWARE",
    "LoaderCommand",
    "boot_disk",
    "build_loader",
    "select_firmware",
]

#: Where the grub device.map of guest NAME is written (the core fills in NAME).
DEFAULT_DEVICE_MAP = "/var/run/bhyvesupd/grub_bhyve-{name}-device.map"
#: The firmware chosen when the directory has it (sysutils/bhyve-firmware).
PREFERRED_FIRMWARE = "BHYVE_UEFI.fd"


@attrs.frozen(repr=False)
class LoaderCommand(Record):
    """A loader's argv and, for grub-bhyve, the device.map text it reads."""

    argv: tuple[str, ...]
    device_map: str | None = None


def select_firmware(
    domain: Domain, firmware_dir_listing: Iterable[str], firmware_dir: str = FIRMWARE_DIR
) -> Domain:
    """*domain* with its UEFI firmware chosen, when it asks for one (``firmware='efi'``
    and no ``<loader>``).

    Takes :data:`PREFERRED_FIRMWARE` if the directory has it, otherwise the first
    entry listed; names starting with ``.`` are skipped.

    Args:
        firmware_dir_listing: the directory's entries in directory order.
        firmware_dir: the directory, as written into the loader path.

    Raises:
        HostNotReadyError: the directory holds no firmware.
        InvalidValueError: the guest's loader is in a format bhyve cannot boot.
    """
    if domain.os.firmware != "efi" or domain.os.bootloader is not None:
        return domain
    if domain.os.loader is not None:
        if domain.os.loader.format not in (None, "raw"):
            raise InvalidValueError(
                f"os.loader.format: bhyve boots raw firmware, got {domain.os.loader.format!r}",
                field="os.loader.format",
            )
        return domain
    names = [n for n in firmware_dir_listing if not n.startswith(".")]
    if not names:
        raise HostNotReadyError(f"no firmwares found in {firmware_dir}", field="os.firmware")
    name = PREFERRED_FIRMWARE if PREFERRED_FIRMWARE in names else names[0]
    loader = Loader(path=f"{firmware_dir}/{name}", readonly=True, type="pflash", format="raw")
    return attrs.evolve(domain, os=attrs.evolve(domain.os, loader=loader))


def _usable(disk: Disk) -> bool:
    return disk.type in ("file", "block", "volume") and disk.source is not None


def boot_disk(domain: Domain) -> Disk:
    """The disk bhyveload boots: of the ``<boot dev>`` type, or the one with a
    ``<boot order>``, or else the first disk.

    Raises:
        InvalidValueError: no such disk, or more than one is asked for.
    """
    disks = [d for d in domain.disks if _usable(d)]
    devs = domain.os.boot_devs
    if len(devs) > 1:
        raise InvalidValueError("os.boot: only one boot device is supported", field="os.boot")
    if len(devs) == 1:
        wanted = {"hd": "disk", "cdrom": "cdrom"}.get(devs[0])
        if wanted is None:
            raise UnsupportedError(f"os.boot: cannot boot from {devs[0]!r}", field="os.boot")
        for disk in disks:
            if disk.device == wanted:
                return disk
        raise InvalidValueError(
            f"os.boot: cannot find a boot device of requested type {devs[0]!r}", field="os.boot"
        )
    ordered = [d for d in disks if d.boot_order is not None]
    if len(ordered) > 1:
        raise InvalidValueError(
            "devices.disk: only one boot device is supported", field="devices.disk"
        )
    if ordered:
        return ordered[0]
    if not disks:
        raise InvalidValueError(
            "devices.disk: a guest without a bootrom needs a disk to load from",
            field="devices.disk",
        )
    return disks[0]


def _grub(domain: Domain, caps: Capabilities, device_map_path: str) -> LoaderCommand:
    disks = [d for d in domain.disks if _usable(d)]
    ordered = sorted(
        (d for d in disks if d.boot_order is not None), key=lambda d: d.boot_order or 0
    )
    lines: list[str] = []
    if ordered:
        disk = ordered[0]
        root = "cd" if disk.device == "cdrom" else "hd0,msdos1"
        lines.append(f"({'cd' if disk.device == 'cdrom' else 'hd0'}) {disk.source}")
    else:
        hdd = next((d for d in disks if d.device == "disk"), None)
        cd = next((d for d in disks if d.device == "cdrom"), None)
        if hdd is None and cd is None:
            raise InvalidValueError(
                "devices.disk: grub-bhyve needs a disk or cdrom to boot", field="devices.disk"
            )
        root = "cd" if cd is not None else "hd0,msdos1"
        if hdd is not None:
            lines.append(f"(hd0) {hdd.source}")
        if cd is not None:
            lines.append(f"(cd) {cd.source}")
    argv = [
        domain.os.bootloader or TOOL_PATHS["grub-bhyve"],
        "--root",
        root,
        "--device-map",
        device_map_path.format(name=domain.name),
        "--memory",
        str(domain.memory_mib),
    ]
    if caps.grub_consdev and domain.serials and domain.serials[0].master:
        argv += ["--cons-dev", domain.serials[0].master]
    argv.append(domain.name)
    return LoaderCommand(argv=tuple(argv), device_map="\n".join(lines) + "\n")


def build_loader(
    domain: Domain,
    caps: Capabilities = DEFAULT,
    *,
    device_map_path: str = DEFAULT_DEVICE_MAP,
    loader_console: bool = False,
) -> LoaderCommand | None:
    """The loader to run before bhyve, or ``None`` when bhyve boots a bootrom itself.

    Args:
        device_map_path: where grub-bhyve's device.map will be written; ``{name}`` is
            replaced by the guest name.
        loader_console: give the default bhyveload the guest's com1 (``-c`` and the nmdm
            A side) so its boot menu shows on the guest console, as vm-bhyve does.
            libvirt leaves bhyveload on its own stdio (the conformance data has no
            ``-c``), where a daemon-run loader's menu is seen by nobody.

    Raises:
        InvalidValueError: no disk to boot, or a custom loader without arguments.
    """
    if domain.uses_bootrom:
        return None
    bootloader = domain.os.bootloader
    args = domain.os.bootloader_args
    if bootloader is None:
        if args is not None:
            return LoaderCommand(argv=(TOOL_PATHS["bhyveload"], *args.split(" ")))
        disk = boot_disk(domain)
        com1 = [m for com, m, _ in domain.console_paths() if com == 1] if loader_console else []
        console = ("-c", com1[0]) if com1 else ()
        return LoaderCommand(
            argv=(
                TOOL_PATHS["bhyveload"],
                "-m",
                str(domain.memory_mib),
                *console,
                "-d",
                disk.source or "",
                domain.name,
            )
        )
    if "grub-bhyve" in bootloader and args is None:
        return _grub(domain, caps, device_map_path)
    if args is None:
        raise InvalidValueError(
            f"bootloader_args: a custom loader ({bootloader}) needs its arguments",
            field="bootloader_args",
        )
    return LoaderCommand(argv=(bootloader, *args.split(" ")))

"""Installing and tearing down a simulated FreeBSD host under a directory."""

from __future__ import annotations

import contextlib
import os
import sys

from supervisor import host as host_mod
from supervisor.host import Host
from supervisor.vmm.sim import dmesg, hardware, nmdm, procs, qemu
from supervisor.vmm.sim.guestimage import GuestImage
from supervisor.vmm.sim.hardware import DEFAULT_KLDS, INTEL, Hardware, SysctlValue
from supervisor.vmm.sim.kernel import KERNEL_DIR, Kernel
from supervisor.vmm.sim.qemu import EngineChoice

#: The simulated tools: host tool name → module whose ``main(root, argv)`` runs it.
TOOLS: dict[str, str] = {
    "bhyve": "supervisor.vmm.sim.bhyve",
    "bhyvectl": "supervisor.vmm.sim.bhyvectl",
    "bhyveload": "supervisor.vmm.sim.bhyveload",
    "grub-bhyve": "supervisor.vmm.sim.grub",
    "kldstat": "supervisor.vmm.sim.kldstat",
    "sysctl": "supervisor.vmm.sim.sysctl",
    "ps": "supervisor.vmm.sim.ps",
    "zfs": "supervisor.vmm.sim.zfs",
    "pciconf": "supervisor.vmm.sim.pciconf",
    "devctl": "supervisor.vmm.sim.devctl",
    "ifconfig": "supervisor.vmm.sim.ifconfig",
    "pfctl": "supervisor.vmm.sim.pfctl",
    "ipfw": "supervisor.vmm.sim.ipfw",
    "dnsmasq": "supervisor.vmm.sim.dnsmasq",
}

#: Directories of a FreeBSD host that the supervisor and the tools expect.
LAYOUT: tuple[str, ...] = (
    "/dev",
    "/dev/vmm",
    "/dev/vmm.io",
    "/boot",
    "/boot/kernel",
    "/etc",
    "/sbin",
    "/bin",
    "/usr/sbin",
    "/usr/local/sbin",
    "/usr/local/etc/bhyvesupd/domains",
    "/usr/local/etc/bhyvesupd/networks",
    host_mod.FIRMWARE_DIR,
    "/usr/share/bhyve/kbdlayout",
    "/var/run",
    host_mod.RUN_DIR,
    "/var/run/bhyvesim",
    host_mod.LOG_DIR,
    "/var/log",
)

#: edk2-bhyve's files and their sizes: the combined image, its code part, and the
#: variable-store template a guest gets a copy of.
FIRMWARE: dict[str, int] = {
    "BHYVE_UEFI.fd": 2 * 1024 * 1024,
    "BHYVE_UEFI_CODE.fd": 2 * 1024 * 1024 - 128 * 1024,
    "BHYVE_UEFI_VARS.fd": 128 * 1024,
}

#: The FreeBSD trees a simulated host keeps under its root. ``/sbin`` and ``/bin`` hold
#: host tools (kldstat, sysctl, ifconfig, ps): left out, ``Host.tool("sysctl")`` would
#: name this machine's own ``/sbin/sysctl``.
ROOTED: tuple[str, ...] = (*host_mod.SYSTEM_TREES, "/sbin", "/bin")

_SCRIPT = """#!{python}
# The simulated {tool} of the host rooted at {root}.
import sys
sys.path.insert(0, {path!r})
from {module} import main
sys.exit(main({root!r}, sys.argv))
"""


def _package_parent() -> str:
    import supervisor

    return os.path.dirname(os.path.dirname(os.path.abspath(supervisor.__file__)))


def _write_if_changed(path: str, data: bytes, mode: int) -> None:
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                os.chmod(path, mode)
                return
    except FileNotFoundError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _inside(root: str, path: str) -> str:
    """*path*, after checking that it lies under *root*: install never writes elsewhere."""
    if os.path.commonpath([root, os.path.abspath(path)]) != root:
        raise RuntimeError(f"refusing to write {path!r} outside the simulated root {root!r}")
    return path


def _firmware_image(name: str, size: int) -> bytes:
    tag = f"BHYVESIM firmware {name}\n".encode()
    return tag + bytes(size - len(tag))


def install(
    root: str,
    *,
    freebsd: str = "15.0",
    cpu_vendor: str = INTEL,
    ncpu: int = 8,
    physmem: int = 32 * 1024**3,
    vmm_loaded: bool = True,
    virtualization: bool = True,
    ept: bool = True,
    unrestricted_guest: bool = True,
    klds: tuple[str, ...] | None = None,
    sysctl: dict[str, SysctlValue | None] | None = None,
    guest_engine: str = "scripted",
    guest_image: GuestImage | None = None,
    zpools: tuple[str, ...] = ("zroot",),
    real_zfs: str | None = None,
) -> Host:
    """Make *root* a simulated FreeBSD host and return its :class:`Host`.

    Creates the FreeBSD layout (``/dev/vmm``, ``/var/run/bhyvesupd``, the edk2
    firmware files...), installs the simulated tools as executables at their FreeBSD
    paths and records the hardware. Running it again updates the hardware and the
    tools and keeps everything else (existing VMs, running guests).

    Args:
        root: the directory; created if missing.
        freebsd: the release to behave as (``"15.0"``, ``"14.3"``).
        cpu_vendor: ``"GenuineIntel"`` or ``"AuthenticAMD"``.
        ncpu: host CPUs (and ``hw.vmm.maxcpu``).
        physmem: host RAM in bytes.
        vmm_loaded: whether vmm.ko is loaded; ``False`` removes it from *klds*.
        virtualization: whether the CPU has VT-x / AMD-V.
        ept: Intel EPT.
        unrestricted_guest: Intel unrestricted guest.
        klds: loaded klds besides the kernel (default: vmm, nmdm, if_bridge, bridgestp).
        sysctl: sysctl values to add or replace (``None`` removes an OID).
        guest_engine: what runs inside the simulated bhyve: ``"scripted"`` or
            ``"qemu"`` (a real Linux, see :mod:`supervisor.vmm.sim.qemu`).
        guest_image: the image the QEMU engine boots (:mod:`supervisor.vmm.sim.guestimage`).
        zpools: the pools of the simulated ``zfs`` (zvols live under them).
        real_zfs: a real ``zfs`` program (zfs-fuse's) to install as the host's
            ``zfs`` instead of the simulated one.

    Raises:
        ValueError: a hardware value is invalid (the message names it).
    """
    root = os.path.abspath(root)
    files = tuple(DEFAULT_KLDS if klds is None else klds)
    if not vmm_loaded:
        files = tuple(k for k in files if k != "vmm.ko")
    elif "vmm.ko" not in files:
        files = ("vmm.ko", *files)
    hw = Hardware(
        freebsd=freebsd,
        cpu_vendor=cpu_vendor,
        ncpu=ncpu,
        physmem=physmem,
        klds=files,
        virtualization=virtualization,
        ept=ept,
        unrestricted_guest=unrestricted_guest,
        sysctl=dict(sysctl or {}),
    )
    host = Host(root=root, rooted=ROOTED)
    for d in LAYOUT:
        os.makedirs(_inside(root, host.path(d)), exist_ok=True)
    os.makedirs(os.path.join(root, KERNEL_DIR), exist_ok=True)
    hardware.save(root, hw)
    qemu.save_engine(root, EngineChoice(guest_engine, guest_image))
    Kernel(root, hw)  # creates the kernel's directories
    vmmctl = host.path("/dev/vmmctl")
    if hw.vmm_loaded and hw.major >= 15:
        with open(vmmctl, "ab"):
            pass
        os.chmod(vmmctl, 0o600)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(vmmctl)
    for name, size in FIRMWARE.items():
        path = host.path(f"{host_mod.FIRMWARE_DIR}/{name}")
        if not os.path.exists(path):
            _write_if_changed(_inside(root, path), _firmware_image(name, size), 0o444)
    _write_if_changed(
        _inside(root, host.path("/var/run/dmesg.boot")), dmesg.dmesg_boot(hw).encode(), 0o644
    )
    userboot = host.path("/boot/userboot.so")
    if not os.path.exists(userboot):
        _write_if_changed(_inside(root, userboot), b"\x7fELF userboot (simulated)\n", 0o444)
    parent = _package_parent()
    for tool, module in TOOLS.items():
        script = _SCRIPT.format(
            python=sys.executable, tool=tool, root=root, path=parent, module=module
        )
        if tool == "zfs" and real_zfs is not None:
            script = f'#!/bin/sh\n# The host\'s real zfs.\nexec {real_zfs} "$@"\n'
        _write_if_changed(_inside(root, host.tool(tool)), script.encode(), 0o755)
    from supervisor.vmm.sim import zfs

    for pool in zpools:
        zfs.create_pool(root, pool)
    return host


def teardown(root: str) -> list[int]:
    """Kill every simulated process of the host at *root* (bhyve, loaders, relays),
    for good: a bhyve still starting up when this runs dies as soon as it registers.

    The directory itself is left alone. Returns the pids that were killed.
    """
    root = os.path.abspath(root)
    killed = procs.end(root)
    nmdm.stop_relay(root)
    return killed

"""The QEMU guest engine: a bhyve command line mapped onto ``qemu-system-x86_64`` (pure).

A simulated host runs either the scripted guest (the default) or a real Linux under
QEMU software emulation (TCG), chosen per host: ``bhyvesupd --sim DIR --guest-engine
qemu`` records the choice and the guest image in ``ROOT/.simhost/engine.json``. The
simulated ``bhyve`` does all of bhyve's start-up against the simulated kernel as
usual, then, in QEMU mode, hands the VM to :mod:`supervisor.vmm.sim.qemurun`, which
runs the command :func:`qemu_argv` builds here from the parsed bhyve argv.

The mapping, device by device:

=====================  ===============================================================
bhyve                  QEMU
=====================  ===============================================================
``-m``, ``-c``         ``-m``, ``-smp`` (sockets/cores/threads as given)
guest RAM              ``memory-backend-file`` at the host path of ``/dev/vmm/NAME``,
                       ``share=on``, q35 with ``max-ram-below-4g=3G``: below 3 GiB the
                       file offset is the guest-physical address, as the simulated
                       kernel lays the file out, so the supervisor's ``pread`` reads
                       real guest memory. Guests of 3 GiB or more put their high RAM
                       at file offset 3 GiB, not 4 GiB: peek only below 3 GiB there.
``-l com1,PATH``       an ``isa-serial`` on the tty at PATH (the nmdm A side)
``virtio-blk``         ``virtio-blk-pci`` on a raw ``-drive`` (``ro`` → read-only), or
                       on an NBD ``-blockdev`` that the simulated bhyve serves from its
                       ``blk-S:F-n`` threads (:mod:`supervisor.vmm.sim.nbd`), so the
                       host counts the disk's I/O on them (every disk type the same)
``ahci`` hd/cd ports   an ``ahci`` controller with ``ide-hd`` / ``ide-cd`` per port
``nvme``               ``nvme`` (serial from ``ser=``, else bhyve's ``NVME-S-F``)
``virtio-net,tapN``    ``virtio-net-pci`` on tap ``tapN`` when this host has it; else
                       the NIC has no link (noted)
``e1000``              ``e1000``, the same way
``virtio-console``     ``virtio-serial-pci``; each named port a ``virtserialport`` on a
                       listening unix socket at the port's path
``virtio-rnd``         ``virtio-rng-pci``
``-u``                 ``-rtc base=utc`` (else ``localtime``)
exit status 3          ``-d cpu_reset -D LOG``: QEMU reports a triple fault as a guest
                       reset, but its CPU-reset log says "Triple fault" first
bootrom / loader       not used: the guest image's kernel boots directly (noted)
=====================  ===============================================================

PCI slot numbers are not kept (q35 has its own fixed devices at 0:0 and 0:31); the
devices are added in bhyve's slot order. Anything else (framebuffer, xHCI,
passthrough, 9p...) is left out and noted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs

from supervisor._record import Record
from supervisor.vmm.sim.guestimage import GuestImage

if TYPE_CHECKING:
    # Only in annotations: the daemon loads this module to record the engine choice,
    # and the argv parser behind these names is a sizeable import it does not need.
    from supervisor.vmm.bhyveopts import BhyveCommand, PciDevice
from supervisor.vmm.sim.hardware import SIM_DIR

QEMU = "qemu-system-x86_64"
ENGINE_FILE = "engine.json"
ENGINES = ("scripted", "qemu")
MiB = 1024 * 1024
#: The QMP monitor: the runner passes its end of a socket pair as this descriptor.
QMP_CHARDEV = "qmp"


@attrs.frozen(repr=False)
class EngineChoice(Record):
    """Which guest engine a simulated host runs, and with which image."""

    engine: str = "scripted"
    image: GuestImage | None = None


def reset_log_path(root: str, vmname: str) -> str:
    """Where QEMU's CPU-reset log of the VM *vmname* on the host at *root* goes."""
    return os.path.join(root, SIM_DIR, f"{vmname}.qemu-reset.log")


def engine_path(root: str) -> str:
    """Where the engine choice of the simulated host at *root* is kept."""
    return os.path.join(root, SIM_DIR, ENGINE_FILE)


def save_engine(root: str, choice: EngineChoice) -> None:
    """Record *choice* for the host at *root* (atomically).

    Raises:
        ValueError: an unknown engine, or the QEMU engine without an image.
    """
    if choice.engine not in ENGINES:
        raise ValueError(f"guest_engine: must be one of {list(ENGINES)}, got {choice.engine!r}")
    if choice.engine == "qemu" and choice.image is None:
        raise ValueError("guest_engine: 'qemu' needs a guest image")
    path = engine_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {
        "engine": choice.engine,
        "image": None if choice.image is None else attrs.asdict(choice.image),
    }
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_engine(root: str) -> EngineChoice:
    """The engine choice of the host at *root* (scripted when none was recorded)."""
    try:
        with open(engine_path(root), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return EngineChoice()
    image = data.get("image")
    return EngineChoice(
        engine=data.get("engine", "scripted"),
        image=None if image is None else GuestImage(**image),
    )


@attrs.frozen(repr=False)
class QemuPlan(Record):
    """What to run, and what of the bhyve argv it could not carry over."""

    argv: tuple[str, ...]
    notes: tuple[str, ...] = ()


def _esc(value: str) -> str:
    """A value inside a QEMU option list: commas are doubled."""
    return value.replace(",", ",,")


def qemu_argv(
    cmd: BhyveCommand,
    *,
    image: GuestImage,
    resolve: Callable[[str], str],
    memory_path: str,
    tap_exists: Callable[[str], bool],
    qmp_fd: int,
    reset_log: str,
    rtc_base: str | None = None,
    nbd_fds: Mapping[str, int] | None = None,
) -> QemuPlan:
    """The ``qemu-system-x86_64`` command for the bhyve command *cmd*.

    Args:
        cmd: the parsed bhyve command line.
        image: the guest image (kernel, initramfs, kernel command line).
        resolve: maps a FreeBSD path of the argv to the local path.
        memory_path: the local path of ``/dev/vmm/NAME``.
        tap_exists: whether this machine has a network interface of that name.
        qmp_fd: the descriptor QEMU inherits as its QMP connection.
        reset_log: the local file QEMU's CPU-reset log goes to (rewritten at each
            start); "Triple fault" in it tells a triple fault from a guest reset.
        rtc_base: the RTC's start (``YYYY-MM-DDTHH:MM:SS``); else UTC or local time
            as ``-u`` says.
        nbd_fds: disks (by their path in *cmd*) that QEMU reaches over NBD on the
            inherited descriptor given, instead of opening the file itself.
    """
    notes: list[str] = []
    mem = cmd.memsize
    argv: list[str] = [
        QEMU,
        "-name",
        f"guest={_esc(cmd.vmname)}",
        "-machine",
        "q35,accel=tcg,max-ram-below-4g=3G,memory-backend=ram0",
        "-object",
        f"memory-backend-file,id=ram0,size={mem},mem-path={_esc(memory_path)},share=on",
        "-m",
        f"{max(1, mem // MiB)}M",
        "-smp",
        f"{cmd.cpus},sockets={cmd.sockets},cores={cmd.cores},threads={cmd.threads}",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-action",
        "reboot=shutdown,shutdown=pause",
        "-chardev",
        f"socket,id={QMP_CHARDEV},fd={qmp_fd},server=off",
        "-mon",
        f"chardev={QMP_CHARDEV},mode=control",
        "-d",
        "cpu_reset",
        "-D",
        reset_log,
        "-rtc",
        f"base={rtc_base or ('localtime' if cmd.rtc_localtime else 'utc')}",
        "-kernel",
        image.kernel,
        "-initrd",
        image.initrd,
        "-append",
        image.cmdline,
    ]
    if cmd.bootrom is not None:
        notes.append(f"bootrom {cmd.bootrom}: not used, the guest image's kernel boots directly")
    for number, backend in sorted(cmd.com_ports().items()):
        argv += _uart(number, backend, resolve, notes)
    nbd = dict(nbd_fds or {})
    for dev in cmd.pci_devices():
        argv += _device(dev, resolve, tap_exists, notes, nbd)
    return QemuPlan(tuple(argv), tuple(notes))


def _uart(number: int, backend: str, resolve: Callable[[str], str], notes: list[str]) -> list[str]:
    chardev = f"com{number}"
    if backend == "stdio":
        spec = f"stdio,id={chardev}"
    elif backend.startswith("tcp"):
        notes.append(f"com{number} on {backend}: not carried over")
        return []
    else:
        spec = f"serial,id={chardev},path={_esc(resolve(backend))}"
    return ["-chardev", spec, "-device", f"isa-serial,chardev={chardev},index={number - 1}"]


def _drive(
    ident: str, path: str, resolve: Callable[[str], str], readonly: bool, nbd: Mapping[str, int]
) -> list[str]:
    if path in nbd:
        spec = f"driver=nbd,node-name={ident},server.type=fd,server.str={nbd[path]}"
        return ["-blockdev", spec + (",read-only=on" if readonly else "")]
    spec = f"file={_esc(resolve(path))},format=raw,if=none,id={ident},cache=writeback"
    if readonly:
        spec += ",readonly=on"
    return ["-drive", spec]


def _device(
    dev: PciDevice,
    resolve: Callable[[str], str],
    tap_exists: Callable[[str], bool],
    notes: list[str],
    nbd: Mapping[str, int],
) -> list[str]:
    opts = dev.options
    tag = f"s{dev.slot}f{dev.func}"
    emu = dev.emulation
    if emu in ("hostbridge", "amd_hostbridge", "lpc"):
        return []  # q35 has its own host bridge and ICH9 LPC
    if emu == "virtio-blk":
        if "path" not in opts:
            notes.append(f"{dev.address}: virtio-blk without a path: left out")
            return []
        drive = f"d{tag}"
        return [
            *_drive(drive, opts["path"], resolve, "ro" in opts, nbd),
            "-device",
            f"virtio-blk-pci,drive={drive},id={tag}",
        ]
    if emu == "nvme":
        if "path" not in opts or "ram" in opts:
            notes.append(f"{dev.address}: nvme without a file backend: left out")
            return []
        drive = f"d{tag}"
        serial = opts.get("ser", f"NVME-{dev.slot}-{dev.func}")
        return [
            *_drive(drive, opts["path"], resolve, False, nbd),
            "-device",
            f"nvme,drive={drive},serial={_esc(serial)},id={tag}",
        ]
    if emu == "ahci":
        out = ["-device", f"ahci,id={tag}"]
        ports = sorted(
            {int(k.split(".")[1]) for k in opts if k.startswith("port.") and k.endswith(".path")}
        )
        for port in ports:
            drive = f"d{tag}p{port}"
            cd = opts.get(f"port.{port}.type") == "cd"
            out += _drive(drive, opts[f"port.{port}.path"], resolve, cd or "ro" in opts, nbd)
            out += ["-device", f"{'ide-cd' if cd else 'ide-hd'},drive={drive},bus={tag}.{port}"]
        return out
    if emu in ("virtio-net", "e1000"):
        model = "virtio-net-pci" if emu == "virtio-net" else "e1000"
        backend = opts.get("backend", "")
        nic = f"{model},id={tag}"
        if "mac" in opts:
            nic += f",mac={opts['mac']}"
        if backend and tap_exists(backend):
            return [
                "-netdev",
                f"tap,id=n{tag},ifname={_esc(backend)},script=no,downscript=no",
                "-device",
                f"{nic},netdev=n{tag}",
            ]
        notes.append(
            f"{dev.address}: {emu} backend {backend or '(none)'}: no such interface on this "
            "host, the NIC has no link"
        )
        return ["-device", nic]
    if emu == "virtio-console":
        out = ["-device", f"virtio-serial-pci,id={tag}"]
        ports = sorted(
            {int(k.split(".")[1]) for k in opts if k.startswith("port.") and k.endswith(".path")}
        )
        for port in ports:
            chardev = f"c{tag}p{port}"
            path = resolve(opts[f"port.{port}.path"])
            name = opts.get(f"port.{port}.name", f"port{port}")
            out += [
                "-chardev",
                f"socket,id={chardev},path={_esc(path)},server=on,wait=off",
                "-device",
                f"virtserialport,bus={tag}.0,chardev={chardev},name={_esc(name)}",
            ]
        return out
    if emu == "virtio-rnd":
        return ["-device", f"virtio-rng-pci,id={tag}"]
    notes.append(f"{dev.address}: {emu}: not emulated by the QEMU engine, left out")
    return []
